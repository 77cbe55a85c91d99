//! [`FaaSContext`]: the platform the jobs run on.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use blueprint_runner::config::BlueprintEnvironment;
use faas_common::Language;
use faas_executor::docker::{DockerConfig, DockerSandbox};
use faas_executor::microvm::{
    FirecrackerConfig, GuestImages, MicrovmConfig, MicrovmSandbox, QemuConfig, Vmm,
};
use faas_executor::native::{NativeConfig, NativeSandbox};
use faas_executor::{ExecutorError, ImageRef, Sandbox};
use faas_images::microvm::MicrovmImageError;
use faas_images::{ImageError, ImageStore, InUse, RuntimeImage};
use faas_orchestrator::{Orchestrator, OrchestratorConfig, OrchestratorError, Sandboxes};

use crate::config::{ExecutorType, FaaSConfig};

/// Why the platform could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A runtime image could not be found or built.
    #[error("cannot build the {language} runtime image: {source}")]
    Image {
        /// Its language.
        language: Language,
        /// What failed.
        #[source]
        source: ImageError,
    },
    /// The sandbox could not be set up.
    #[error("cannot start the {kind} sandbox: {source}")]
    Sandbox {
        /// The sandbox kind.
        kind: ExecutorType,
        /// What failed.
        #[source]
        source: ExecutorError,
    },
    /// The microVM guest (kernel, initramfs, root disks) could not be built.
    #[error("cannot build the microVM guest: {0}")]
    Guest(#[source] MicrovmImageError),
    /// `FAAS_EXECUTOR_TYPE=firecracker` without `FAAS_FC_BINARY_PATH`.
    #[error("FAAS_EXECUTOR_TYPE=firecracker needs FAAS_FC_BINARY_PATH (or use microvm for QEMU)")]
    FirecrackerUnset,
    /// The platform state could not be opened.
    #[error("cannot open the platform state in {dir}: {source}")]
    State {
        /// The data directory.
        dir: String,
        /// What failed.
        #[source]
        source: OrchestratorError,
    },
}

/// What every job handler gets: the orchestrator, the node's configuration and
/// the Blueprint environment it runs in. Cheap to clone.
#[derive(Clone)]
pub struct FaaSContext {
    orchestrator: Arc<Orchestrator>,
    config: Arc<FaaSConfig>,
    env: BlueprintEnvironment,
    /// Images and disks this node runs on, held so that a prune spares them.
    _in_use: Arc<Vec<InUse>>,
}

impl FaaSContext {
    /// A context around an orchestrator built elsewhere.
    pub fn new(
        orchestrator: Arc<Orchestrator>,
        config: FaaSConfig,
        env: BlueprintEnvironment,
    ) -> Self {
        FaaSContext {
            orchestrator,
            config: Arc::new(config),
            env,
            _in_use: Arc::new(Vec::new()),
        }
    }

    /// Build the platform as `faas serve` does: runtime images (built on first
    /// use, progress lines to `progress`), the configured sandbox, and the
    /// orchestrator on `config.data_dir`.
    pub async fn start(
        config: FaaSConfig,
        env: BlueprintEnvironment,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Self, ContextError> {
        if config.executor == ExecutorType::Firecracker && config.firecracker.binary.is_none() {
            return Err(ContextError::FirecrackerUnset);
        }
        let store = ImageStore::new(&config.images_dir);
        let mut runtimes = Vec::new();
        let mut in_use = Vec::new();
        for language in Language::IMAGES {
            let image = store
                .ensure(language, &config.agent_path, false, progress)
                .await
                .map_err(|source| ContextError::Image { language, source })?;
            in_use.push(
                image
                    .hold()
                    .map_err(|source| ContextError::Image { language, source })?,
            );
            runtimes.push(image);
        }
        let (sandbox, disks) = build_sandbox(&config, &store, &runtimes, progress).await?;
        in_use.extend(disks);
        let orchestrator = Orchestrator::new(
            OrchestratorConfig {
                data_dir: config.data_dir.clone(),
                ..OrchestratorConfig::default()
            },
            Sandboxes::new(sandbox),
        )
        .await
        .map_err(|source| ContextError::State {
            dir: config.data_dir.display().to_string(),
            source,
        })?;
        Ok(FaaSContext {
            orchestrator: Arc::new(orchestrator),
            config: Arc::new(config),
            env,
            _in_use: Arc::new(in_use),
        })
    }

    /// The orchestrator: functions, invocations, job bindings.
    pub fn orchestrator(&self) -> &Arc<Orchestrator> {
        &self.orchestrator
    }

    /// The node's configuration.
    pub fn config(&self) -> &FaaSConfig {
        &self.config
    }

    /// The Blueprint environment the jobs run in.
    pub fn env(&self) -> &BlueprintEnvironment {
        &self.env
    }
}

async fn build_sandbox(
    config: &FaaSConfig,
    store: &ImageStore,
    runtimes: &[RuntimeImage],
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(Arc<dyn Sandbox>, Vec<InUse>), ContextError> {
    let kind = config.executor;
    let failed = |source| ContextError::Sandbox { kind, source };
    let data = &config.data_dir;
    let images: HashMap<Language, ImageRef> = runtimes
        .iter()
        .map(|rt| {
            let image = ImageRef {
                rootfs: rt.rootfs.clone(),
                hash: rt.hash.clone(),
            };
            (rt.language, image)
        })
        .collect();
    match kind {
        ExecutorType::Native => {
            let native = NativeConfig {
                runc: config.runc.clone(),
                state_dir: data.join("run/runc"),
                instances_dir: data.join("run/instances"),
                cgroup_parent: config.cgroup_parent.clone(),
                ..NativeConfig::default()
            };
            let sandbox = NativeSandbox::new(native, images).await.map_err(failed)?;
            Ok((Arc::new(sandbox), Vec::new()))
        }
        ExecutorType::Docker => {
            let docker = DockerConfig {
                host: config.docker_host.clone(),
                instances_dir: data.join("run/docker"),
                owner: owner_label(data),
                ..DockerConfig::default()
            };
            let sandbox = DockerSandbox::new(docker, images).await.map_err(failed)?;
            sandbox.ping().await.map_err(failed)?;
            Ok((Arc::new(sandbox), Vec::new()))
        }
        ExecutorType::Microvm | ExecutorType::Firecracker => {
            let fc = &config.firecracker;
            let guest = GuestImages::ensure(
                store,
                runtimes,
                fc.kernel.clone(),
                fc.rootfs.clone(),
                progress,
            )
            .await
            .map_err(ContextError::Guest)?;
            let disks = guest
                .disks
                .iter()
                .map(|(&language, disk)| {
                    InUse::file(disk).map_err(|source| ContextError::Image { language, source })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let vmm = match &fc.binary {
                Some(binary) => Vmm::Firecracker(FirecrackerConfig {
                    binary: binary.clone(),
                }),
                None => Vmm::Qemu(QemuConfig::default()),
            };
            let microvm = MicrovmConfig {
                vmm,
                run_dir: data.join("run/microvm"),
                disk_cache: data.join("microvm-disks"),
                snapshot_dir: data.join("run/microvm-snapshots"),
                ..MicrovmConfig::default()
            };
            let sandbox = MicrovmSandbox::new(microvm, guest).await.map_err(failed)?;
            Ok((Arc::new(sandbox), disks))
        }
    }
}

/// The `faas.owner` label `faas serve` gives containers of this data directory,
/// so several nodes on one daemon never remove each other's containers.
fn owner_label(data_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(data_dir.to_string_lossy().as_bytes())[..8])
}
