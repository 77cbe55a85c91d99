//! Content-addressed storage of code trees: `<root>/<sha256>/`.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::tree::CodeTree;
use crate::write::{drop_thread_privileges, write_tree};
use crate::ArchiveError;

/// Prefix of a tree being written; never a content address.
const TMP_PREFIX: &str = ".tmp-";

/// The trees under one directory.
#[derive(Debug, Clone)]
pub struct CodeStore {
    root: PathBuf,
    writer_uid: Option<u32>,
}

impl CodeStore {
    /// Trees live under `root`. When the process is root, `writer_uid` (an
    /// unprivileged id that is no one's account) does the writing, so even a
    /// bug in the writer could touch only what that id may.
    pub fn new(root: impl Into<PathBuf>, writer_uid: Option<u32>) -> Self {
        CodeStore {
            root: root.into(),
            writer_uid,
        }
    }

    /// The directory holding every tree.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where tree `sha` is (or would be).
    pub fn path(&self, sha: &str) -> PathBuf {
        self.root.join(sha)
    }

    /// Write `tree` unless an identical one is stored; returns its address and
    /// directory. Blocking: run it off the async threads.
    pub fn store(&self, tree: &CodeTree) -> Result<(String, PathBuf), ArchiveError> {
        let sha = tree.sha256();
        let dest = self.path(&sha);
        if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            return Ok((sha, dest));
        }
        std::fs::create_dir_all(&self.root)
            .map_err(ArchiveError::io(format!("create {}", self.root.display())))?;
        let tmp = self
            .root
            .join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&tmp).map_err(ArchiveError::io("create code temp dir"))?;
        let written = self.write_as_writer(tree, &tmp).and_then(|()| {
            std::fs::rename(&tmp, &dest).or_else(|e| {
                // Another deploy of the same code won the race: theirs is identical.
                if dest.is_dir() {
                    Ok(())
                } else {
                    Err(ArchiveError::io("store code")(e))
                }
            })
        });
        if std::fs::symlink_metadata(&tmp).is_ok() {
            // remove_dir_all never follows links.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        written.map(|()| (sha, dest))
    }

    fn write_as_writer(&self, tree: &CodeTree, dir: &Path) -> Result<(), ArchiveError> {
        // SAFETY: geteuid has no preconditions.
        let uid = self.writer_uid.filter(|_| unsafe { libc::geteuid() } == 0);
        let Some(uid) = uid else {
            return write_tree(tree, dir);
        };
        std::os::unix::fs::chown(dir, Some(uid), Some(uid))
            .map_err(ArchiveError::io("chown code temp dir"))?;
        // A thread of its own gives up root; it ends when the tree is written.
        std::thread::scope(|s| {
            s.spawn(|| {
                drop_thread_privileges(uid)
                    .map_err(ArchiveError::io(format!("become uid {uid} to write code")))?;
                write_tree(tree, dir)
            })
            .join()
            .unwrap_or_else(|_| Err(ArchiveError::invalid("code writer panicked")))
        })
    }

    /// Remove every tree whose address is not in `keep`, and what interrupted
    /// writes left; returns how many went. The caller must make sure no store
    /// of a tree it does not yet reference runs meanwhile.
    pub fn collect(&self, keep: &HashSet<String>) -> Result<usize, ArchiveError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(ArchiveError::io(format!("list {}", self.root.display()))(e)),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            let path = entry.path();
            let result = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match result {
                Ok(()) => removed += 1,
                // Retried at the next collection.
                Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
            }
        }
        Ok(removed)
    }

    /// Make the root traversable by sandboxes (they bind trees from it) and
    /// nothing more.
    pub fn prepare(&self) -> Result<(), ArchiveError> {
        std::fs::create_dir_all(&self.root)
            .map_err(ArchiveError::io(format!("create {}", self.root.display())))?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o711))
            .map_err(ArchiveError::io(format!("chmod {}", self.root.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::tar_gz;
    use crate::Limits;

    #[test]
    fn stores_by_content_and_collects_the_unreferenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path().join("code"), Some(65_534));
        let gz = tar_gz(&[
            ("lib/real.py", tar::EntryType::Regular, b"hi", None),
            ("main.py", tar::EntryType::Symlink, b"", Some("lib/real.py")),
            ("empty/", tar::EntryType::Directory, b"", None),
        ]);
        let tree = CodeTree::decode_archive(&gz, Limits::default())
            .unwrap()
            .unwrap();
        let (sha, path) = store.store(&tree).unwrap();
        assert_eq!(std::fs::read(path.join("main.py")).unwrap(), b"hi");
        assert!(path.join("empty").is_dir());
        let mode = std::fs::metadata(path.join("lib/real.py"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let (again, _) = store.store(&tree).unwrap();
        assert_eq!(sha, again);

        let other = CodeTree::from_files([("x.py", "1")], Limits::default()).unwrap();
        let (other_sha, _) = store.store(&other).unwrap();
        std::fs::create_dir(store.root().join(".tmp-leftover")).unwrap();
        let removed = store.collect(&HashSet::from([sha.clone()])).unwrap();
        assert_eq!(removed, 2);
        assert!(store.path(&sha).is_dir());
        assert!(!store.path(&other_sha).exists());
    }

    #[test]
    fn the_writer_never_follows_a_link_on_disk() {
        // Even if a link somehow were on disk where a directory should be, the
        // kernel refuses the walk instead of writing through it.
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let target = dir.path().join("tree");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("a")).unwrap();
        let tree = CodeTree::from_files([("a/evil", "x")], Limits::default()).unwrap();
        let err = write_tree(&tree, &target).unwrap_err();
        assert!(matches!(err, ArchiveError::Io { .. }), "{err}");
        assert!(!outside.join("evil").exists());
    }
}
