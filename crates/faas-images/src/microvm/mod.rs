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
//!
//! By concern: `kernel.rs` (the packages, `vmlinux` out of the bzImage, the
//! initramfs), `cpio.rs` (its archive format), `ext4.rs` (disks of trees);
//! this module caches and names what they make.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::builder::{self, Progress};
use crate::error::{ImageError, IoContext};
use crate::recipe::{sha256_hex, short};
use crate::{ImageStore, RuntimeImage};

mod cpio;
mod ext4;
mod kernel;

pub use cpio::Cpio;
pub use ext4::make_ext4;
pub use kernel::extract_vmlinux;
use kernel::{apt_download, assemble_kernel, find_deb, kernel_dependency, run};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_loads_every_module_in_order() {
        let script = init_script();
        assert!(script.contains(&MODULES.join(" ")));
        assert!(script.contains("LABEL=faas-root"));
        assert!(!script.contains('@'));
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
