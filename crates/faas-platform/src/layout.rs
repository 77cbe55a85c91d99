//! Every path under a node's data directory.

use std::path::{Path, PathBuf};

/// The layout of one data directory:
///
/// ```text
/// <data>/state.db               functions, versions, invocation records (SQLite)
/// <data>/code/<sha256>/         code trees, content-addressed
/// <data>/deps/<sha256>/         dependency layers, content-addressed
/// <data>/run/runc/              runc state of function instances
/// <data>/run/instances/<id>/    their bundles (config.json, agent socket)
/// <data>/run/build-runc/        runc state of build sandboxes
/// <data>/run/build/<id>/        their bundles
/// <data>/run/docker/<name>/     agent sockets of Docker containers
/// <data>/run/microvm/<id>/      VM directories (sockets, console log)
/// <data>/run/microvm-snapshots/ saved VM states
/// <data>/microvm-disks/         per-function code and dependency disks
/// <data>/views/                 images of code and dependency views (containers)
/// <data>/run/views/<kind>/      where those views are mounted
/// <data>/run/ephemeral/<kind>/  instances' /tmp disks (<id>.ext4, mounted at <id>/)
///
/// /run/faas/sockets/<owner>/<kind>/<id>/   agent sockets of container instances
/// ```
///
/// The socket directories live outside the data directory: a container sees
/// the origin of its bind mounts in `/proc/self/mountinfo`, and must not learn
/// where the platform keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLayout {
    root: PathBuf,
}

impl DataLayout {
    /// The layout under `root` (an absolute path).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataLayout { root: root.into() }
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// runc state of function instances.
    pub fn runc_state(&self) -> PathBuf {
        self.root.join("run/runc")
    }

    /// Bundles of function instances.
    pub fn instances(&self) -> PathBuf {
        self.root.join("run/instances")
    }

    /// runc state of build sandboxes.
    pub fn build_state(&self) -> PathBuf {
        self.root.join("run/build-runc")
    }

    /// Bundles of build sandboxes.
    pub fn build_bundles(&self) -> PathBuf {
        self.root.join("run/build")
    }

    /// VM directories.
    pub fn microvm_run(&self) -> PathBuf {
        self.root.join("run/microvm")
    }

    /// Saved VM states.
    pub fn microvm_snapshots(&self) -> PathBuf {
        self.root.join("run/microvm-snapshots")
    }

    /// Per-function microVM disks.
    pub fn microvm_disks(&self) -> PathBuf {
        self.root.join("microvm-disks")
    }

    /// Agent socket directories of `kind`'s instances.
    pub fn sockets(&self, kind: &str) -> PathBuf {
        PathBuf::from("/run/faas/sockets")
            .join(self.owner_label())
            .join(kind)
    }

    /// Images of code and dependency views.
    pub fn views(&self) -> PathBuf {
        self.root.join("views")
    }

    /// Where `kind`'s views are mounted.
    pub fn view_mounts(&self, kind: &str) -> PathBuf {
        self.root.join("run/views").join(kind)
    }

    /// Where `kind`'s instances keep their `/tmp` disks.
    pub fn ephemeral(&self, kind: &str) -> PathBuf {
        self.root.join("run/ephemeral").join(kind)
    }

    /// Where pre-started instances' code and dependency slots are mounted.
    pub fn spare_slots(&self, kind: &str) -> PathBuf {
        self.root.join("run/spares").join(kind)
    }

    /// The `faas.owner` label of this node's Docker containers: a digest of
    /// the data directory, so nodes sharing a daemon never remove each
    /// other's containers.
    pub fn owner_label(&self) -> String {
        owner_label(&self.root)
    }
}

/// [`DataLayout::owner_label`] of `data_dir`.
pub fn owner_label(data_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(data_dir.to_string_lossy().as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_owner_label() {
        let l = DataLayout::new("/var/lib/faas");
        assert_eq!(l.runc_state(), Path::new("/var/lib/faas/run/runc"));
        assert_eq!(l.microvm_disks(), Path::new("/var/lib/faas/microvm-disks"));
        assert_eq!(l.owner_label().len(), 16);
        assert_ne!(l.owner_label(), DataLayout::new("/srv/faas").owner_label());
    }
}
