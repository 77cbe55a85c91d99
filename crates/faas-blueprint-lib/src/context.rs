//! [`FaaSContext`]: the platform the jobs run on.

use std::future::Future;
use std::pin::Pin;
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
    ledger: Option<Arc<dyn ChainLedger>>,
}

/// What the jobs ask of the chain before running a call, supplied by the binary
/// that holds a chain client (`faas-bin`); without one every call runs.
///
/// Why: the SDK's `TangleProducer` hands out again the calls of the blocks it
/// (re)starts from, and a second result for an answered call makes the contract
/// revert and `TangleConsumer` stop the runner. The jobs skip such calls, and report
/// the block of each call they get so that a restart can resume from there.
pub trait ChainLedger: Send + Sync + 'static {
    /// Whether call `call_id` of `service_id` needs no result any more (the
    /// contract has completed it).
    fn is_answered(
        &self,
        service_id: u64,
        call_id: u64,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;

    /// A call submitted in block `block` reached the jobs.
    fn seen_block(&self, block: u64);
}

impl FaaSContext {
    /// The jobs' context on `platform`.
    pub fn new(platform: Platform, env: BlueprintEnvironment) -> Self {
        FaaSContext {
            platform: Arc::new(platform),
            env,
            ledger: None,
        }
    }

    /// The same context, asking `ledger` about each call before running it.
    pub fn with_ledger(mut self, ledger: Arc<dyn ChainLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// The chain ledger, when one was given.
    pub fn ledger(&self) -> Option<&Arc<dyn ChainLedger>> {
        self.ledger.as_ref()
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
