//! Building a node from its [`PlatformConfig`].

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use faas_attest::{CollateralSource, PccsConfig, Policy};
use faas_common::{Language, SandboxKind};
use faas_executor::docker::{DockerConfig, DockerSandbox};
use faas_executor::microvm::{
    FirecrackerConfig, GuestImages, MicrovmConfig, MicrovmSandbox, QemuConfig, Vmm,
};
use faas_executor::native::build::BuildSandbox;
use faas_executor::native::{NativeConfig, NativeSandbox, ParentLimits, Prestart};
use faas_executor::{ImageRef, Sandbox};
use faas_images::{ImageKind, ImageStore, InUse, RuntimeImage};
use faas_netpolicy::{Egress, EgressConfig};
use faas_orchestrator::attest::{AttestationConfig, NodeAttestation};
use faas_orchestrator::{Orchestrator, Sandboxes};

use crate::{DataLayout, PlatformConfig, PlatformError};

/// Languages with a package installer, so a builder image.
const BUILDERS: [Language; 2] = [Language::Python, Language::Node];

/// A running node: the orchestrator over its sandboxes, and what it holds.
pub struct Platform {
    /// Functions, invocations, sandboxes: what the API and the jobs drive.
    pub orchestrator: Arc<Orchestrator>,
    /// What it was built from.
    pub config: PlatformConfig,
    /// The admin key, when this start made it (the first start of an empty
    /// data directory): the binary shows it once. It is also in
    /// `<data>/admin.key`, mode 0600.
    pub new_admin_key: Option<String>,
    /// The node's egress enforcement, if it has one (removed at shutdown).
    egress: Option<Arc<Egress>>,
    /// Images and disks in use, held so that a prune spares them.
    _in_use: Vec<InUse>,
}

/// Progress lines of long steps (image builds), for the binary to show.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Build the node: images (runtime, builder and, for microVMs, the guest),
/// sandboxes, the build sandbox, attestation, and the orchestrator.
pub async fn build(
    config: PlatformConfig,
    progress: Progress<'_>,
) -> Result<Platform, PlatformError> {
    let layout = DataLayout::new(config.data_dir());
    // Sandboxes in a user namespace mount their code from under the data
    // directory as an unprivileged host uid: it must be able to pass through
    // (and no more: nothing under it is listed or read by others).
    std::fs::set_permissions(config.data_dir(), std::fs::Permissions::from_mode(0o711)).map_err(
        |e| PlatformError::Config(format!("chmod {}: {e}", config.data_dir().display())),
    )?;
    let store = ImageStore::new(&config.images_dir);
    let mut in_use = Vec::new();
    let mut runtimes = Vec::new();
    for language in Language::IMAGES {
        let image = ensure(&store, ImageKind::Runtime(language), &config, progress).await?;
        in_use.push(image.hold().map_err(|source| PlatformError::Image {
            kind: image.kind,
            source,
        })?);
        runtimes.push(image);
    }
    let images: HashMap<Language, ImageRef> = runtimes.iter().map(image_ref).collect();

    let egress = egress(&config, &layout).await;
    let mut built: Vec<Arc<dyn Sandbox>> = Vec::new();
    for (i, &kind) in config.sandboxes.iter().enumerate() {
        let sandbox: Arc<dyn Sandbox> = match kind {
            SandboxKind::Native => {
                let native = NativeSandbox::new(
                    native_config(&config, &layout, egress.clone()),
                    images.clone(),
                )
                .await
                .map_err(|source| PlatformError::Sandbox { kind, source })?;
                Arc::new(native)
            }
            SandboxKind::Docker => {
                let docker = DockerSandbox::new(
                    docker_config(&config, &layout, egress.clone()),
                    images.clone(),
                )
                .await
                .map_err(|source| PlatformError::Sandbox { kind, source })?;
                if let Err(source) = docker.ping().await {
                    // A default sandbox that cannot run anything is fatal; an
                    // optional one may get its daemon later.
                    if i == 0 {
                        return Err(PlatformError::Sandbox { kind, source });
                    }
                    tracing::warn!(
                        "docker sandbox enabled but its daemon does not answer yet: {source}"
                    );
                }
                Arc::new(docker)
            }
            SandboxKind::Microvm => {
                let (sandbox, disks) =
                    microvm(&config, &layout, &store, &runtimes, progress).await?;
                in_use.extend(disks);
                sandbox
            }
        };
        built.push(sandbox);
    }
    let mut built = built.into_iter();
    let mut sandboxes = Sandboxes::new(
        built
            .next()
            .ok_or_else(|| PlatformError::Config("at least one sandbox kind is needed".into()))?,
    );
    for other in built {
        sandboxes = sandboxes.allow(other);
    }
    match build_sandbox(&config, &layout, &store, progress).await {
        Ok((build, held)) => {
            in_use.extend(held);
            sandboxes = sandboxes.with_build(Arc::new(build));
        }
        // Functions without dependencies still run; those with are refused
        // with this reason.
        Err(e) => tracing::warn!("dependency installs are off on this node: {e}"),
    }

    let mut orchestrator = Orchestrator::new(config.orchestrator.clone(), sandboxes)
        .await
        .map_err(|source| PlatformError::State {
            dir: config.data_dir().display().to_string(),
            source,
        })?;
    if let Some(node) = attestation(&config).await? {
        orchestrator.set_attestation(node);
    }
    let new_admin_key =
        orchestrator
            .bootstrap_admin_key()
            .await
            .map_err(|source| PlatformError::State {
                dir: config.data_dir().display().to_string(),
                source,
            })?;
    if !orchestrator.auth_enabled() {
        tracing::warn!("{}", faas_gateway::auth::NO_AUTH_WARNING);
    }
    let orchestrator = Arc::new(orchestrator);
    orchestrator.keep_provisioned();
    orchestrator.start_async_worker();
    orchestrator.start_scheduler();
    Ok(Platform {
        orchestrator,
        config,
        new_admin_key,
        egress,
        _in_use: in_use,
    })
}

impl Platform {
    /// Stop every instance, then remove what the node holds on the host for
    /// its functions' networks.
    pub async fn shutdown(&self) {
        self.orchestrator.shutdown().await;
        if let Some(egress) = &self.egress {
            if let Err(e) = egress.close().await {
                tracing::warn!("removing the egress rules: {e}");
            }
        }
    }

    /// The HTTP API over this node.
    pub fn router(&self) -> faas_gateway::Router {
        faas_gateway::router(self.orchestrator.clone(), self.config.api.gateway)
    }

    /// Serve the API on `listener` (HTTPS when configured) until `shutdown`.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), PlatformError> {
        let tls = self.tls()?;
        faas_gateway::serve::serve(listener, self.router(), tls, shutdown)
            .await
            .map_err(|e| PlatformError::Config(format!("serving the API: {e}")))
    }

    /// The TLS acceptor, when HTTPS is configured.
    pub fn tls(&self) -> Result<Option<faas_gateway::serve::TlsAcceptor>, PlatformError> {
        self.config
            .api
            .tls
            .as_ref()
            .map(|(cert, key)| {
                faas_gateway::serve::tls_acceptor(cert, key)
                    .map_err(|e| PlatformError::Config(format!("HTTPS: {e}")))
            })
            .transpose()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.config.api.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// What a binary prints, once, when a start made the admin key: the key
/// itself only to a terminal, so that it never lands in a log file.
pub fn admin_key_notice(key: &str, config: &PlatformConfig, to_terminal: bool) -> String {
    let path = config.data_dir().join("admin.key");
    let shown = if to_terminal {
        format!(
            "faas: created the admin key (shown only now; also in {}, mode 0600):\n  {key}\n",
            path.display()
        )
    } else {
        format!(
            "faas: created the admin key in {} (mode 0600)\n",
            path.display()
        )
    };
    format!(
        "{shown}faas: send it as `Authorization: Bearer <key>` (the CLI reads that file when \
         root talks to a local server); make tenant keys with `faas admin keys create`"
    )
}

async fn ensure(
    store: &ImageStore,
    kind: ImageKind,
    config: &PlatformConfig,
    progress: Progress<'_>,
) -> Result<RuntimeImage, PlatformError> {
    store
        .ensure_kind(kind, &config.agent_path, false, progress)
        .await
        .map_err(|source| PlatformError::Image { kind, source })
}

fn image_ref(image: &RuntimeImage) -> (Language, ImageRef) {
    (
        image.language,
        ImageRef {
            rootfs: image.rootfs.clone(),
            hash: image.hash.clone(),
        },
    )
}

fn native_config(
    config: &PlatformConfig,
    layout: &DataLayout,
    egress: Option<Arc<Egress>>,
) -> NativeConfig {
    let n = &config.native;
    let defaults = NativeConfig::default();
    let pids_limit = n.pids_limit.unwrap_or(defaults.pids_limit);
    let o = &config.orchestrator;
    NativeConfig {
        runc: n.runc.clone(),
        state_dir: layout.runc_state(),
        instances_dir: layout.instances(),
        sockets_dir: layout.sockets("native"),
        views_dir: layout.views(),
        views_mounts: layout.view_mounts("native"),
        cgroup_parent: n.cgroup_parent.clone(),
        parent_limits: Some(ParentLimits {
            memory_bytes: o.memory_budget_mb * 1024 * 1024,
            pids: (o.max_instances as u64) * (pids_limit.max(1) as u64) + 64,
            // Under contention the host's own work gets two thirds of the CPU.
            cpu_shares: 512,
        }),
        host_ids: config.host_ids.clone(),
        user_namespace: n.user_namespace.unwrap_or(defaults.user_namespace),
        pids_limit,
        cpu_quota_us: n.cpu_quota_us.unwrap_or(defaults.cpu_quota_us),
        tmp_mb: n.tmp_mb.unwrap_or(defaults.tmp_mb),
        ephemeral_dir: layout.ephemeral("native"),
        egress,
        prestart: Prestart {
            counts: [Language::Python, Language::Node, Language::Shell]
                .into_iter()
                .filter(|_| n.prestart > 0)
                .map(|l| (l, n.prestart))
                .collect(),
            memory_mb: o.default_memory_mb,
            ephemeral_mb: faas_common::validate::DEFAULT_EPHEMERAL_MB,
            slots_dir: layout.spare_slots("native"),
        },
        ..defaults
    }
}

fn docker_config(
    config: &PlatformConfig,
    layout: &DataLayout,
    egress: Option<Arc<Egress>>,
) -> DockerConfig {
    let d = &config.docker;
    let defaults = DockerConfig::default();
    DockerConfig {
        host: d.host.clone(),
        instances_dir: layout.sockets("docker"),
        views_dir: layout.views(),
        views_mounts: layout.view_mounts("docker"),
        owner: layout.owner_label(),
        host_ids: config.host_ids.clone(),
        pids_limit: d.pids_limit.unwrap_or(defaults.pids_limit),
        cpus: d.cpus.unwrap_or(defaults.cpus),
        tmp_mb: d.tmp_mb.unwrap_or(defaults.tmp_mb),
        ephemeral_dir: layout.ephemeral("docker"),
        egress,
        ..defaults
    }
}

/// The node's egress enforcement, when a sandbox kind that can use it is on;
/// without it (no nftables, not root) functions with an allow-list are
/// refused, saying why.
async fn egress(config: &PlatformConfig, layout: &DataLayout) -> Option<Arc<Egress>> {
    if !config
        .sandboxes
        .iter()
        .any(|k| matches!(k, SandboxKind::Native | SandboxKind::Docker))
    {
        return None;
    }
    let mut settings = EgressConfig::new(layout.owner_label());
    settings.subnet = config.egress_subnet;
    match Egress::open(settings).await {
        Ok(e) => Some(Arc::new(e)),
        Err(e) => {
            tracing::warn!("egress policies are off on this node: {e}");
            None
        }
    }
}

/// The microVM sandbox: Firecracker when its binary is given, else QEMU
/// `microvm` (KVM where it really works, TCG otherwise). Kernel and root disks
/// are the given ones, else built.
async fn microvm(
    config: &PlatformConfig,
    layout: &DataLayout,
    store: &ImageStore,
    runtimes: &[RuntimeImage],
    progress: Progress<'_>,
) -> Result<(Arc<dyn Sandbox>, Vec<InUse>), PlatformError> {
    let m = &config.microvm;
    let images = GuestImages::ensure(
        store,
        runtimes,
        m.kernel.clone(),
        m.rootfs.clone(),
        progress,
    )
    .await
    .map_err(PlatformError::Guest)?;
    let disks = images
        .disks
        .iter()
        .map(|(&language, disk)| {
            InUse::file(disk).map_err(|source| PlatformError::Image {
                kind: ImageKind::Runtime(language),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vmm = match &m.firecracker {
        Some(binary) => Vmm::Firecracker(FirecrackerConfig {
            binary: binary.clone(),
        }),
        None => Vmm::Qemu(QemuConfig {
            snapshots: m.snapshots,
            ..QemuConfig::default()
        }),
    };
    let microvm = MicrovmConfig {
        vmm,
        run_dir: layout.microvm_run(),
        disk_cache: layout.microvm_disks(),
        snapshot_dir: layout.microvm_snapshots(),
        ..MicrovmConfig::default()
    };
    let sandbox = MicrovmSandbox::new(microvm, images)
        .await
        .map_err(|source| PlatformError::Sandbox {
            kind: SandboxKind::Microvm,
            source,
        })?;
    Ok((Arc::new(sandbox), disks))
}

/// The build sandbox where dependency installers run, on the builder images.
async fn build_sandbox(
    config: &PlatformConfig,
    layout: &DataLayout,
    store: &ImageStore,
    progress: Progress<'_>,
) -> Result<(BuildSandbox, Vec<InUse>), PlatformError> {
    let mut images = HashMap::new();
    let mut held = Vec::new();
    for language in BUILDERS {
        let image = ensure(store, ImageKind::Builder(language), config, progress).await?;
        held.push(image.hold().map_err(|source| PlatformError::Image {
            kind: image.kind,
            source,
        })?);
        images.extend([image_ref(&image)]);
    }
    let native = NativeConfig {
        state_dir: layout.build_state(),
        instances_dir: layout.build_bundles(),
        cgroup_parent: format!("{}-build", config.native.cgroup_parent),
        parent_limits: None,
        ..native_config(config, layout, None)
    };
    let sandbox =
        BuildSandbox::new(native, images)
            .await
            .map_err(|source| PlatformError::Sandbox {
                kind: SandboxKind::Native,
                source,
            })?;
    Ok((sandbox, held))
}

/// Attest the node as configured; `None` when attestation is off or there is
/// no TEE (and simulation was not asked for).
async fn attestation(
    config: &PlatformConfig,
) -> Result<Option<Arc<NodeAttestation>>, PlatformError> {
    let a = &config.attestation;
    let simulate = match a.mode.as_str() {
        "off" => return Ok(None),
        "simulated" => true,
        _ => false,
    };
    let failed = |m: String| PlatformError::Attestation(m);
    let policy = match &a.policy {
        Some(p) => Policy::from_file(p).map_err(|e| failed(format!("policy: {e}")))?,
        None => Policy::default(),
    };
    let collateral = match (&a.collateral, &a.pccs_url) {
        (Some(path), _) => Some(CollateralSource::file(path)),
        (None, Some(url)) => Some(
            CollateralSource::pccs(PccsConfig::new(url))
                .map_err(|e| failed(format!("PCCS: {e}")))?,
        ),
        (None, None) => None,
    };
    let node = NodeAttestation::start(AttestationConfig {
        simulate,
        policy,
        collateral,
        refresh: a.refresh,
    })
    .await
    .map_err(|e| failed(format!("cannot attest this node: {e}")))?;
    if node.is_none() && a.mode == "auto" {
        tracing::info!(
            "attestation: no TEE found; functions that require attestation are refused here"
        );
    }
    Ok(node)
}
