//! Per-instance ephemeral storage: the `/tmp` a function asks for with
//! `ephemeral_mb`.
//!
//! Up to [`TMPFS_MAX_MB`] it is a tmpfs, as it always was: charged to the
//! instance's memory, and that small it costs little. Above, it is a disk of
//! the instance's own, so a large `/tmp` never takes memory: a sparse file
//! made an ext4 filesystem (`mke2fs`, no journal, no reserved blocks; a few
//! milliseconds, since nothing but the metadata is written). Container
//! sandboxes loop-mount it on the host ([`EphemeralDisk`]) and bind that
//! into the instance; microVMs attach the file as a writable drive.
//!
//! The size is the filesystem's, so a full `/tmp` is `ENOSPC` for the
//! function and nothing else. A directory on a quota-limited filesystem
//! would spare the loop device, but XFS project quotas (or any quota) are
//! not available on the node's filesystem, and a tmpfs that is not charged
//! to memory does not exist.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::ExecutorError;
pub use faas_common::contract::TMPFS_MAX_MB;

/// How an instance's `/tmp` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmpKind {
    /// A tmpfs of this many MiB.
    Memory(u32),
    /// A disk of this many MiB.
    Disk(u32),
}

impl TmpKind {
    /// The kind for `ephemeral_mb`, where ephemeral storage up to
    /// `tmpfs_max_mb` stays in memory.
    pub fn of(ephemeral_mb: u32, tmpfs_max_mb: u32) -> TmpKind {
        if ephemeral_mb <= tmpfs_max_mb {
            TmpKind::Memory(ephemeral_mb)
        } else {
            TmpKind::Disk(ephemeral_mb)
        }
    }
}

/// Make `path` an empty ext4 filesystem of `size_mb` MiB labelled `label`,
/// as a sparse file: only its metadata takes space.
pub async fn make_image(path: &Path, size_mb: u32, label: &str) -> Result<(), ExecutorError> {
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-m", "0", "-L", label])
        // 4 KiB blocks and an inode per 16 KiB at every size (mke2fs would
        // pick 1 KiB blocks and an inode per 4 KiB below 512 MiB, ~7% of
        // the size in metadata); no room reserved for growing (it never
        // grows). So `df` shows ~98% of the size asked for.
        .args(["-b", "4096", "-i", "16384"])
        // No journal: the filesystem dies with its instance, so crash
        // consistency buys nothing. Inode tables stay uninitialised (the
        // sparse file reads as zeros) and are never zeroed (`noinit_itable`
        // at mount): writing them out would fill the file up front.
        .args(["-O", "^has_journal,^resize_inode"])
        .args(["-E", "lazy_itable_init=1,nodiscard"])
        .arg(path)
        .arg(format!("{size_mb}M"))
        .output()
        .await
        .map_err(|e| {
            ExecutorError::Start(format!(
                "cannot run mke2fs ({e}); install it with `apt-get install e2fsprogs`"
            ))
        })?;
    if !out.status.success() {
        return Err(ExecutorError::Start(format!(
            "cannot make the ephemeral storage: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Where one sandbox kind keeps its instances' disks: `<dir>/<id>.ext4`,
/// mounted at `<dir>/<id>/`.
#[derive(Debug, Clone)]
pub struct EphemeralDisks {
    dir: PathBuf,
}

impl EphemeralDisks {
    /// Disks kept in `dir` (made when the first one is).
    pub fn new(dir: PathBuf) -> EphemeralDisks {
        EphemeralDisks { dir }
    }

    /// A new, empty, mounted disk of `size_mb` MiB for instance `id`, its
    /// root world-writable and sticky, as `/tmp` is.
    pub async fn mounted(&self, id: &str, size_mb: u32) -> Result<EphemeralDisk, ExecutorError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(ExecutorError::io(format!("create {}", self.dir.display())))?;
        // The owner exists before the file: every early return removes it.
        let mut disk = EphemeralDisk {
            image: self.dir.join(format!("{id}.ext4")),
            mount: None,
        };
        make_image(&disk.image, size_mb, faas_common::contract::TMP_DISK_LABEL).await?;
        let point = self.dir.join(id);
        tokio::fs::create_dir_all(&point)
            .await
            .map_err(ExecutorError::io(format!("create {}", point.display())))?;
        disk.mount = Some(point.clone());
        // `mount -o loop` sets the loop device to detach itself when the
        // filesystem is unmounted: the mount is the only thing to undo.
        let out = Command::new("mount")
            .args([
                "-t",
                "ext4",
                "-o",
                "loop,nosuid,nodev,noatime,noinit_itable",
            ])
            .arg(&disk.image)
            .arg(&point)
            .output()
            .await
            .map_err(ExecutorError::io("run mount"))?;
        if !out.status.success() {
            return Err(ExecutorError::Start(format!(
                "cannot mount the ephemeral storage: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(&point, std::fs::Permissions::from_mode(0o1777))
            .await
            .map_err(ExecutorError::io("make the ephemeral storage writable"))?;
        // An empty /tmp, as the function would find a tmpfs.
        let _ = tokio::fs::remove_dir(point.join("lost+found")).await;
        Ok(disk)
    }

    /// Unmount and remove every disk (at start, after a crash; at shutdown,
    /// after the last instance). Returns how many were mounted.
    pub fn sweep(&self) -> usize {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut n = 0;
        for line in info.lines() {
            let Some(point) = line.split_whitespace().nth(4) else {
                continue;
            };
            if Path::new(point).starts_with(&self.dir) {
                unmount(Path::new(point));
                n += 1;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        n
    }
}

/// One instance's disk, mounted on the host; dropping it unmounts it (which
/// frees its loop device) and deletes it. Drop it only once nothing in the
/// instance runs any more, and off the async threads (it waits for `umount`).
#[derive(Debug)]
pub struct EphemeralDisk {
    image: PathBuf,
    mount: Option<PathBuf>,
}

impl EphemeralDisk {
    /// The mount point, to bind at the instance's `/tmp`.
    pub fn path(&self) -> &Path {
        self.mount.as_deref().unwrap_or(&self.image)
    }
}

impl Drop for EphemeralDisk {
    fn drop(&mut self) {
        if let Some(point) = self.mount.take() {
            unmount(&point);
            let _ = std::fs::remove_dir(&point);
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Unmount `point` if something is mounted there; lazily if it is busy (a
/// process of the instance still dying), so the host never keeps it.
fn unmount(point: &Path) {
    let status = std::process::Command::new("umount")
        .arg(point)
        .stderr(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(point)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_storage_stays_in_memory() {
        assert_eq!(TmpKind::of(64, 64), TmpKind::Memory(64));
        assert_eq!(TmpKind::of(65, 64), TmpKind::Disk(65));
        assert_eq!(TmpKind::of(512, TMPFS_MAX_MB), TmpKind::Disk(512));
    }

    #[tokio::test]
    async fn an_image_is_sparse_and_labelled() {
        if std::process::Command::new("mke2fs")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("skipped: no mke2fs");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("t.ext4");
        make_image(&image, 1024, "faas-tmp").await.unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&image).unwrap();
        assert_eq!(meta.len(), 1024 * 1024 * 1024);
        // Metadata only: far below the size.
        assert!(
            meta.blocks() * 512 < 16 * 1024 * 1024,
            "{} blocks",
            meta.blocks()
        );
        let sb = std::fs::read(&image).unwrap();
        assert_eq!(&sb[1024 + 0x78..1024 + 0x80], b"faas-tmp");
    }

    #[tokio::test]
    async fn a_disk_is_gone_when_dropped() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disks = EphemeralDisks::new(dir.path().join("eph"));
        let disk = disks.mounted("t1", 100).await.unwrap();
        let point = disk.path().to_path_buf();
        let mountinfo = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mountinfo().contains(&*point.to_string_lossy()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&point).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777);
        assert_eq!(std::fs::read_dir(&point).unwrap().count(), 0);
        drop(disk);
        assert!(!mountinfo().contains(&*point.to_string_lossy()));
        assert_eq!(
            std::fs::read_dir(dir.path().join("eph")).unwrap().count(),
            0
        );
        assert_eq!(disks.sweep(), 0);
    }
}
