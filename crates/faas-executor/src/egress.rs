//! An instance's egress allow-list, as the container sandboxes apply it:
//! names resolved and pinned in a hosts file before the container starts,
//! the link attached once its first process runs (before user code loads).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use faas_common::network::EgressRule;
use faas_netpolicy::{Attachment, Egress, Resolved};

use crate::ExecutorError;

/// An allow-list resolved for one instance, its hosts file written.
pub(crate) struct Prepared {
    enforcer: Arc<Egress>,
    resolved: Resolved,
    /// The instance's `/etc/hosts`, to mount read-only.
    pub(crate) hosts: PathBuf,
}

/// Resolve `rules` (none: `None`, no network) and write the hosts file into
/// `dir`, the instance's own directory.
pub(crate) async fn prepare(
    enforcer: Option<&Arc<Egress>>,
    rules: &[EgressRule],
    dir: &Path,
) -> Result<Option<Prepared>, ExecutorError> {
    if rules.is_empty() {
        return Ok(None);
    }
    let enforcer = enforcer.cloned().ok_or_else(|| {
        ExecutorError::BadRequest("this node cannot enforce egress policies".into())
    })?;
    let resolved = faas_netpolicy::resolve(rules).await?;
    let hosts = dir.join("hosts");
    tokio::fs::write(&hosts, resolved.hosts_file())
        .await
        .map_err(ExecutorError::io("write the hosts file"))?;
    Ok(Some(Prepared {
        enforcer,
        resolved,
        hosts,
    }))
}

impl Prepared {
    /// Open the allow-list to the network namespace of process `pid`.
    pub(crate) async fn attach(&self, pid: u32) -> Result<Attachment, ExecutorError> {
        Ok(self.enforcer.attach(pid, &self.resolved.allowed).await?)
    }
}
