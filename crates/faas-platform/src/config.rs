//! Settings, merged once: flags beat `FAAS_*` environment variables (clap
//! reads both into [`Flags`]), which beat the config file ([`FileConfig`]),
//! which beats the embedded defaults. The result is a [`PlatformConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use faas_common::SandboxKind;
use faas_executor::ids::HostIds;
use faas_orchestrator::OrchestratorConfig;
use serde::Deserialize;

use crate::PlatformError;

/// Settings given as flags or `FAAS_*` variables. Every binary flattens these
/// into its own command line; the data directory is each binary's own flag.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Flags {
    /// Config file (TOML); flags and FAAS_* variables override it.
    #[arg(long, env = "FAAS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address the HTTP API listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "FAAS_ADDR")]
    pub addr: Option<SocketAddr>,
    /// Default sandbox kind: native, docker or microvm (firecracker: microvm on
    /// Firecracker, needs FAAS_FC_BINARY_PATH) [default: native].
    #[arg(long, env = "FAAS_EXECUTOR_TYPE")]
    pub executor: Option<String>,
    /// Further sandbox kinds functions may choose with `"sandbox"` (comma-separated).
    #[arg(long, env = "FAAS_ALLOWED_SANDBOXES", value_delimiter = ',')]
    pub allow_sandbox: Option<Vec<String>>,
    /// Where images are built and cached [default: DATA_DIR/images].
    #[arg(long, env = "FAAS_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
    /// Guest agent binary to put in images [default: faas-guest-agent beside this binary].
    #[arg(long, env = "FAAS_AGENT_PATH")]
    pub agent_path: Option<PathBuf>,
    /// Seconds an idle instance stays warm [default: 300].
    #[arg(long, env = "FAAS_IDLE_TIMEOUT_SEC")]
    pub idle_timeout_sec: Option<u64>,
    /// Seconds between pings of an idle instance; one that does not answer in
    /// 5 s is replaced [default: 15].
    #[arg(long, env = "FAAS_HEARTBEAT_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_sec: Option<u64>,
    /// Largest invocation payload in bytes [default: 6291456].
    #[arg(long, env = "FAAS_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Most instances alive at once [default: 32].
    #[arg(long, env = "FAAS_MAX_INSTANCES")]
    pub max_instances: Option<usize>,
    /// Most instances of one function alive at once [default: 8].
    #[arg(long, env = "FAAS_MAX_INSTANCES_PER_FUNCTION")]
    pub max_instances_per_function: Option<usize>,
    /// Invocations that may wait for one function's busy instances before
    /// the rest get 429, unless the function sets `max_queue` [default: 64].
    #[arg(long, env = "FAAS_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Largest `ephemeral_mb` (the per-instance `/tmp`, on disk above 64 MiB)
    /// a function may ask for, MiB [default: 10240].
    #[arg(long, env = "FAAS_MAX_EPHEMERAL_MB", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_ephemeral_mb: Option<u32>,
    /// Seconds final asynchronous results and dead letters are kept [default: 86400].
    #[arg(long, env = "FAAS_ASYNC_RETENTION_SEC")]
    pub async_retention_sec: Option<u64>,
    /// Asynchronous invocations one tenant may have waiting; beyond, 429 [default: 1000].
    #[arg(long, env = "FAAS_MAX_ASYNC_PENDING")]
    pub max_async_pending: Option<usize>,
    /// Let callback URLs reach loopback, private and link-local addresses
    /// (off: a tenant could probe the node's own network through them).
    #[arg(long, env = "FAAS_CALLBACKS_ALLOW_PRIVATE")]
    pub callbacks_allow_private: bool,
    /// Memory all instances may have together, MiB [default: the machine's
    /// memory less a tenth, at least 1 GiB].
    #[arg(long, env = "FAAS_MEMORY_BUDGET_MB")]
    pub memory_budget_mb: Option<u64>,
    /// Parent cgroup of native sandbox instances [default: faas].
    #[arg(long, env = "FAAS_CGROUP_PARENT")]
    pub cgroup_parent: Option<String>,
    /// runc binary [default: runc].
    #[arg(long, env = "FAAS_RUNC")]
    pub runc: Option<PathBuf>,
    /// Docker daemon socket, unix:///path [default: DOCKER_HOST, else /var/run/docker.sock].
    #[arg(long, env = "FAAS_DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Attestation: auto (the TEE if present), simulated (TEE, else SIMULATED evidence), off [default: auto].
    #[arg(long, env = "FAAS_ATTESTATION", value_parser = ["auto", "simulated", "off"])]
    pub attestation: Option<String>,
    /// Policy (JSON or TOML) the node's own evidence must satisfy [default: hardware only].
    #[arg(long, env = "FAAS_ATTESTATION_POLICY")]
    pub attestation_policy: Option<PathBuf>,
    /// QEMU microVMs: save each function's first VM once loaded and restore
    /// further instances from it (true), or boot every VM on vsock (false) [default: true].
    #[arg(long, env = "FAAS_MICROVM_SNAPSHOTS")]
    pub microvm_snapshots: Option<bool>,
    /// Firecracker binary: microVMs run on Firecracker instead of QEMU.
    #[arg(long, env = "FAAS_FC_BINARY_PATH")]
    pub fc_binary_path: Option<PathBuf>,
    /// Guest kernel (vmlinux) for microVMs [default: built from Debian's].
    #[arg(long, env = "FAAS_FC_KERNEL_PATH")]
    pub fc_kernel_path: Option<PathBuf>,
    /// Guest root filesystem for microVMs [default: built per language].
    #[arg(long, env = "FAAS_FC_ROOTFS_PATH")]
    pub fc_rootfs_path: Option<PathBuf>,
    /// Serve without API keys: anyone who can reach the port is admin. For
    /// local development only; said loudly at start and in /healthz.
    #[arg(long, env = "FAAS_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Serve /metrics without a key (for a scraper on a trusted network).
    #[arg(long, env = "FAAS_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "FAAS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "FAAS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// IPv4 subnet the links of instances with an egress allow-list take
    /// their addresses from, a /30 each [default: 10.203.0.0/16].
    #[arg(long, env = "FAAS_EGRESS_SUBNET")]
    pub egress_subnet: Option<String>,
    /// Native instances kept started ahead per runtime (Python, Node.js,
    /// shell), with no function in them: a cold start takes one; 0 turns
    /// them off [default: 1].
    #[arg(long, env = "FAAS_PRESTART", value_parser = clap::value_parser!(u32).range(0..=64))]
    pub prestart: Option<u32>,
}

/// The config file (TOML); every key optional, unknown keys are errors.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listen address.
    pub addr: Option<String>,
    /// State directory.
    pub data_dir: Option<PathBuf>,
    /// Default sandbox kind.
    pub executor: Option<String>,
    /// Further sandbox kinds functions may choose.
    pub allowed_sandboxes: Option<Vec<String>>,
    /// Where images are built and cached.
    pub images_dir: Option<PathBuf>,
    /// The guest agent binary copied into images.
    pub agent_path: Option<PathBuf>,
    /// Seconds an idle instance stays warm.
    pub idle_timeout_sec: Option<u64>,
    /// Seconds between heartbeats of an idle instance.
    pub heartbeat_sec: Option<u64>,
    /// Largest invocation payload.
    pub max_payload_bytes: Option<usize>,
    /// Most live instances.
    pub max_instances: Option<usize>,
    /// Most live instances of one function.
    pub max_instances_per_function: Option<usize>,
    /// Invocations that may wait for one function's instances.
    pub max_queue: Option<usize>,
    /// Largest per-instance `/tmp` a function may ask for, MiB.
    pub max_ephemeral_mb: Option<u32>,
    /// Seconds final asynchronous results are kept.
    pub async_retention_sec: Option<u64>,
    /// Asynchronous invocations one tenant may have waiting.
    pub max_async_pending: Option<usize>,
    /// Callbacks may reach private addresses.
    pub callbacks_allow_private: Option<bool>,
    /// Memory of all instances together, MiB.
    pub memory_budget_mb: Option<u64>,
    /// Memory limit when a deploy gives none.
    pub default_memory_mb: Option<u32>,
    /// Timeout when a deploy gives none.
    pub default_timeout_sec: Option<u32>,
    /// Limits on uploaded code.
    #[serde(default)]
    pub code: CodeFileConfig,
    /// Limits on dependency installs.
    #[serde(default)]
    pub deps: DepsFileConfig,
    /// Native sandbox settings.
    #[serde(default)]
    pub native: NativeFileConfig,
    /// Docker sandbox settings.
    #[serde(default)]
    pub docker: DockerFileConfig,
    /// Attestation settings.
    #[serde(default)]
    pub attestation: AttestationFileConfig,
    /// HTTP API settings: auth, TLS, metrics.
    #[serde(default)]
    pub api: ApiFileConfig,
    /// See `--egress-subnet`.
    pub egress_subnet: Option<String>,
}

/// `[code]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeFileConfig {
    /// Most unpacked bytes of one upload.
    pub max_bytes: Option<u64>,
    /// Most entries (files, links, directories) of one upload.
    pub max_entries: Option<usize>,
    /// Most unpacked bytes per packed byte.
    pub max_ratio: Option<u64>,
    /// Deploys decoding code at once.
    pub concurrent_deploys: Option<usize>,
}

/// `[deps]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepsFileConfig {
    /// Largest dependency layer, MiB.
    pub max_layer_mb: Option<u32>,
    /// Longest install, seconds.
    pub timeout_sec: Option<u64>,
}

/// `[api]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFileConfig {
    /// See `--insecure-no-auth`.
    pub insecure_no_auth: Option<bool>,
    /// See `--metrics-public`.
    pub metrics_public: Option<bool>,
    /// See `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// See `--tls-key`.
    pub tls_key: Option<PathBuf>,
}

/// `[attestation]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationFileConfig {
    /// `auto` (the TEE if there is one), `simulated` (a TEE, else simulated evidence), `off`.
    pub mode: Option<String>,
    /// Policy file (JSON or TOML) the node's evidence must satisfy.
    pub policy: Option<PathBuf>,
    /// PCCS/PCS base URL for TDX collateral.
    pub pccs_url: Option<String>,
    /// TDX collateral file, for offline use.
    pub collateral: Option<PathBuf>,
    /// Seconds between fresh evidence.
    pub refresh_sec: Option<u64>,
}

/// `[docker]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerFileConfig {
    /// Daemon socket, `unix:///path`.
    pub host: Option<String>,
    /// Process limit per container.
    pub pids_limit: Option<i64>,
    /// CPUs per container.
    pub cpus: Option<f64>,
    /// The largest `/tmp` kept in memory (a tmpfs), MiB; a function's larger
    /// `ephemeral_mb` is a disk.
    pub tmp_mb: Option<u32>,
}

/// `[native]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeFileConfig {
    /// runc binary.
    pub runc: Option<PathBuf>,
    /// Parent cgroup of instances.
    pub cgroup_parent: Option<String>,
    /// Process limit per instance.
    pub pids_limit: Option<i64>,
    /// CPU microseconds per 100 ms.
    pub cpu_quota_us: Option<i64>,
    /// The largest `/tmp` kept in memory (a tmpfs), MiB; a function's larger
    /// `ephemeral_mb` is a disk.
    pub tmp_mb: Option<u32>,
    /// Map instances through a user namespace (default false; see
    /// `docs/security.md` for why).
    pub user_namespace: Option<bool>,
    /// First host id of the ranges sandboxes run under.
    pub host_id_base: Option<u32>,
    /// Number of such ranges (65,536 ids each).
    pub host_id_slots: Option<u32>,
    /// Instances kept started ahead per runtime.
    pub prestart: Option<u32>,
}

impl FileConfig {
    /// Read `path`; unknown keys are errors, so typos do not pass silently.
    pub fn load(path: &Path) -> Result<FileConfig, PlatformError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PlatformError::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text).map_err(|e| {
            PlatformError::Config(format!("invalid config file {}: {e}", path.display()))
        })
    }
}

/// Native sandbox settings.
#[derive(Debug, Clone)]
pub struct NativeSettings {
    /// runc binary.
    pub runc: PathBuf,
    /// Parent cgroup of instances.
    pub cgroup_parent: String,
    /// Process limit per instance.
    pub pids_limit: Option<i64>,
    /// CPU microseconds per 100 ms.
    pub cpu_quota_us: Option<i64>,
    /// The largest `/tmp` kept in memory (a tmpfs), MiB; a function's larger
    /// `ephemeral_mb` is a disk.
    pub tmp_mb: Option<u32>,
    /// Map instances through a user namespace; `None`: the sandbox's default (no).
    pub user_namespace: Option<bool>,
    /// Instances kept started ahead per runtime (Python, Node.js, shell).
    pub prestart: u32,
}

/// Docker sandbox settings.
#[derive(Debug, Clone, Default)]
pub struct DockerSettings {
    /// Daemon socket; `None`: `DOCKER_HOST`, else `/var/run/docker.sock`.
    pub host: Option<String>,
    /// Process limit per container.
    pub pids_limit: Option<i64>,
    /// CPUs per container.
    pub cpus: Option<f64>,
    /// The largest `/tmp` kept in memory (a tmpfs), MiB; a function's larger
    /// `ephemeral_mb` is a disk.
    pub tmp_mb: Option<u32>,
}

/// MicroVM sandbox settings.
#[derive(Debug, Clone, Default)]
pub struct MicrovmSettings {
    /// QEMU: restore instances from a saved VM.
    pub snapshots: bool,
    /// Firecracker instead of QEMU.
    pub firecracker: Option<PathBuf>,
    /// Guest kernel instead of the built one.
    pub kernel: Option<PathBuf>,
    /// Guest root disk instead of the built ones.
    pub rootfs: Option<PathBuf>,
}

/// Attestation settings.
#[derive(Debug, Clone, Default)]
pub struct AttestationSettings {
    /// `auto`, `simulated` or `off`.
    pub mode: String,
    /// Policy file.
    pub policy: Option<PathBuf>,
    /// PCCS/PCS base URL.
    pub pccs_url: Option<String>,
    /// Collateral file.
    pub collateral: Option<PathBuf>,
    /// Seconds between fresh evidence.
    pub refresh: Duration,
}

/// HTTP API settings.
#[derive(Debug, Clone, Default)]
pub struct ApiSettings {
    /// Routes and their rules.
    pub gateway: faas_gateway::GatewayConfig,
    /// HTTPS: (certificate chain, private key), PEM.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Everything a node is built from.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    /// How it serves.
    pub api: ApiSettings,
    /// Where images are built and cached.
    pub images_dir: PathBuf,
    /// The guest agent put into every image.
    pub agent_path: PathBuf,
    /// Sandbox kinds offered, the default first.
    pub sandboxes: Vec<SandboxKind>,
    /// Orchestrator settings (the data directory among them).
    pub orchestrator: OrchestratorConfig,
    /// Native sandbox.
    pub native: NativeSettings,
    /// Docker sandbox.
    pub docker: DockerSettings,
    /// MicroVM sandbox.
    pub microvm: MicrovmSettings,
    /// Host id ranges of sandboxes.
    pub host_ids: HostIds,
    /// The node's attestation.
    pub attestation: AttestationSettings,
    /// Addresses of the links of instances with an egress allow-list.
    pub egress_subnet: faas_common::network::Ipv4Net,
}

impl PlatformConfig {
    /// Merge `flags` over the config file they name (if any) over the
    /// defaults; `data_dir` is the binary's own flag (or the default).
    pub fn resolve(
        flags: &Flags,
        data_dir: Option<PathBuf>,
    ) -> Result<PlatformConfig, PlatformError> {
        let file = match &flags.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        Self::merge(flags, &file, data_dir)
    }

    /// [`PlatformConfig::resolve`] with the file already read.
    pub fn merge(
        flags: &Flags,
        file: &FileConfig,
        data_dir: Option<PathBuf>,
    ) -> Result<PlatformConfig, PlatformError> {
        let bad = |m: String| PlatformError::Config(m);
        let egress_subnet = match flags.egress_subnet.as_ref().or(file.egress_subnet.as_ref()) {
            None => faas_netpolicy::DEFAULT_SUBNET,
            Some(text) => parse_subnet(text).ok_or_else(|| {
                bad(format!(
                    "egress subnet {text:?} is not an IPv4 network of /8 to /29 (a.b.c.d/len)"
                ))
            })?,
        };
        let defaults = OrchestratorConfig::default();
        let data_dir = data_dir
            .or(file.data_dir.clone())
            .unwrap_or(defaults.data_dir.clone());
        std::fs::create_dir_all(&data_dir).map_err(|e| {
            bad(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(|e| bad(format!("data dir {}: {e}", data_dir.display())))?;
        let addr = match flags.addr {
            Some(a) => a,
            None => file
                .addr
                .as_deref()
                .unwrap_or("127.0.0.1:8080")
                .parse()
                .map_err(|e| bad(format!("invalid addr in config file: {e}")))?,
        };
        let default_kind = flags
            .executor
            .clone()
            .or(file.executor.clone())
            .unwrap_or_else(|| "native".into());
        let fc_binary = flags.fc_binary_path.clone();
        if default_kind == "firecracker" && fc_binary.is_none() {
            return Err(bad(
                "FAAS_EXECUTOR_TYPE=firecracker needs FAAS_FC_BINARY_PATH (or use microvm for QEMU)"
                    .into(),
            ));
        }
        let mut sandboxes = vec![parse_kind(&default_kind)?];
        for kind in flags
            .allow_sandbox
            .clone()
            .or(file.allowed_sandboxes.clone())
            .unwrap_or_default()
        {
            let kind = parse_kind(&kind)?;
            if !sandboxes.contains(&kind) {
                sandboxes.push(kind);
            }
        }
        let heartbeat = flags.heartbeat_sec.or(file.heartbeat_sec);
        if heartbeat == Some(0) {
            return Err(bad("heartbeat_sec must be at least 1".into()));
        }
        let code = &file.code;
        let code_limits = code_limits(code, &defaults);
        let host_ids = {
            let d = HostIds::default();
            HostIds {
                base: file.native.host_id_base.unwrap_or(d.base),
                slots: file.native.host_id_slots.unwrap_or(d.slots),
                ..d
            }
        };
        if host_ids.slots < 2
            || u64::from(host_ids.base)
                + u64::from(host_ids.slots) * u64::from(faas_executor::ids::SLOT_SIZE)
                > u64::from(u32::MAX)
        {
            return Err(bad(
                "[native] host_id_base and host_id_slots must leave room for at least 2 ranges below 2^32"
                    .into(),
            ));
        }
        let orchestrator = OrchestratorConfig {
            data_dir: data_dir.clone(),
            max_payload_bytes: flags
                .max_payload_bytes
                .or(file.max_payload_bytes)
                .unwrap_or(defaults.max_payload_bytes),
            idle_timeout: flags
                .idle_timeout_sec
                .or(file.idle_timeout_sec)
                .map_or(defaults.idle_timeout, Duration::from_secs),
            heartbeat: heartbeat.map_or(defaults.heartbeat, Duration::from_secs),
            max_instances: flags
                .max_instances
                .or(file.max_instances)
                .unwrap_or(defaults.max_instances),
            max_instances_per_function: flags
                .max_instances_per_function
                .or(file.max_instances_per_function)
                .unwrap_or(defaults.max_instances_per_function),
            max_queue: flags
                .max_queue
                .or(file.max_queue)
                .unwrap_or(defaults.max_queue),
            max_ephemeral_mb: flags
                .max_ephemeral_mb
                .or(file.max_ephemeral_mb)
                .unwrap_or(defaults.max_ephemeral_mb),
            async_retention: flags
                .async_retention_sec
                .or(file.async_retention_sec)
                .map_or(defaults.async_retention, Duration::from_secs),
            callbacks_allow_private: flags.callbacks_allow_private
                || file.callbacks_allow_private.unwrap_or(false),
            async_workers: defaults.async_workers,
            max_async_pending: flags
                .max_async_pending
                .or(file.max_async_pending)
                .unwrap_or(defaults.max_async_pending),
            memory_budget_mb: flags
                .memory_budget_mb
                .or(file.memory_budget_mb)
                .unwrap_or(defaults.memory_budget_mb),
            default_memory_mb: file.default_memory_mb.unwrap_or(defaults.default_memory_mb),
            default_timeout_sec: file
                .default_timeout_sec
                .unwrap_or(defaults.default_timeout_sec),
            code_limits,
            concurrent_deploys: code
                .concurrent_deploys
                .unwrap_or(defaults.concurrent_deploys),
            deps_limits: faas_orchestrator::deps::DepsLimits {
                max_layer_mb: file
                    .deps
                    .max_layer_mb
                    .unwrap_or(defaults.deps_limits.max_layer_mb),
                timeout: file
                    .deps
                    .timeout_sec
                    .map_or(defaults.deps_limits.timeout, Duration::from_secs),
                ..defaults.deps_limits
            },
            code_writer_uid: Some(host_ids.code_writer_uid()),
            auth: !(flags.insecure_no_auth || file.api.insecure_no_auth.unwrap_or(false)),
        };
        if orchestrator.max_instances == 0 || orchestrator.max_instances_per_function == 0 {
            return Err(bad(
                "max_instances and max_instances_per_function must be at least 1".into(),
            ));
        }
        let n = &file.native;
        let a = &file.attestation;
        let attestation_mode = flags
            .attestation
            .clone()
            .or(a.mode.clone())
            .unwrap_or_else(|| "auto".into());
        if !["auto", "simulated", "off"].contains(&attestation_mode.as_str()) {
            return Err(bad(format!(
                "attestation mode {attestation_mode:?} is not one of auto, simulated, off"
            )));
        }
        let tls = match (
            flags.tls_cert.clone().or(file.api.tls_cert.clone()),
            flags.tls_key.clone().or(file.api.tls_key.clone()),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(bad("tls_cert and tls_key go together".into())),
        };
        Ok(PlatformConfig {
            addr,
            api: ApiSettings {
                gateway: faas_gateway::GatewayConfig {
                    metrics_public: flags.metrics_public
                        || file.api.metrics_public.unwrap_or(false),
                    tls: tls.is_some(),
                },
                tls,
            },
            images_dir: flags
                .images_dir
                .clone()
                .or(file.images_dir.clone())
                .unwrap_or_else(|| data_dir.join("images")),
            agent_path: agent_path(flags.agent_path.clone().or(file.agent_path.clone()))?,
            sandboxes,
            orchestrator,
            native: NativeSettings {
                runc: flags
                    .runc
                    .clone()
                    .or(n.runc.clone())
                    .unwrap_or_else(|| PathBuf::from("runc")),
                cgroup_parent: flags
                    .cgroup_parent
                    .clone()
                    .or(n.cgroup_parent.clone())
                    .unwrap_or_else(|| "faas".into()),
                pids_limit: n.pids_limit,
                cpu_quota_us: n.cpu_quota_us,
                tmp_mb: n.tmp_mb,
                user_namespace: n.user_namespace,
                prestart: flags.prestart.or(n.prestart).unwrap_or(1),
            },
            docker: DockerSettings {
                host: flags
                    .docker_host
                    .clone()
                    .or(file.docker.host.clone())
                    .or_else(|| std::env::var("DOCKER_HOST").ok()),
                pids_limit: file.docker.pids_limit,
                cpus: file.docker.cpus,
                tmp_mb: file.docker.tmp_mb,
            },
            microvm: MicrovmSettings {
                snapshots: flags.microvm_snapshots.unwrap_or(true),
                firecracker: fc_binary,
                kernel: flags.fc_kernel_path.clone(),
                rootfs: flags.fc_rootfs_path.clone(),
            },
            host_ids,
            attestation: AttestationSettings {
                mode: attestation_mode,
                policy: flags.attestation_policy.clone().or(a.policy.clone()),
                pccs_url: a.pccs_url.clone(),
                collateral: a.collateral.clone(),
                refresh: Duration::from_secs(a.refresh_sec.unwrap_or(600)),
            },
            egress_subnet,
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.orchestrator.data_dir
    }
}

/// `a.b.c.d/len` with no host bits set, `len` 8-29.
fn parse_subnet(text: &str) -> Option<faas_common::network::Ipv4Net> {
    let (addr, len) = text.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| (8..=29).contains(l))?;
    faas_common::network::Ipv4Net::new(addr, len).filter(|n| n.addr == addr)
}

fn code_limits(code: &CodeFileConfig, defaults: &OrchestratorConfig) -> faas_archive::Limits {
    let d = defaults.code_limits;
    faas_archive::Limits {
        max_bytes: code.max_bytes.unwrap_or(d.max_bytes),
        max_entries: code.max_entries.unwrap_or(d.max_entries),
        max_ratio: code.max_ratio.unwrap_or(d.max_ratio),
        ..d
    }
}

fn parse_kind(kind: &str) -> Result<SandboxKind, PlatformError> {
    kind.parse()
        .map_err(|e: faas_common::UnknownSandboxKind| PlatformError::Config(e.to_string()))
}

/// The guest agent binary: `explicit`, else `faas-guest-agent` beside the
/// running binary.
pub fn agent_path(explicit: Option<PathBuf>) -> Result<PathBuf, PlatformError> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe()
        .map_err(|e| PlatformError::Config(format!("cannot locate this binary: {e}")))?;
    let agent = exe.with_file_name("faas-guest-agent");
    if !agent.is_file() {
        return Err(PlatformError::Config(format!(
            "guest agent not found at {} (build it with `cargo build -p faas-guest-agent` or set FAAS_AGENT_PATH)",
            agent.display()
        )));
    }
    Ok(agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(flags: Flags, file: &str) -> Result<PlatformConfig, PlatformError> {
        let dir = tempfile::tempdir().unwrap();
        let file: FileConfig = toml::from_str(file).unwrap();
        let flags = Flags {
            agent_path: flags.agent_path.or(Some("/bin/true".into())),
            ..flags
        };
        PlatformConfig::merge(&flags, &file, Some(dir.path().to_path_buf()))
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let c = merged(
            Flags {
                max_instances: Some(7),
                ..Flags::default()
            },
            "max_instances = 3\nidle_timeout_sec = 9\n[native]\npids_limit = 64\n",
        )
        .unwrap();
        assert_eq!(c.orchestrator.max_instances, 7);
        assert_eq!(c.orchestrator.idle_timeout, Duration::from_secs(9));
        assert_eq!(c.native.pids_limit, Some(64));
        assert_eq!(c.sandboxes, vec![SandboxKind::Native]);
    }

    #[test]
    fn kinds_are_typed_and_firecracker_needs_its_binary() {
        let c = merged(
            Flags {
                executor: Some("docker".into()),
                allow_sandbox: Some(vec!["native".into(), "docker".into()]),
                ..Flags::default()
            },
            "",
        )
        .unwrap();
        assert_eq!(c.sandboxes, vec![SandboxKind::Docker, SandboxKind::Native]);
        let err = merged(
            Flags {
                executor: Some("firecracker".into()),
                ..Flags::default()
            },
            "",
        )
        .unwrap_err();
        assert!(err.to_string().contains("FAAS_FC_BINARY_PATH"), "{err}");
        let c = merged(
            Flags {
                executor: Some("firecracker".into()),
                fc_binary_path: Some("/usr/bin/firecracker".into()),
                ..Flags::default()
            },
            "",
        )
        .unwrap();
        assert_eq!(c.sandboxes, vec![SandboxKind::Microvm]);
        assert!(merged(
            Flags {
                executor: Some("kvm".into()),
                ..Flags::default()
            },
            ""
        )
        .is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<FileConfig>("no_such_key = 1").is_err());
        assert!(toml::from_str::<FileConfig>("[native]\nsandbox_uid = 1000").is_err());
    }
}
