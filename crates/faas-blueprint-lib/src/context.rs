//! [`FaaSContext`]: the platform the jobs run on.

use std::sync::Arc;

use blueprint_runner::config::BlueprintEnvironment;
use faas_orchestrator::Orchestrator;
use faas_platform::Platform;

/// What every job handler gets: the node (assembled by `faas-platform`, as
/// `faas serve` assembles it) and the Blueprint environment it runs in.
/// Cheap to clone.
#[derive(Clone)]
pub struct FaaSContext {
    platform: Arc<Platform>,
    env: BlueprintEnvironment,
}

impl FaaSContext {
    /// The jobs' context on `platform`.
    pub fn new(platform: Platform, env: BlueprintEnvironment) -> Self {
        FaaSContext {
            platform: Arc::new(platform),
            env,
        }
    }

    /// The orchestrator: functions, invocations, job bindings.
    pub fn orchestrator(&self) -> &Arc<Orchestrator> {
        &self.platform.orchestrator
    }

    /// The node and its configuration.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The Blueprint environment the jobs run in.
    pub fn env(&self) -> &BlueprintEnvironment {
        &self.env
    }
}
