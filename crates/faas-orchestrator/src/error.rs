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

/// Every way an orchestrator call can fail; the gateway maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The request is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such function or job binding (404).
    #[error("{0} not found")]
    NotFound(String),
    /// Payload or code over a limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// The function ran and failed (500, or 504 for a timeout).
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
    /// The function requires attested hardware this node cannot prove (412).
    #[error("{0}")]
    Attestation(String),
    /// No capacity to run it now (503).
    #[error("{0}")]
    Unavailable(String),
    /// Something on our side broke (500).
    #[error("internal error: {0}")]
    Internal(String),
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
