use std::time::Duration;

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The request itself is invalid (unknown runtime, empty command).
    #[error("{0}")]
    BadRequest(String),
    /// No image is built for this runtime.
    #[error("no runtime image for {0}; run `faas images build {0}`")]
    ImageMissing(String),
    /// A host resource every instance needs one of has run out.
    #[error("no capacity: {0}")]
    Exhausted(String),
    /// The sandbox could not be created or started.
    #[error("sandbox failed to start: {0}")]
    Start(String),
    /// The handler could not be loaded (syntax error, missing function, ...).
    #[error("{error}")]
    Init {
        /// The loader's message.
        error: String,
        /// What loading printed.
        logs: String,
    },
    /// The invocation ran past its deadline; the instance was killed.
    #[error("function timed out after {}s", .after.as_secs_f64())]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// The instance was killed by the out-of-memory killer at its memory limit.
    #[error("function exceeded its memory limit of {limit_mb} MB and was killed")]
    OutOfMemory {
        /// The limit.
        limit_mb: u32,
        /// What the function printed before.
        logs: String,
    },
    /// The sandbox or the runtime inside it died mid-invocation.
    #[error("sandbox crashed: {reason}")]
    Crashed {
        /// What is known about the crash.
        reason: String,
        /// The signal that ended the runtime, when one did.
        signal: Option<i32>,
        /// What the function printed before.
        logs: String,
    },
    /// The instance's network (its egress allow-list) could not be set up.
    #[error("egress policy: {0}")]
    Network(#[from] faas_netpolicy::NetPolicyError),
    /// The host-agent conversation failed.
    #[error("agent protocol: {0}")]
    Protocol(#[from] faas_common::protocol::ProtocolError),
    /// Host-side I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl ExecutorError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExecutorError {
        let context = context.into();
        move |source| ExecutorError::Io { context, source }
    }

    /// Logs carried by the error, if any.
    pub fn logs(&self) -> Option<&str> {
        match self {
            ExecutorError::Init { logs, .. }
            | ExecutorError::OutOfMemory { logs, .. }
            | ExecutorError::Crashed { logs, .. } => Some(logs),
            _ => None,
        }
    }
}
