//! Function code and dependencies reach a guest as read-only ext4 disks, built
//! once per content (`<cache>/<label>-<sha256 of the tree>.ext4`) and shared by
//! every VM that runs that code; the root disk is never rebuilt per function.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ExecutorError;

/// The cached disk image of `src`, built with `mke2fs -d` if it is not there yet.
pub async fn disk_for(cache: &Path, src: &Path, label: &str) -> Result<PathBuf, ExecutorError> {
    let src2 = src.to_path_buf();
    let hash = tokio::task::spawn_blocking(move || tree_hash(&src2))
        .await
        .map_err(|e| ExecutorError::Start(format!("hashing task: {e}")))?
        .map_err(ExecutorError::io(format!("hashing {}", src.display())))?;
    let path = cache.join(format!("{label}-{}.ext4", &hash[..24]));
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok(path);
    }
    tokio::fs::create_dir_all(cache)
        .await
        .map_err(ExecutorError::io(format!("create {}", cache.display())))?;
    // Built aside and renamed: a concurrent builder of the same tree loses the
    // race harmlessly, and a reader never sees a half-written disk.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{label}-"))
        .suffix(".ext4")
        .tempfile_in(cache)
        .map_err(ExecutorError::io("create a temporary disk"))?;
    faas_images::microvm::make_ext4(src, tmp.path(), label)
        .await
        .map_err(|e| ExecutorError::Start(format!("building the {label} disk: {e}")))?;
    let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644));
    tmp.persist(&path)
        .map_err(|e| ExecutorError::io(format!("store {}", path.display()))(e.error))?;
    Ok(path)
}

/// sha256 over every entry's relative path, type, mode, and content (or link target).
fn tree_hash(root: &Path) -> std::io::Result<String> {
    let mut entries = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if std::fs::symlink_metadata(&p)?.is_dir() {
                stack.push(p.clone());
            }
            entries.push(p);
        }
    }
    entries.sort();
    let mut h = Sha256::new();
    for p in entries {
        let meta = std::fs::symlink_metadata(&p)?;
        let rel = p.strip_prefix(root).unwrap_or(&p);
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(meta.mode().to_le_bytes());
        if meta.is_file() {
            h.update(Sha256::digest(std::fs::read(&p)?));
        } else if meta.file_type().is_symlink() {
            h.update(std::fs::read_link(&p)?.as_os_str().as_encoded_bytes());
        }
        h.update([0xff]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_hash_follows_content_and_names() {
        let a = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("x.py"), "1").unwrap();
        let h1 = tree_hash(a.path()).unwrap();
        assert_eq!(h1, tree_hash(a.path()).unwrap());
        std::fs::write(a.path().join("x.py"), "2").unwrap();
        let h2 = tree_hash(a.path()).unwrap();
        assert_ne!(h1, h2);
        std::fs::rename(a.path().join("x.py"), a.path().join("y.py")).unwrap();
        assert_ne!(h2, tree_hash(a.path()).unwrap());
    }
}
