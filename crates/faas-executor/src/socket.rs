//! The host end of a container's agent channel: the host listens, the agent
//! connects.
//!
//! The socket lives in a directory the host owns (mode 0755) that the
//! container sees read-only, so a function can write nothing there; the socket
//! itself belongs to the instance's host uid (mode 0600). The first connection
//! is the agent's (it connects before any function code runs); the listener is
//! closed and the socket removed right after, so nothing else can connect.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use crate::ExecutorError;

/// Name of the socket in its directory.
pub const AGENT_SOCKET: &str = faas_common::contract::AGENT_SOCKET_NAME;

/// A listening agent socket in its own directory.
pub struct AgentListener {
    listener: UnixListener,
    path: PathBuf,
}

impl AgentListener {
    /// Create `dir` (owned by root, mode 0755) and listen on `dir/agent.sock`,
    /// which only `uid` may connect to.
    pub async fn bind(dir: &Path, uid: u32) -> Result<AgentListener, ExecutorError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(ExecutorError::io(format!("create {}", dir.display())))?;
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(ExecutorError::io("chmod socket dir"))?;
        let path = dir.join(AGENT_SOCKET);
        let listener = UnixListener::bind(&path)
            .map_err(ExecutorError::io(format!("listen on {}", path.display())))?;
        std::os::unix::fs::chown(&path, Some(uid), Some(uid))
            .map_err(ExecutorError::io("chown agent socket"))?;
        tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(ExecutorError::io("chmod agent socket"))?;
        Ok(AgentListener { listener, path })
    }

    /// Wait up to `timeout` for the agent to connect. `exited` resolves (with
    /// what the sandbox said) when the sandbox dies first; `diagnose` says
    /// what it reports when the time is up.
    pub async fn accept<D: Future<Output = String>>(
        self,
        timeout: Duration,
        exited: impl Future<Output = String>,
        diagnose: impl FnOnce() -> D,
    ) -> Result<UnixStream, ExecutorError> {
        let result = tokio::select! {
            accepted = self.listener.accept() => {
                accepted.map(|(s, _)| s).map_err(ExecutorError::io("accept the agent"))
            }
            why = exited => Err(ExecutorError::Start(format!("sandbox exited during start: {why}"))),
            () = tokio::time::sleep(timeout) => Err(ExecutorError::Start(format!(
                "agent did not connect within {timeout:?}: {}",
                diagnose().await
            ))),
        };
        // Nobody else gets to connect.
        let _ = tokio::fs::remove_file(&self.path).await;
        result
    }
}

/// Remove an (empty) sockets directory and its parent if that is empty too
/// (the per-server directory, shared by the sandbox kinds).
pub async fn remove_dirs(dir: &Path) {
    let _ = tokio::fs::remove_dir(dir).await;
    if let Some(parent) = dir.parent() {
        let _ = tokio::fs::remove_dir(parent).await;
    }
}
