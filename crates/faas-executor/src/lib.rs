//! Sandboxes that run function instances.
//!
//! - [`Sandbox`]: starts [`Instance`]s of a function (or bare instances for `/execute`)
//!   in one kind of isolation. [`native::NativeSandbox`] is the Linux namespaces +
//!   cgroups + seccomp sandbox driven through `runc`; Docker and microVMs plug in here.
//! - [`Instance`]: one running sandbox with a guest agent inside; it stays warm between
//!   invocations and is destroyed by its owner (or its guard, on every error path).
//! - [`SandboxExecutor`]: the compatible one-shot `execute(SandboxConfig)`, provided
//!   for every [`Sandbox`].
//! - [`agent::AgentConn`]: the host side of the frame protocol, shared by all sandboxes.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod docker;
mod egress;
pub mod ephemeral;
mod error;
pub mod ids;
mod instance;
pub mod microvm;
mod mounts;
pub mod native;
pub mod socket;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod views;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use faas_common::protocol::InitSpec;
use faas_common::{InvocationResult, Language, SandboxConfig, SandboxKind};

pub use error::ExecutorError;

/// What to start.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Runtime image to run in.
    pub language: Language,
    /// Host directory with the function's code, mounted read-only at
    /// [`faas_common::contract::GUEST_CODE_DIR`].
    pub code_dir: Option<PathBuf>,
    /// Host directory with installed dependencies, mounted read-only at
    /// [`faas_common::contract::GUEST_DEPS_DIR`].
    pub deps_dir: Option<PathBuf>,
    /// Memory limit in MiB (also bounds a `/tmp` that lives in memory).
    pub memory_mb: u32,
    /// Size of `/tmp` in MiB: a tmpfs up to
    /// [`faas_common::contract::TMPFS_MAX_MB`], a disk of the instance's own
    /// above (see [`ephemeral`]).
    pub ephemeral_mb: u32,
    /// The handler to load; `None` for a bare instance that only runs `exec`.
    pub init: Option<InitSpec>,
    /// Destinations the instance may reach; empty: no network at all.
    pub egress: Vec<faas_common::network::EgressRule>,
}

/// A built runtime image, as every sandbox kind consumes it.
#[derive(Debug, Clone)]
pub struct ImageRef {
    /// The root filesystem directory.
    pub rootfs: PathBuf,
    /// Content hash of the image recipe (names Docker tags, VM disks).
    pub hash: String,
}

/// A successful round trip (the handler itself may still have failed: see `error`).
#[derive(Debug, Clone, Default)]
pub struct InvokeOutput {
    /// Response body.
    pub body: Vec<u8>,
    /// MIME type of the body.
    pub content_type: String,
    /// What the function printed.
    pub logs: String,
    /// The handler's error, if it raised or exited non-zero.
    pub error: Option<String>,
    /// Exit status for shell functions and `exec`.
    pub exit_code: Option<i32>,
    /// Time the handler ran inside the sandbox.
    pub duration: Duration,
}

/// Result of loading a handler.
#[derive(Debug, Clone, Default)]
pub struct Ready {
    /// What loading printed.
    pub logs: String,
    /// Time spent loading.
    pub init: Duration,
}

/// One kind of isolation.
#[async_trait]
pub trait Sandbox: Send + Sync + 'static {
    /// Which kind of isolation it is.
    fn kind(&self) -> SandboxKind;

    /// Start an instance and, when `spec.init` is set, load its handler.
    async fn start(&self, spec: InstanceSpec) -> Result<Box<dyn Instance>, ExecutorError>;

    /// Whether instances can get exactly the network an egress allow-list
    /// opens; `Err` says why not.
    fn egress_support(&self) -> Result<(), String> {
        Err("this sandbox kind gives functions no network device".into())
    }

    /// How many pre-started instances are ready now.
    fn spares(&self) -> usize {
        0
    }

    /// Make ready what a first start of this code will need (a deploy
    /// calls it, so the first invocation does not pay for it).
    async fn prepare(
        &self,
        code_dir: Option<&std::path::Path>,
        deps_dir: Option<&std::path::Path>,
    ) {
        let _ = (code_dir, deps_dir);
    }

    /// Remove instances a previous process left behind (after a crash); returns how many.
    async fn reap_leftovers(&self) -> Result<usize, ExecutorError>;

    /// After the last instance is gone: remove whatever the sandbox kind
    /// still holds on the host for this server.
    async fn shutdown(&self) -> Result<usize, ExecutorError> {
        self.reap_leftovers().await
    }

    /// Drop what the sandbox keeps for code trees and dependency layers that
    /// are no longer stored (their names, the content addresses, are not in
    /// `code` or `deps`).
    async fn forget_trees(
        &self,
        code: &std::collections::HashSet<String>,
        deps: &std::collections::HashSet<String>,
    ) {
        let _ = (code, deps);
    }
}

/// A running sandbox with a guest agent inside.
#[async_trait]
pub trait Instance: Send + Sync {
    /// Unique id (also the container / cgroup name).
    fn id(&self) -> &str;

    /// Whether it was specialised from a pre-started instance rather than
    /// started for its function.
    fn prestarted(&self) -> bool {
        false
    }

    /// Invoke the loaded handler. On `Err` the instance must not be reused.
    async fn invoke(
        &mut self,
        request_id: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<InvokeOutput, ExecutorError>;

    /// Run `command` once with `stdin`. On `Err` the instance must not be reused.
    async fn exec(
        &mut self,
        request_id: &str,
        command: Vec<String>,
        env: Vec<String>,
        stdin: Vec<u8>,
        timeout: Duration,
    ) -> Result<InvokeOutput, ExecutorError>;

    /// Liveness check of an idle instance: its agent answers within `timeout`.
    /// On `Err` (a hung or dead sandbox) the instance must not be reused.
    async fn ping(&mut self, timeout: Duration) -> Result<(), ExecutorError>;

    /// Tear down: processes, cgroups, mounts, temporary files.
    async fn destroy(self: Box<Self>);
}

/// The compatible executor interface: one command, one sandbox, one result.
#[async_trait]
pub trait SandboxExecutor: Send + Sync {
    /// Run `config.command` in runtime `config.source` with the payload on stdin.
    async fn execute(&self, config: SandboxConfig) -> Result<InvocationResult, ExecutorError>;
}

#[async_trait]
impl<S: Sandbox + ?Sized> SandboxExecutor for S {
    async fn execute(&self, config: SandboxConfig) -> Result<InvocationResult, ExecutorError> {
        let language: Language = config
            .source
            .parse()
            .map_err(|e: faas_common::UnknownLanguage| ExecutorError::BadRequest(e.to_string()))?;
        if config.command.is_empty() {
            return Err(ExecutorError::BadRequest(
                "command must not be empty".into(),
            ));
        }
        let mut instance = self
            .start(InstanceSpec {
                language,
                code_dir: None,
                deps_dir: None,
                memory_mb: config.memory_mb,
                // A one-shot command gets the small, memory-backed /tmp it always had.
                ephemeral_mb: faas_common::contract::TMPFS_MAX_MB,
                init: None,
                egress: Vec::new(),
            })
            .await?;
        let outcome = instance
            .exec(
                &config.function_id,
                config.command,
                config.env_vars.unwrap_or_default(),
                config.payload,
                Duration::from_secs(config.timeout_sec.into()),
            )
            .await;
        instance.destroy().await;
        let out = outcome?;
        Ok(InvocationResult {
            request_id: config.function_id,
            response: Some(out.body),
            logs: Some(out.logs),
            error: out.error.or_else(|| match out.exit_code {
                Some(0) => None,
                Some(code) => Some(format!("command exited with status {code}")),
                None => Some("command was killed".into()),
            }),
        })
    }
}

/// Environment shared by every sandbox's init process.
pub(crate) fn base_env() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), "/tmp".into()),
        ("LANG".into(), "C.UTF-8".into()),
    ])
}
