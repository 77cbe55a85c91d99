//! The guest side of microVM sandboxes, shared by Firecracker and QEMU `microvm`:
//!
//! - a **guest kernel**: the uncompressed `vmlinux` of Debian's
//!   `linux-image-cloud-amd64` (it carries a PVH note, so both VMMs boot it
//!   directly) and an **initramfs** (busybox from `busybox-static`, the virtio
//!   and vsock modules, and an `/init` that loads them, mounts the root disk
//!   read-only and `switch_root`s into the guest agent);
//! - one **root disk** per runtime image: an ext4 image (`mke2fs -d`) of the
//!   image's root filesystem, labelled [`ROOT_LABEL`].
//!
//! Cache layout under the images directory:
//!
//! ```text
//! <dir>/microvm/.lock                         flock held while building
//! <dir>/microvm/kernel-<hash16>/vmlinux        uncompressed kernel
//! <dir>/microvm/kernel-<hash16>/initramfs.cpio cpio (newc), uncompressed
//! <dir>/microvm/kernel-<hash16>/kernel.json    manifest (packages, release)
//! <dir>/microvm/<lang>-<hash16>.ext4           root disk of one runtime image
//! ```
//!
//! The kernel hash covers this recipe (package names, module list, `/init`),
//! not the package version: a cached kernel is reused offline, and `force`
//! fetches the current one. The disk hash covers the runtime image's hash and
//! the disk recipe, so a new agent or bootstrap makes a new disk.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::builder::{self, Progress};
use crate::error::{ImageError, IoContext};
use crate::recipe::{sha256_hex, short};
use crate::{ImageStore, RuntimeImage};

/// Debian metapackage the guest kernel comes from.
pub const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
/// Debian package the initramfs takes its (static) busybox from.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Kernel modules `/init` loads, in this order (each after its dependencies;
/// the cloud kernel builds all of them as modules).
pub const MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

/// ext4 label of the root disk; `/init` finds it by label because virtio-mmio
/// probe order differs between VMMs.
pub const ROOT_LABEL: &str = "faas-root";
/// ext4 label of a function's code disk (mounted at `/var/task`).
pub const CODE_LABEL: &str = "faas-code";
/// ext4 label of a function's dependency disk (mounted at `/opt/faas/deps`).
pub const DEPS_LABEL: &str = "faas-deps";

/// Bump to rebuild every guest kernel + initramfs.
const KERNEL_RECIPE_VERSION: u32 = 1;
/// Bump to rebuild every root disk.
const DISK_RECIPE_VERSION: u32 = 1;

/// The initramfs `/init`. Module parameters given on the kernel command line
/// (Firecracker passes `virtio_mmio.device=...` there) only reach built-in
/// drivers, so they are handed to `insmod` explicitly.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t devtmpfs devtmpfs /dev
$B mount -t proc proc /proc
mmio=""
for arg in $($B cat /proc/cmdline); do
    case "$arg" in
        virtio_mmio.device=*) mmio="$mmio device=${arg#virtio_mmio.device=}" ;;
    esac
done
for m in @MODULES@; do
    if [ "$m" = virtio_mmio ]; then
        $B insmod /lib/modules/$m.ko $mmio || echo "faas-init: insmod $m failed"
    else
        $B insmod /lib/modules/$m.ko || echo "faas-init: insmod $m failed"
    fi
done
root=""
for _ in $($B seq 1 200); do
    root=$($B findfs LABEL=@ROOT@ 2>/dev/null) && break
    $B usleep 10000
done
if [ -z "$root" ]; then
    echo "faas-init: no disk labelled @ROOT@"
    $B poweroff -f
fi
$B mount -t ext4 -o ro,noatime "$root" /newroot || $B poweroff -f
$B umount /proc
$B mount --move /dev /newroot/dev
exec $B switch_root /newroot /opt/faas/bin/faas-guest-agent --init --listen vsock:1234
"#;

/// What can go wrong building microVM guest artefacts.
#[derive(Debug, thiserror::Error)]
pub enum MicrovmImageError {
    /// The kernel package is not what this recipe expects.
    #[error("guest kernel: {0}")]
    Kernel(String),
    /// A host tool is missing.
    #[error("{tool} is not installed (apt-get install {package})")]
    ToolMissing {
        /// The program.
        tool: &'static str,
        /// The Debian package providing it.
        package: &'static str,
    },
    /// A host tool failed.
    #[error("{what} failed ({status}): {output}")]
    Tool {
        /// The command.
        what: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        output: String,
    },
    /// Filesystem, lock or task failures shared with the runtime image builder.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// A guest kernel and its initramfs, ready to boot.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// Uncompressed kernel (ELF with a PVH note).
    pub vmlinux: PathBuf,
    /// Initramfs (cpio newc, uncompressed).
    pub initramfs: PathBuf,
    /// Kernel release (`uname -r` in the guest), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// Short recipe hash naming the directory.
    pub hash: String,
}

/// A root disk for one runtime image.
#[derive(Debug, Clone)]
pub struct GuestDisk {
    /// The ext4 image, attached read-only by every VM of this runtime.
    pub path: PathBuf,
    /// Short hash naming the file.
    pub hash: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KernelManifest {
    release: String,
    packages: Vec<String>,
    recipe_version: u32,
}

fn kernel_recipe_hash() -> String {
    let mut h = Sha256::new();
    for part in [
        KERNEL_RECIPE_VERSION.to_string().as_str(),
        KERNEL_PACKAGE,
        BUSYBOX_PACKAGE,
        &MODULES.join(","),
        INIT_SCRIPT,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

fn disk_hash(image: &RuntimeImage) -> String {
    sha256_hex(format!("disk-v{DISK_RECIPE_VERSION}:{ROOT_LABEL}:{}", image.hash).as_bytes())
}

fn init_script() -> String {
    INIT_SCRIPT
        .replace("@MODULES@", &MODULES.join(" "))
        .replace("@ROOT@", ROOT_LABEL)
}

impl ImageStore {
    pub(crate) fn microvm_dir(&self) -> PathBuf {
        self.dir().join("microvm")
    }

    /// The guest kernel if it is already built (never builds).
    pub async fn find_guest_kernel(&self) -> Result<Option<GuestKernel>, MicrovmImageError> {
        let dir = self
            .microvm_dir()
            .join(format!("kernel-{}", short(&kernel_recipe_hash())));
        let manifest = dir.join("kernel.json");
        let bytes = match tokio::fs::read(&manifest).await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ImageError::io(format!("reading {}", manifest.display()), e).into())
            }
        };
        let m: KernelManifest =
            serde_json::from_slice(&bytes).map_err(|source| ImageError::Manifest {
                path: manifest.clone(),
                source,
            })?;
        Ok(Some(GuestKernel {
            vmlinux: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.cpio"),
            release: m.release,
            hash: short(&kernel_recipe_hash()).to_string(),
        }))
    }

    /// Builds the guest kernel and initramfs, or reuses the cached ones.
    ///
    /// Needs `apt-get` (with package lists) and `dpkg`; not root itself, but
    /// `apt-get download` is quieter as root.
    pub async fn ensure_guest_kernel(
        &self,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<GuestKernel, MicrovmImageError> {
        if !force {
            if let Some(k) = self.find_guest_kernel().await? {
                progress(&format!(
                    "microvm: guest kernel cached at {}",
                    k.vmlinux.display()
                ));
                return Ok(k);
            }
        }
        let _lock = self.microvm_lock(progress).await?;
        if !force {
            if let Some(k) = self.find_guest_kernel().await? {
                return Ok(k);
            }
        }
        let hash = kernel_recipe_hash();
        let final_dir = self.microvm_dir().join(format!("kernel-{}", short(&hash)));
        let staging = tempfile::Builder::new()
            .prefix(".build-kernel-")
            .tempdir_in(self.microvm_dir())
            .ctx(|| {
                format!(
                    "creating a temporary directory in {}",
                    self.microvm_dir().display()
                )
            })?;
        let debs = staging.path().join("debs");
        std::fs::create_dir(&debs).ctx(|| format!("creating {}", debs.display()))?;
        progress(&format!(
            "microvm: downloading {KERNEL_PACKAGE} and {BUSYBOX_PACKAGE}..."
        ));
        apt_download(&debs, &[KERNEL_PACKAGE, BUSYBOX_PACKAGE]).await?;
        // The metapackage only depends on the versioned kernel package.
        let meta = find_deb(&debs, KERNEL_PACKAGE)?;
        let real = kernel_dependency(&meta).await?;
        apt_download(&debs, &[real.as_str()]).await?;
        let tree = staging.path().join("x");
        let mut packages = Vec::new();
        for deb in std::fs::read_dir(&debs).ctx(|| format!("listing {}", debs.display()))? {
            let deb = deb.ctx(|| format!("listing {}", debs.display()))?.path();
            packages.push(
                deb.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
            run("dpkg", &[Path::new("-x"), &deb, &tree]).await?;
        }
        packages.sort();
        let out_dir = staging.path().join("out");
        std::fs::create_dir(&out_dir).ctx(|| format!("creating {}", out_dir.display()))?;
        let (tree2, out2) = (tree.clone(), out_dir.clone());
        let release = tokio::task::spawn_blocking(move || assemble_kernel(&tree2, &out2))
            .await
            .map_err(ImageError::from)??;
        let manifest = KernelManifest {
            release: release.clone(),
            packages,
            recipe_version: KERNEL_RECIPE_VERSION,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|source| ImageError::Manifest {
            path: out_dir.join("kernel.json"),
            source,
        })?;
        std::fs::write(out_dir.join("kernel.json"), json).ctx(|| "writing kernel.json")?;
        builder::set_mode(&out_dir, 0o755)?;
        replace_into_place(&out_dir, &final_dir, self)?;
        progress(&format!(
            "microvm: guest kernel {release} ready at {}",
            final_dir.display()
        ));
        Ok(GuestKernel {
            vmlinux: final_dir.join("vmlinux"),
            initramfs: final_dir.join("initramfs.cpio"),
            release,
            hash: short(&hash).to_string(),
        })
    }

    /// The root disk of `image` if it is already built (never builds).
    pub fn find_guest_disk(&self, image: &RuntimeImage) -> Option<GuestDisk> {
        let hash = short(&disk_hash(image)).to_string();
        let path = self
            .microvm_dir()
            .join(format!("{}-{hash}.ext4", image.language));
        path.is_file().then_some(GuestDisk { path, hash })
    }

    /// Builds the ext4 root disk of `image` (needs `mke2fs` from e2fsprogs, and
    /// root to read every file of the image), or reuses the cached one.
    pub async fn ensure_guest_disk(
        &self,
        image: &RuntimeImage,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<GuestDisk, MicrovmImageError> {
        if !force {
            if let Some(d) = self.find_guest_disk(image) {
                progress(&format!(
                    "microvm: {} disk cached at {}",
                    image.language,
                    d.path.display()
                ));
                return Ok(d);
            }
        }
        let _lock = self.microvm_lock(progress).await?;
        if !force {
            if let Some(d) = self.find_guest_disk(image) {
                return Ok(d);
            }
        }
        let hash = short(&disk_hash(image)).to_string();
        let path = self
            .microvm_dir()
            .join(format!("{}-{hash}.ext4", image.language));
        progress(&format!(
            "microvm: making the {} root disk from {}...",
            image.language,
            image.rootfs.display()
        ));
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".disk-{}-", image.language))
            .suffix(".ext4")
            .tempfile_in(self.microvm_dir())
            .ctx(|| "creating a temporary disk file")?;
        make_ext4(&image.rootfs, tmp.path(), ROOT_LABEL).await?;
        builder::set_mode(tmp.path(), 0o644)?;
        tmp.persist(&path)
            .map_err(|e| ImageError::io(format!("moving disk to {}", path.display()), e.error))?;
        progress(&format!(
            "microvm: {} disk ready at {}",
            image.language,
            path.display()
        ));
        Ok(GuestDisk { path, hash })
    }

    async fn microvm_lock(&self, progress: Progress<'_>) -> Result<File, ImageError> {
        let dir = self.microvm_dir();
        tokio::fs::create_dir_all(&dir)
            .await
            .ctx(|| format!("creating {}", dir.display()))?;
        let path = dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx(|| format!("opening lock file {}", path.display()))?;
        if file.try_lock().is_ok() {
            return Ok(file);
        }
        progress("microvm: waiting for another build to finish...");
        tokio::task::spawn_blocking(move || {
            file.lock()
                .ctx(|| format!("locking {}", path.display()))
                .map(|()| file)
        })
        .await?
    }
}

/// Moves `from` to `to`, setting an existing `to` aside (a running VM may use it).
fn replace_into_place(from: &Path, to: &Path, store: &ImageStore) -> Result<(), ImageError> {
    if to.exists() {
        let aside = tempfile::Builder::new()
            .prefix(".replaced-kernel-")
            .tempdir_in(store.microvm_dir())
            .ctx(|| "creating a temporary directory")?
            .keep();
        std::fs::rename(to, &aside).ctx(|| format!("moving {} aside", to.display()))?;
    }
    std::fs::rename(from, to).ctx(|| format!("moving {} to {}", from.display(), to.display()))
}

/// Writes `vmlinux` and `initramfs.cpio` into `out` from the unpacked
/// packages in `tree`; returns the kernel release.
fn assemble_kernel(tree: &Path, out: &Path) -> Result<String, MicrovmImageError> {
    let boot = tree.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .ctx(|| format!("listing {}", boot.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| MicrovmImageError::Kernel(format!("no vmlinuz in {}", boot.display())))?;
    let release = vmlinuz
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let bz = std::fs::read(&vmlinuz).ctx(|| format!("reading {}", vmlinuz.display()))?;
    let elf = extract_vmlinux(&bz)?;
    std::fs::write(out.join("vmlinux"), elf).ctx(|| "writing vmlinux")?;

    let modules_root = tree.join("lib/modules").join(&release);
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.char_device("dev/console", 0o600, 5, 1);
    let busybox = tree.join("bin/busybox");
    cpio.file(
        "bin/busybox",
        0o755,
        &std::fs::read(&busybox).ctx(|| format!("reading {}", busybox.display()))?,
    );
    cpio.file("init", 0o755, init_script().as_bytes());
    for name in MODULES {
        let path = find_module(&modules_root, name)?;
        let bytes = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &bytes);
    }
    std::fs::write(out.join("initramfs.cpio"), cpio.finish()).ctx(|| "writing initramfs.cpio")?;
    Ok(release)
}

fn find_module(root: &Path, name: &str) -> Result<PathBuf, MicrovmImageError> {
    let mut stack = vec![root.to_path_buf()];
    let file = format!("{name}.ko");
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let path = entry.ctx(|| format!("listing {}", dir.display()))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == file.as_str()) {
                return Ok(path);
            }
        }
    }
    Err(MicrovmImageError::Kernel(format!(
        "module {name} not found under {} (compressed modules are not supported)",
        root.display()
    )))
}

/// The uncompressed kernel inside a bzImage whose payload is LZ4 (Debian's
/// cloud kernel): the payload starts at `(setup_sects + 1) * 512 +
/// payload_offset` (setup header field at 0x248, its length at 0x24c) and is
/// an LZ4 *legacy* stream (magic `0x184C2102`, then `[u32 LE size][block]`
/// chunks of at most 8 MiB each), followed by the kernel's own 4-byte length.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, MicrovmImageError> {
    let bad = |what: &str| MicrovmImageError::Kernel(format!("not an LZ4 bzImage: {what}"));
    let u32_at = |off: usize| -> Result<u32, MicrovmImageError> {
        bzimage
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| bad("truncated header"))
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no HdrS setup header"));
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = (setup_sects + 1) * 512 + u32_at(0x248)? as usize;
    let len = u32_at(0x24c)? as usize;
    let payload = bzimage
        .get(offset..offset + len)
        .ok_or_else(|| bad("payload outside the file"))?;
    const LEGACY_MAGIC: u32 = 0x184C_2102;
    const LEGACY_BLOCK: usize = 8 << 20;
    if payload
        .get(..4)
        .map(|m| u32::from_le_bytes(m.try_into().expect("4 bytes")))
        != Some(LEGACY_MAGIC)
    {
        return Err(bad("payload is not LZ4 legacy"));
    }
    let mut out = Vec::with_capacity(payload.len() * 3);
    let mut pos = 4;
    let mut block = vec![0u8; LEGACY_BLOCK];
    while pos + 4 <= payload.len() {
        let size = u32::from_le_bytes(payload[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        if size == LEGACY_MAGIC as usize {
            pos += 4;
            continue;
        }
        // The trailing 4 bytes are the uncompressed length, not a chunk.
        if pos + 4 + size > payload.len() {
            break;
        }
        let n = lz4_flex::block::decompress_into(&payload[pos + 4..pos + 4 + size], &mut block)
            .map_err(|e| MicrovmImageError::Kernel(format!("LZ4 chunk at {pos}: {e}")))?;
        out.extend_from_slice(&block[..n]);
        pos += 4 + size;
    }
    if out.get(..4) != Some(b"\x7fELF") {
        return Err(bad("decompressed payload is not an ELF file"));
    }
    Ok(out)
}

/// A minimal cpio "newc" archive writer (all entries owned by root).
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    /// Adds a directory (mode 0755).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_000 | 0o755, (0, 0), &[]);
    }

    /// Adds a regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | mode, (0, 0), data);
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, 0o020_000 | mode, (major, minor), &[]);
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// Makes a read-only-use ext4 image of `src` at `out` labelled `label`
/// (`mke2fs -d`: no loop device, no mount, no root needed beyond reading `src`).
/// No journal: nothing ever writes to these disks.
pub async fn make_ext4(src: &Path, out: &Path, label: &str) -> Result<(), MicrovmImageError> {
    let src2 = src.to_path_buf();
    let (bytes, files) = tokio::task::spawn_blocking(move || count_tree(&src2))
        .await
        .map_err(ImageError::from)??;
    // ext4 metadata, directory blocks and 4 KiB rounding of small files.
    let size_kib = (bytes / 1024) * 5 / 4 + files * 4 + 16 * 1024;
    let inodes = files * 5 / 4 + 256;
    let file = File::create(out).ctx(|| format!("creating {}", out.display()))?;
    file.set_len(size_kib * 1024)
        .ctx(|| format!("sizing {}", out.display()))?;
    drop(file);
    let output = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-b",
            "4096",
        ])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-L")
        .arg(label)
        .arg("-E")
        .arg("root_owner=0:0")
        .arg("-d")
        .arg(src)
        .arg(out)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => MicrovmImageError::ToolMissing {
                tool: "mke2fs",
                package: "e2fsprogs",
            },
            _ => ImageError::io("running mke2fs", e).into(),
        })?;
    if !output.status.success() {
        return Err(MicrovmImageError::Tool {
            what: format!("mke2fs -d {}", src.display()),
            status: output.status,
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Apparent bytes and entry count under `root` (symlinks not followed).
fn count_tree(root: &Path) -> Result<(u64, u64), ImageError> {
    let bytes = builder::tree_size(root)?;
    let mut files = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            files += 1;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, files))
}

async fn apt_download(dir: &Path, packages: &[&str]) -> Result<(), MicrovmImageError> {
    let output = Command::new("apt-get")
        .arg("download")
        .args(packages)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => MicrovmImageError::ToolMissing {
                tool: "apt-get",
                package: "apt",
            },
            _ => ImageError::io("running apt-get download", e).into(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(MicrovmImageError::Tool {
        what: format!(
            "apt-get download {} (run apt-get update?)",
            packages.join(" ")
        ),
        status: output.status,
        output: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn find_deb(dir: &Path, package: &str) -> Result<PathBuf, MicrovmImageError> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir)
        .ctx(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .ok_or_else(|| {
            MicrovmImageError::Kernel(format!("apt-get download left no {package} package"))
        })
}

/// The `linux-image-<release>` package a kernel metapackage depends on.
async fn kernel_dependency(meta: &Path) -> Result<String, MicrovmImageError> {
    let out = run("dpkg-deb", &[Path::new("-f"), meta, Path::new("Depends")]).await?;
    out.split(',')
        .map(|d| d.split_whitespace().next().unwrap_or_default())
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| {
            MicrovmImageError::Kernel(format!("{KERNEL_PACKAGE} depends on no linux-image: {out}"))
        })
}

async fn run(program: &'static str, args: &[&Path]) -> Result<String, MicrovmImageError> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| ImageError::io(format!("running {program}"), e))?;
    if !output.status.success() {
        return Err(MicrovmImageError::Tool {
            what: program.to_string(),
            status: output.status,
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.char_device("dev/console", 0o600, 5, 1);
        let out = c.finish();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("init\0"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!\0"));
        // Mode of the file entry: 0100755 in hex.
        assert!(text.contains(&format!("{:08X}", 0o100_755)));
    }

    #[test]
    fn init_script_loads_every_module_in_order() {
        let script = init_script();
        assert!(script.contains(&MODULES.join(" ")));
        assert!(script.contains("LABEL=faas-root"));
        assert!(!script.contains('@'));
    }

    #[test]
    fn rejects_non_bzimage() {
        assert!(matches!(
            extract_vmlinux(&[0u8; 4096]),
            Err(MicrovmImageError::Kernel(_))
        ));
    }

    #[test]
    fn extracts_a_synthetic_lz4_legacy_payload() {
        let elf: Vec<u8> = b"\x7fELF"
            .iter()
            .copied()
            .chain((0..100_000u32).map(|i| (i % 251) as u8))
            .collect();
        let block = lz4_flex::block::compress(&elf);
        let mut payload = 0x184C_2102u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        let mut bz = vec![0u8; 5 * 512];
        bz[0x1f1] = 4;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(&payload);
        assert_eq!(extract_vmlinux(&bz).unwrap(), elf);
    }

    #[test]
    fn disk_hash_follows_the_image() {
        let image = |hash: &str| RuntimeImage {
            kind: crate::ImageKind::Runtime(faas_common::Language::Python),
            language: faas_common::Language::Python,
            rootfs: PathBuf::from("/x"),
            hash: hash.into(),
            packages: vec![],
        };
        assert_ne!(disk_hash(&image("a")), disk_hash(&image("b")));
        assert_eq!(disk_hash(&image("a")), disk_hash(&image("a")));
    }
}
