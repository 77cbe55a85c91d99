//! `faas serve` settings: flags beat `FAAS_*` environment variables, which beat
//! the config file (`--config`, `FAAS_CONFIG`), which beats the embedded defaults.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Settings as they may appear in the config file (TOML); every key optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listen address.
    pub addr: Option<String>,
    /// State directory.
    pub data_dir: Option<PathBuf>,
    /// Default sandbox kind: `native` or `docker`.
    pub executor: Option<String>,
    /// Further sandbox kinds functions may choose.
    pub allowed_sandboxes: Option<Vec<String>>,
    /// Where runtime images are built and cached.
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
    /// Memory limit when a deploy gives none.
    pub default_memory_mb: Option<u32>,
    /// Timeout when a deploy gives none.
    pub default_timeout_sec: Option<u32>,
    /// Native sandbox settings.
    #[serde(default)]
    pub native: NativeFileConfig,
    /// Docker sandbox settings.
    #[serde(default)]
    pub docker: DockerFileConfig,
    /// Attestation settings.
    #[serde(default)]
    pub attestation: AttestationFileConfig,
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
    /// `/tmp` size in MiB.
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
    /// uid functions run as.
    pub sandbox_uid: Option<u32>,
    /// Process limit per instance.
    pub pids_limit: Option<i64>,
    /// CPU microseconds per 100 ms.
    pub cpu_quota_us: Option<i64>,
    /// `/tmp` size in MiB.
    pub tmp_mb: Option<u32>,
    /// Host id base of a user namespace, if one is wanted.
    pub userns_base: Option<u32>,
}

impl FileConfig {
    /// Read `path`; unknown keys are errors, so typos do not pass silently.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config: FileConfig = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        for kind in config
            .executor
            .iter()
            .chain(config.allowed_sandboxes.iter().flatten())
        {
            check_kind(kind)?;
        }
        Ok(config)
    }
}

/// The guest agent binary: `explicit`, else `faas-guest-agent` beside this binary.
pub fn agent_path(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot locate the faas binary")?;
    let agent = exe.with_file_name("faas-guest-agent");
    if !agent.is_file() {
        bail!(
            "guest agent not found at {} (build it with `cargo build -p faas-guest-agent` or pass --agent-path)",
            agent.display()
        );
    }
    Ok(agent)
}

/// Sandbox kinds this build can run.
pub const SANDBOX_KINDS: [&str; 3] = ["native", "docker", "microvm"];

/// Refuse a sandbox kind this build cannot run.
pub fn check_kind(kind: &str) -> Result<()> {
    if SANDBOX_KINDS.contains(&kind) {
        Ok(())
    } else {
        bail!(
            "sandbox kind {kind:?} is not available in this build (supported: {})",
            SANDBOX_KINDS.join(", ")
        )
    }
}
