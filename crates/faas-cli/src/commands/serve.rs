//! `faas serve`: gateway + orchestrator + sandboxes in one process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use faas_attest::{CollateralSource, PccsConfig, Policy};
use faas_common::Language;
use faas_executor::docker::{DockerConfig, DockerSandbox};
use faas_executor::microvm::{
    FirecrackerConfig, GuestImages, MicrovmConfig, MicrovmSandbox, QemuConfig, Vmm,
};
use faas_executor::native::{NativeConfig, NativeSandbox};
use faas_executor::{ImageRef, Sandbox};
use faas_images::{ImageStore, InUse, RuntimeImage};
use faas_orchestrator::attest::{AttestationConfig, NodeAttestation};
use faas_orchestrator::{Orchestrator, OrchestratorConfig, Sandboxes};

use crate::config::FileConfig;

/// `faas serve` flags; each may also come from the environment or the config file.
#[derive(Args)]
pub struct ServeArgs {
    /// Config file (TOML); flags and FAAS_* variables override it.
    #[arg(long, env = "FAAS_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "FAAS_ADDR")]
    addr: Option<SocketAddr>,
    /// State directory: database, code, dependency layers, sandboxes [default: /var/lib/faas].
    #[arg(long, env = "FAAS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Default sandbox kind: native, docker or microvm [default: native].
    #[arg(long, env = "FAAS_EXECUTOR_TYPE", value_parser = crate::config::SANDBOX_KINDS)]
    executor: Option<String>,
    /// Further sandbox kinds functions may choose with `"sandbox"` (comma-separated).
    #[arg(long, env = "FAAS_ALLOWED_SANDBOXES", value_delimiter = ',')]
    allow_sandbox: Option<Vec<String>>,
    /// Where runtime images are built and cached [default: DATA_DIR/images].
    #[arg(long, env = "FAAS_IMAGES_DIR")]
    images_dir: Option<PathBuf>,
    /// Guest agent binary to put in images [default: faas-guest-agent beside this binary].
    #[arg(long, env = "FAAS_AGENT_PATH")]
    agent_path: Option<PathBuf>,
    /// Seconds an idle instance stays warm [default: 300].
    #[arg(long, env = "FAAS_IDLE_TIMEOUT_SEC")]
    idle_timeout_sec: Option<u64>,
    /// Seconds between pings of an idle instance; one that does not answer in
    /// 5 s is replaced [default: 15].
    #[arg(long, env = "FAAS_HEARTBEAT_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_sec: Option<u64>,
    /// Largest invocation payload in bytes [default: 6291456].
    #[arg(long, env = "FAAS_MAX_PAYLOAD_BYTES")]
    max_payload_bytes: Option<usize>,
    /// Most instances alive at once [default: 32].
    #[arg(long, env = "FAAS_MAX_INSTANCES")]
    max_instances: Option<usize>,
    /// Parent cgroup of native sandbox instances [default: faas].
    #[arg(long, env = "FAAS_CGROUP_PARENT")]
    cgroup_parent: Option<String>,
    /// runc binary [default: runc].
    #[arg(long, env = "FAAS_RUNC")]
    runc: Option<PathBuf>,
    /// Docker daemon socket, unix:///path [default: DOCKER_HOST, else /var/run/docker.sock].
    #[arg(long, env = "FAAS_DOCKER_HOST")]
    docker_host: Option<String>,
    /// Attestation: auto (the TEE if present), simulated (TEE, else SIMULATED evidence), off [default: auto].
    #[arg(long, env = "FAAS_ATTESTATION", value_parser = ["auto", "simulated", "off"])]
    attestation: Option<String>,
    /// Policy (JSON or TOML) the node's own evidence must satisfy [default: hardware only].
    #[arg(long, env = "FAAS_ATTESTATION_POLICY")]
    attestation_policy: Option<PathBuf>,
    /// QEMU microVMs: save each function's first VM once loaded and restore
    /// further instances from it (true), or boot every VM on vsock (false) [default: true].
    #[arg(long, env = "FAAS_MICROVM_SNAPSHOTS")]
    microvm_snapshots: Option<bool>,
}

/// Run until SIGINT or SIGTERM; then stop every instance before exiting.
pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    init_tracing();
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let defaults = OrchestratorConfig::default();
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or(defaults.data_dir.clone());
    let addr: SocketAddr = match args.addr {
        Some(a) => a,
        None => file
            .addr
            .as_deref()
            .unwrap_or("127.0.0.1:8080")
            .parse()
            .context("invalid addr in config file")?,
    };
    let kinds = sandbox_kinds(&args, &file)?;
    let images_dir = args
        .images_dir
        .clone()
        .or(file.images_dir.clone())
        .unwrap_or_else(|| data_dir.join("images"));
    let agent = crate::config::agent_path(args.agent_path.clone().or(file.agent_path.clone()))?;

    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize().context("data dir")?;

    // Images first: the first start builds them, which takes a while; say so.
    let store = ImageStore::new(&images_dir);
    let mut images = HashMap::new();
    let mut runtimes = Vec::new();
    // Held until the server exits, so `faas images build --prune` spares them.
    let mut in_use = Vec::new();
    for lang in Language::IMAGES {
        let progress = |line: &str| eprintln!("[images] {line}");
        let image = store
            .ensure(lang, &agent, false, &progress)
            .await
            .with_context(|| format!("cannot build the {lang} runtime image"))?;
        in_use.push(image.hold()?);
        images.insert(
            lang,
            ImageRef {
                rootfs: image.rootfs.clone(),
                hash: image.hash.clone(),
            },
        );
        runtimes.push(image);
    }

    let mut built = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let is_default = i == 0;
        let sandbox = if kind == "microvm" {
            let (sandbox, disks) =
                build_microvm(&store, &runtimes, &data_dir, args.microvm_snapshots).await?;
            in_use.extend(disks);
            sandbox
        } else {
            build_sandbox(kind, is_default, &args, &file, &data_dir, &images).await?
        };
        built.push(sandbox);
    }
    let mut built = built.into_iter();
    let mut sandboxes = Sandboxes::new(built.next().expect("the default kind is first"));
    for other in built {
        sandboxes = sandboxes.allow(other);
    }

    if file.heartbeat_sec == Some(0) {
        bail!("heartbeat_sec must be at least 1");
    }
    let config = OrchestratorConfig {
        data_dir: data_dir.clone(),
        max_payload_bytes: args
            .max_payload_bytes
            .or(file.max_payload_bytes)
            .unwrap_or(defaults.max_payload_bytes),
        idle_timeout: args
            .idle_timeout_sec
            .or(file.idle_timeout_sec)
            .map_or(defaults.idle_timeout, Duration::from_secs),
        heartbeat: args
            .heartbeat_sec
            .or(file.heartbeat_sec)
            .map_or(defaults.heartbeat, Duration::from_secs),
        max_instances: args
            .max_instances
            .or(file.max_instances)
            .unwrap_or(defaults.max_instances),
        default_memory_mb: file.default_memory_mb.unwrap_or(defaults.default_memory_mb),
        default_timeout_sec: file
            .default_timeout_sec
            .unwrap_or(defaults.default_timeout_sec),
        code_limits: defaults.code_limits,
    };
    let mut orchestrator = Orchestrator::new(config, sandboxes)
        .await
        .context("cannot open the platform state")?;
    if let Some(node) = start_attestation(&args, &file).await? {
        orchestrator.set_attestation(node);
    }
    let orchestrator = Arc::new(orchestrator);
    let app = faas_gateway::router(orchestrator.clone());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("listener address")?;
    tracing::info!(
        "listening on http://{local} (sandboxes {}, data {})",
        kinds.join(", "),
        data_dir.display()
    );
    eprintln!("faas: listening on http://{local}");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    tracing::info!("shutting down: stopping instances");
    orchestrator.shutdown().await;
    served.context("server error")?;
    Ok(ExitCode::SUCCESS)
}

/// Attest the node as configured; `None` when attestation is off or impossible.
async fn start_attestation(
    args: &ServeArgs,
    file: &FileConfig,
) -> Result<Option<Arc<NodeAttestation>>> {
    let a = &file.attestation;
    let mode = args
        .attestation
        .clone()
        .or(a.mode.clone())
        .unwrap_or_else(|| "auto".into());
    let simulate = match mode.as_str() {
        "off" => return Ok(None),
        "auto" => false,
        "simulated" => true,
        other => bail!("attestation mode {other:?} is not one of auto, simulated, off"),
    };
    let policy = match args.attestation_policy.clone().or(a.policy.clone()) {
        Some(p) => Policy::from_file(&p).context("attestation policy")?,
        None => Policy::default(),
    };
    let collateral = match (&a.collateral, &a.pccs_url) {
        (Some(path), _) => Some(CollateralSource::file(path)),
        (None, Some(url)) => Some(CollateralSource::pccs(PccsConfig::new(url)).context("PCCS")?),
        (None, None) => None,
    };
    let node = NodeAttestation::start(AttestationConfig {
        simulate,
        policy,
        collateral,
        refresh: Duration::from_secs(a.refresh_sec.unwrap_or(600)),
    })
    .await
    .context("cannot attest this node")?;
    if node.is_none() && mode == "auto" {
        tracing::info!(
            "attestation: no TEE found; functions that require attestation are refused here"
        );
    }
    Ok(node)
}

/// The default kind first, then the others functions may choose.
fn sandbox_kinds(args: &ServeArgs, file: &FileConfig) -> Result<Vec<String>> {
    let default = args
        .executor
        .clone()
        .or(file.executor.clone())
        .unwrap_or_else(|| "native".into());
    let mut kinds = vec![default];
    let others = args
        .allow_sandbox
        .clone()
        .or(file.allowed_sandboxes.clone())
        .unwrap_or_default();
    for kind in others {
        crate::config::check_kind(&kind)?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

async fn build_sandbox(
    kind: &str,
    is_default: bool,
    args: &ServeArgs,
    file: &FileConfig,
    data_dir: &Path,
    images: &HashMap<Language, ImageRef>,
) -> Result<Arc<dyn Sandbox>> {
    match kind {
        "native" => {
            let config = native_config(args, file, data_dir);
            let native = NativeSandbox::new(config, images.clone())
                .await
                .context("cannot start the native sandbox")?;
            Ok(Arc::new(native))
        }
        "docker" => {
            let host = args
                .docker_host
                .clone()
                .or(file.docker.host.clone())
                .or_else(|| std::env::var("DOCKER_HOST").ok());
            let docker = DockerSandbox::new(docker_config(host, file, data_dir), images.clone())
                .await
                .context("cannot set up the docker sandbox")?;
            if let Err(e) = docker.ping().await {
                if is_default {
                    bail!("docker is the default sandbox but its daemon does not answer: {e}");
                }
                tracing::warn!("docker sandbox enabled but its daemon does not answer yet: {e}");
            }
            Ok(Arc::new(docker))
        }
        other => bail!("sandbox kind {other:?} is not available in this build"),
    }
}

/// The microVM sandbox: Firecracker when `FAAS_FC_BINARY_PATH` is set, else QEMU
/// `microvm` (KVM where it really works, TCG otherwise). Kernel and root disks come
/// from `FAAS_FC_KERNEL_PATH` / `FAAS_FC_ROOTFS_PATH` when set, else they are built.
async fn build_microvm(
    store: &ImageStore,
    runtimes: &[RuntimeImage],
    data_dir: &Path,
    snapshots: Option<bool>,
) -> Result<(Arc<dyn Sandbox>, Vec<InUse>)> {
    let progress = |line: &str| eprintln!("[images] {line}");
    let env_path = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let images = GuestImages::ensure(
        store,
        runtimes,
        env_path("FAAS_FC_KERNEL_PATH"),
        env_path("FAAS_FC_ROOTFS_PATH"),
        &progress,
    )
    .await
    .context("cannot build the microVM guest")?;
    let disks = images
        .disks
        .values()
        .map(|disk| InUse::file(disk))
        .collect::<Result<Vec<_>, _>>()?;
    let vmm = match env_path("FAAS_FC_BINARY_PATH") {
        Some(binary) => Vmm::Firecracker(FirecrackerConfig { binary }),
        None => Vmm::Qemu(QemuConfig {
            snapshots: snapshots.unwrap_or(true),
            ..QemuConfig::default()
        }),
    };
    let config = MicrovmConfig {
        vmm,
        run_dir: data_dir.join("run/microvm"),
        disk_cache: data_dir.join("microvm-disks"),
        snapshot_dir: data_dir.join("run/microvm-snapshots"),
        ..MicrovmConfig::default()
    };
    let sandbox = MicrovmSandbox::new(config, images)
        .await
        .context("cannot start the microvm sandbox")?;
    Ok((Arc::new(sandbox), disks))
}

fn native_config(args: &ServeArgs, file: &FileConfig, data_dir: &Path) -> NativeConfig {
    let n = &file.native;
    let defaults = NativeConfig::default();
    NativeConfig {
        runc: args
            .runc
            .clone()
            .or(n.runc.clone())
            .unwrap_or(defaults.runc),
        state_dir: data_dir.join("run/runc"),
        instances_dir: data_dir.join("run/instances"),
        cgroup_parent: args
            .cgroup_parent
            .clone()
            .or(n.cgroup_parent.clone())
            .unwrap_or(defaults.cgroup_parent),
        sandbox_uid: n.sandbox_uid.unwrap_or(defaults.sandbox_uid),
        pids_limit: n.pids_limit.unwrap_or(defaults.pids_limit),
        cpu_quota_us: n.cpu_quota_us.unwrap_or(defaults.cpu_quota_us),
        tmp_mb: n.tmp_mb.unwrap_or(defaults.tmp_mb),
        userns_base: n.userns_base,
        ..defaults
    }
}

fn docker_config(host: Option<String>, file: &FileConfig, data_dir: &Path) -> DockerConfig {
    let d = &file.docker;
    let defaults = DockerConfig::default();
    DockerConfig {
        host,
        instances_dir: data_dir.join("run/docker"),
        // Containers are ours when they carry our data dir's digest: several
        // servers on one daemon never reap each other's.
        owner: hex_digest(data_dir.to_string_lossy().as_bytes()),
        pids_limit: d.pids_limit.unwrap_or(defaults.pids_limit),
        cpus: d.cpus.unwrap_or(defaults.cpus),
        tmp_mb: d.tmp_mb.unwrap_or(defaults.tmp_mb),
        ..defaults
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(bytes)[..8])
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
