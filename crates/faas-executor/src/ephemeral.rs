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
use std::sync::Arc;

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
/// mounted at `<dir>/<id>/`, each a copy of `<dir>/template-<size>.ext4`
/// (made with [`make_image`] the first time a size is asked for; a cache of
/// this run, removed with the rest by [`EphemeralDisks::sweep`]).
#[derive(Debug, Clone)]
pub struct EphemeralDisks {
    dir: PathBuf,
    /// Serialises making templates (once per size), so one is never read
    /// half-made.
    making: Arc<tokio::sync::Mutex<()>>,
}

impl EphemeralDisks {
    /// Disks kept in `dir` (made when the first one is).
    pub fn new(dir: PathBuf) -> EphemeralDisks {
        EphemeralDisks {
            dir,
            making: Arc::default(),
        }
    }

    /// A new, empty, mounted disk of `size_mb` MiB for instance `id`, its
    /// root world-writable and sticky, as `/tmp` is.
    pub async fn mounted(&self, id: &str, size_mb: u32) -> Result<EphemeralDisk, ExecutorError> {
        let template = self.template(size_mb).await?;
        // The owner exists before the file: every early return removes what
        // was made. It moves into the blocking task, so a caller that gives
        // up waiting still has it dropped (and the mount undone) there.
        let disk = EphemeralDisk {
            image: self.dir.join(format!("{id}.ext4")),
            mount: Some(self.dir.join(id)),
        };
        tokio::task::spawn_blocking(move || {
            let point = disk.path().to_path_buf();
            // A copy and a mount in-process take ~1 ms; `mke2fs` and
            // `mount -o loop` as commands took ~20 ms of every cold start.
            copy_sparse(&template, &disk.image)
                .map_err(ExecutorError::io("copy the ephemeral storage template"))?;
            std::fs::create_dir(&point)
                .map_err(ExecutorError::io(format!("create {}", point.display())))?;
            mount_loop(&disk.image, &point).map_err(|e| {
                ExecutorError::Start(format!("cannot mount the ephemeral storage: {e}"))
            })?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&point, std::fs::Permissions::from_mode(0o1777))
                .map_err(ExecutorError::io("make the ephemeral storage writable"))?;
            // An empty /tmp, as the function would find a tmpfs.
            let _ = std::fs::remove_dir(point.join("lost+found"));
            Ok(disk)
        })
        .await
        .map_err(|e| ExecutorError::Start(format!("ephemeral storage task: {e}")))?
    }

    /// The empty filesystem of `size_mb` MiB every disk of that size copies.
    async fn template(&self, size_mb: u32) -> Result<PathBuf, ExecutorError> {
        let path = self.dir.join(format!("template-{size_mb}.ext4"));
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let _making = self.making.lock().await;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(ExecutorError::io(format!("create {}", self.dir.display())))?;
        // Made aside and renamed: a template is whole or absent.
        let aside = self.dir.join(format!(".template-{size_mb}.ext4"));
        let _ = tokio::fs::remove_file(&aside).await;
        make_image(&aside, size_mb, faas_common::contract::TMP_DISK_LABEL).await?;
        tokio::fs::rename(&aside, &path)
            .await
            .map_err(ExecutorError::io(format!("store {}", path.display())))?;
        Ok(path)
    }

    /// Unmount and remove every disk and template (at start, after a crash;
    /// at shutdown, after the last instance). Returns how many were mounted.
    pub fn sweep(&self) -> usize {
        let points = crate::views::mount_points_under(&self.dir);
        for point in &points {
            crate::mounts::unmount(point);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        points.len()
    }
}

/// One instance's disk, mounted on the host; dropping it unmounts it (which
/// frees its loop device) and deletes it. Drop it only once nothing in the
/// instance runs any more, and off the async threads (`umount2` may wait).
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
            crate::mounts::unmount(&point);
            let _ = std::fs::remove_dir(&point);
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Copy `from` to a new file `to` of the same length, writing only its data
/// (`SEEK_DATA`/`SEEK_HOLE`): the holes stay holes, so an empty disk of any
/// size copies in its few hundred KiB of metadata.
pub(crate) fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(from)?;
    let len = src.metadata()?.len();
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    dst.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: libc::off_t = 0;
    loop {
        // SAFETY: lseek(2) on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(src.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data past `pos`.
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (mut at, end) = (data as u64, hole as u64);
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at)?;
            dst.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        pos = hole;
    }
}

/// `LOOP_CTL_GET_FREE` (`<linux/loop.h>`).
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// `LOOP_CONFIGURE`: attach and configure in one call (Linux 5.8).
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
/// The device detaches itself when its last user (the mount) is gone.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Mount the ext4 filesystem in `image` at `point` (`nosuid,nodev,noatime`)
/// through a free loop device set to detach itself once unmounted, as
/// `mount -o loop` does, without its process.
fn mount_loop(image: &Path, point: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)?;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    for _ in 0..16 {
        // SAFETY: an ioctl without argument on a descriptor we own.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let name = format!("/dev/loop{n}");
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&name)?;
        // SAFETY: all-zero is a valid `loop_config` (plain integers and arrays).
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = file.as_raw_fd() as u32;
        config.info.flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: `config` is a valid `struct loop_config` that outlives the call.
        if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                // Another process took it between the two calls.
                continue;
            }
            return Err(e);
        }
        // `device` stays open until the mount holds the loop device: closed
        // before, autoclear would detach it; closed after, it is the mount's.
        return mount_ext4(&name, point);
    }
    Err(std::io::Error::other("no free loop device"))
}

fn mount_ext4(device: &str, point: &Path) -> std::io::Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    // `noinit_itable`: the inode tables are sparse zeros already; zeroing
    // them would fill the file.
    crate::mounts::mount(device, point, "ext4", flags, "noinit_itable")
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

    #[test]
    fn a_sparse_copy_keeps_data_and_holes() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        let f = std::fs::File::create(&from).unwrap();
        f.set_len(256 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 100 << 20).unwrap();
        copy_sparse(&from, &to).unwrap();
        assert_eq!(std::fs::read(&from).unwrap(), std::fs::read(&to).unwrap());
        let meta = std::fs::metadata(&to).unwrap();
        assert_eq!(meta.len(), 256 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        // The copy never overwrites.
        assert!(copy_sparse(&from, &to).is_err());
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
        let loops = || {
            let out = std::process::Command::new("losetup").arg("-a").output();
            String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
        };
        assert!(loops().contains("t1.ext4"), "{}", loops());
        drop(disk);
        assert!(!mountinfo().contains(&*point.to_string_lossy()));
        assert!(!loops().contains("t1.ext4"), "{}", loops());
        let left: Vec<String> = std::fs::read_dir(dir.path().join("eph"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["template-100.ext4"]);
        // A second disk of the size copies the template; the sweep takes all.
        let again = disks.mounted("t2", 100).await.unwrap();
        let point = again.path().to_path_buf();
        std::mem::forget(again);
        assert_eq!(disks.sweep(), 1);
        assert!(!mountinfo().contains(&*point.to_string_lossy()));
        assert!(!dir.path().join("eph").exists());
    }

    /// What a disk adds to a cold start (docs/benchmarks.md):
    /// `cargo test -p faas-executor --lib ephemeral::tests::cost -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn cost_of_a_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disks = EphemeralDisks::new(dir.path().join("eph"));
        for mb in [512, 10_240] {
            let started = std::time::Instant::now();
            drop(disks.mounted("first", mb).await.unwrap());
            let first = started.elapsed();
            let (mut up, mut down) = (Vec::new(), Vec::new());
            for i in 0..50 {
                let started = std::time::Instant::now();
                let disk = disks.mounted(&format!("d{i}"), mb).await.unwrap();
                up.push(started.elapsed());
                let started = std::time::Instant::now();
                drop(disk);
                down.push(started.elapsed());
            }
            up.sort();
            down.sort();
            println!(
                "{mb} MiB: first (template) {first:?}; ready p50 {:?} p90 {:?}; removed p50 {:?} p90 {:?}",
                up[25], up[45], down[25], down[45]
            );
        }
        disks.sweep();
    }
}
