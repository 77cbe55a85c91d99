use faas_common::api::Outcome;

/// How an invocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler raised, rejected, or exited non-zero.
    Handler,
    /// The handler failed to load.
    Init,
    /// It ran past its timeout.
    Timeout,
    /// It exceeded its memory limit.
    OutOfMemory,
    /// The sandbox or runtime died.
    Crash,
}

impl FailureKind {
    /// The outcome recorded for it.
    pub fn outcome(self) -> Outcome {
        match self {
            FailureKind::Handler | FailureKind::Init => Outcome::Error,
            FailureKind::Timeout => Outcome::Timeout,
            FailureKind::OutOfMemory => Outcome::Oom,
            FailureKind::Crash => Outcome::Crash,
        }
    }
}

/// Every way an orchestrator call can fail, named for what happened; the
/// gateway (and only it) maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The definition, payload or request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such function or job binding.
    #[error("{0} not found")]
    NotFound(String),
    /// Payload or code over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// The function ran and failed.
    #[error("{message}")]
    Invocation {
        /// Request id.
        request_id: String,
        /// Which way it failed.
        kind: FailureKind,
        /// One-line reason.
        message: String,
        /// What the function printed.
        logs: String,
    },
    /// The function requires attested hardware this node cannot prove.
    #[error("{0}")]
    NotAttested(String),
    /// No capacity to run it now (or the node is stopping).
    #[error("{0}")]
    Overloaded(String),
    /// No valid key was presented.
    #[error("{0}")]
    Unauthorized(String),
    /// The key is valid but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The function is at its instances and its queue is full; it may try
    /// again after `retry_after` seconds.
    #[error("{message}")]
    Busy {
        /// What is full.
        message: String,
        /// Seconds until a retry may find room.
        retry_after: u64,
    },
    /// The tenant is over a rate quota; it may try again after `retry_after`.
    #[error("{message}")]
    RateLimited {
        /// Which quota.
        message: String,
        /// Seconds until a retry can succeed.
        retry_after: u64,
    },
    /// It exists already, and the request may only create it.
    #[error("{0}")]
    Conflict(String),
    /// The tenant is over a count quota (functions, secrets).
    #[error("{0}")]
    QuotaExceeded(String),
    /// The tenant would store more code and dependencies than its quota.
    #[error("{0}")]
    StorageQuota(String),
    /// Something on our side broke.
    #[error("internal error: {0}")]
    Internal(String),
}

impl OrchestratorError {
    /// Whether this is a policy's refusal (a scope, a quota, a rate), which
    /// the audit log records.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            OrchestratorError::Forbidden(_)
                | OrchestratorError::RateLimited { .. }
                | OrchestratorError::QuotaExceeded(_)
                | OrchestratorError::StorageQuota(_)
        )
    }
}

impl From<rusqlite::Error> for OrchestratorError {
    fn from(e: rusqlite::Error) -> Self {
        OrchestratorError::Internal(format!("database: {e}"))
    }
}

impl From<serde_json::Error> for OrchestratorError {
    fn from(e: serde_json::Error) -> Self {
        OrchestratorError::Internal(format!("stored record: {e}"))
    }
}
