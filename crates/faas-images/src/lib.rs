//! Builds and caches the runtime root filesystems function sandboxes run in.
//!
//! There is one image per [`Language`]: a Debian bookworm root filesystem made
//! by `mmdebstrap --variant=essential` (plus `python3` or `nodejs` and the C/C++
//! runtime libraries binary packages link against), with the guest agent, the
//! language bootstraps and the sandbox mount points on top.
//!
//! Cache layout under the images directory (see [`ImageStore`]):
//!
//! ```text
//! <dir>/.lock-<lang>                     flock held while building <lang>
//! <dir>/base/<lang>-<basehash16>.tar     mmdebstrap output, keyed by the Debian recipe
//! <dir>/<lang>-<fullhash16>/rootfs/      the image, keyed by base + bootstraps + agent
//! <dir>/<lang>-<fullhash16>/image.json   manifest (hashes, packages, build time, size)
//! ```
//!
//! A final directory only ever appears complete: it is assembled in a temporary
//! directory next to it and renamed into place.
//!
//! Images of older recipes or agent binaries stay until [`ImageStore::prune`]
//! removes them; a process using an image (or a microVM disk) holds an [`InUse`]
//! guard, a shared `flock` on its `image.json` (or disk file), and prune skips
//! whatever is held.

#![deny(clippy::undocumented_unsafe_blocks)]

mod builder;
mod error;
pub mod microvm;
mod mirror;
mod recipe;

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use faas_common::Language;
use serde::{Deserialize, Serialize};

pub use error::ImageError;

use builder::Progress;
use error::IoContext;
use mirror::Mirrors;
use recipe::{short, BaseRecipe, BOOTSTRAPS};

/// What an image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// Functions of a language run in it.
    Runtime(Language),
    /// A language's package installer runs in it (in the build sandbox) to
    /// install dependencies: never a function.
    Builder(Language),
}

impl ImageKind {
    /// The language it serves.
    pub fn language(self) -> Language {
        match self {
            ImageKind::Runtime(l) | ImageKind::Builder(l) => l,
        }
    }
}

impl std::fmt::Display for ImageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageKind::Runtime(l) => write!(f, "{l}"),
            ImageKind::Builder(l) => write!(f, "{l}-build"),
        }
    }
}

/// A built image, ready to be used as a sandbox root filesystem.
#[derive(Debug, Clone)]
pub struct RuntimeImage {
    /// What it is for.
    pub kind: ImageKind,
    /// The language this image runs (or installs packages for).
    pub language: Language,
    /// The root filesystem directory (`<dir>/<lang>-<hash>/rootfs`).
    pub rootfs: PathBuf,
    /// Short content hash (16 hex digits) naming the image; changes whenever the
    /// Debian recipe, a bootstrap or the agent binary changes.
    pub hash: String,
    /// Debian packages installed on top of the essential set.
    pub packages: Vec<String>,
}

/// A shared lock on a built artefact (a runtime image's `image.json`, a microVM
/// disk) for as long as it lives: [`ImageStore::prune`] leaves it alone.
#[derive(Debug)]
pub struct InUse {
    /// Held for its lock, released when dropped.
    _lock: File,
}

impl InUse {
    /// Hold `path` (an `image.json` or a disk file).
    pub fn file(path: &Path) -> Result<InUse, ImageError> {
        let file = File::open(path)
            .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
        file.lock_shared()
            .map_err(|e| ImageError::io(format!("locking {}", path.display()), e))?;
        Ok(InUse { _lock: file })
    }
}

impl RuntimeImage {
    /// Hold this image for as long as the guard lives (see [`ImageStore::prune`]).
    pub fn hold(&self) -> Result<InUse, ImageError> {
        let manifest = self
            .rootfs
            .parent()
            .unwrap_or(&self.rootfs)
            .join("image.json");
        InUse::file(&manifest)
    }
}

/// The cache of runtime images in one directory (in CI: `/var/cache/faas/images`).
///
/// Several processes may share a directory: builds of one language are
/// serialised with an exclusive `flock` on `<dir>/.lock-<lang>`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// `image.json`, written next to each `rootfs/`.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    kind: ImageKind,
    /// Short hash, as in the directory name.
    hash: String,
    full_hash: String,
    base_hash: String,
    agent_sha256: String,
    recipe_version: u32,
    suite: String,
    packages: Vec<String>,
    /// Unix seconds.
    built_at: u64,
    /// Apparent size of `rootfs/` in bytes.
    size_bytes: u64,
}

/// Everything derived from the language and agent before touching the cache.
struct Plan {
    lang: ImageKind,
    recipe: BaseRecipe,
    base_hash: String,
    full_hash: String,
    agent_sha256: String,
}

impl Plan {
    fn new(lang: ImageKind, agent_sha256: String) -> Self {
        let recipe = BaseRecipe::for_kind(lang);
        let base_hash = recipe.hash();
        let full_hash = recipe::full_hash(&base_hash, &BOOTSTRAPS, &agent_sha256);
        Plan {
            lang,
            recipe,
            base_hash,
            full_hash,
            agent_sha256,
        }
    }

    fn image(&self, rootfs: PathBuf) -> RuntimeImage {
        RuntimeImage {
            kind: self.lang,
            language: self.lang.language(),
            rootfs,
            hash: short(&self.full_hash).to_string(),
            packages: self.recipe.packages.clone(),
        }
    }
}

impl ImageStore {
    /// A store rooted at `dir` (created on the first build).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ImageStore { dir: dir.into() }
    }

    /// The images directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Remove the runtime images (`<lang>-<hash>/`, replaced ones too) and
    /// microVM root disks (`microvm/<lang>-<hash>.ext4`) that are not in `keep`
    /// (image directories or disk files) and that no process holds ([`InUse`]).
    /// Base tarballs and guest kernels stay (one per recipe). Returns what was
    /// removed.
    pub fn prune(&self, keep: &[PathBuf]) -> Result<Vec<PathBuf>, ImageError> {
        let mut candidates = Vec::new();
        let is_ours = |name: &str| {
            name.starts_with(".replaced-")
                || Language::IMAGES
                    .iter()
                    .any(|l| name.starts_with(&format!("{l}-")))
        };
        for (dir, want_dir) in [(self.dir.clone(), true), (self.microvm_dir(), false)] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let is_dir = path.is_dir();
                let fits = if want_dir {
                    is_dir && is_ours(&name)
                } else {
                    !is_dir && name.ends_with(".ext4") && is_ours(&name)
                };
                if fits && !keep.contains(&path) {
                    candidates.push(path);
                }
            }
        }
        let mut removed = Vec::new();
        for path in candidates {
            // A directory is locked through its manifest; one without a
            // manifest is not a finished image: leave it.
            let lock_path = if path.is_dir() {
                path.join("image.json")
            } else {
                path.clone()
            };
            let Ok(lock) = File::open(&lock_path) else {
                continue;
            };
            match lock.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => {
                    return Err(ImageError::io(
                        format!("locking {}", lock_path.display()),
                        e,
                    ))
                }
            }
            let result = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.map_err(|e| ImageError::io(format!("removing {}", path.display()), e))?;
            removed.push(path);
        }
        Ok(removed)
    }

    /// The image for `lang` built from this agent binary, if it is already built
    /// (never builds).
    pub async fn find(
        &self,
        lang: Language,
        agent: &Path,
    ) -> Result<Option<RuntimeImage>, ImageError> {
        let (_, agent_sha256) = read_agent(agent).await?;
        self.load(&Plan::new(ImageKind::Runtime(lang), agent_sha256))
            .await
    }

    /// [`ImageStore::ensure_kind`] of a runtime image.
    pub async fn ensure(
        &self,
        lang: Language,
        agent: &Path,
        force: bool,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<RuntimeImage, ImageError> {
        self.ensure_kind(ImageKind::Runtime(lang), agent, force, progress)
            .await
    }

    /// Builds the image of `kind` with this agent binary, or reuses the cached one.
    ///
    /// `force` rebuilds both the base tarball and the image even if cached (a
    /// replaced image directory is renamed to `.replaced-<lang>-<hash>-<random>`,
    /// not deleted, since running sandboxes may still use it). Human-readable progress
    /// lines, including mmdebstrap's own `I:` lines, go to `progress`.
    pub async fn ensure_kind(
        &self,
        lang: ImageKind,
        agent: &Path,
        force: bool,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<RuntimeImage, ImageError> {
        let (agent_bytes, agent_sha256) = read_agent(agent).await?;
        let plan = Plan::new(lang, agent_sha256);
        if !force {
            if let Some(image) = self.load(&plan).await? {
                report_cached(&image, progress);
                return Ok(image);
            }
        }

        let base_dir = self.dir.join("base");
        tokio::fs::create_dir_all(&base_dir)
            .await
            .ctx(|| format!("creating {}", base_dir.display()))?;
        let _lock = self.lock(lang, progress).await?;
        if !force {
            if let Some(image) = self.load(&plan).await? {
                report_cached(&image, progress);
                return Ok(image);
            }
        }
        builder::require_root(lang)?;
        let base_tar = self.ensure_base(&plan, force, progress).await?;
        self.build_image(&plan, &base_tar, agent_bytes, progress)
            .await
    }

    fn image_dir(&self, plan: &Plan) -> PathBuf {
        self.dir
            .join(format!("{}-{}", plan.lang, short(&plan.full_hash)))
    }

    /// Reads the manifest of the planned image, if that image exists.
    async fn load(&self, plan: &Plan) -> Result<Option<RuntimeImage>, ImageError> {
        let dir = self.image_dir(plan);
        let path = dir.join("image.json");
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io(format!("reading {}", path.display()), e)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|source| ImageError::Manifest { path, source })?;
        let mut image = plan.image(dir.join("rootfs"));
        image.packages = manifest.packages;
        Ok(Some(image))
    }

    /// Takes the exclusive build lock of `lang`, waiting for other builders.
    async fn lock(&self, lang: ImageKind, progress: Progress<'_>) -> Result<File, ImageError> {
        let path = self.dir.join(format!(".lock-{lang}"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(ImageError::io(format!("locking {}", path.display()), e))
            }
        }
        progress(&format!(
            "{lang}: waiting for another build of this image to finish..."
        ));
        tokio::task::spawn_blocking(move || {
            file.lock()
                .ctx(|| format!("locking {}", path.display()))
                .map(|()| file)
        })
        .await?
    }

    /// Returns the base tarball for the plan, running mmdebstrap if needed.
    async fn ensure_base(
        &self,
        plan: &Plan,
        force: bool,
        progress: Progress<'_>,
    ) -> Result<PathBuf, ImageError> {
        let lang = plan.lang;
        let base_dir = self.dir.join("base");
        let tarball = base_dir.join(format!("{lang}-{}.tar", short(&plan.base_hash)));
        if !force && tokio::fs::try_exists(&tarball).await.unwrap_or(false) {
            progress(&format!(
                "{lang}: reusing cached base {}",
                tarball.display()
            ));
            return Ok(tarball);
        }

        let mmdebstrap = builder::find_mmdebstrap()?;
        for hook in &plan.recipe.hook_dirs {
            if !Path::new(hook).is_dir() {
                return Err(ImageError::MergedUsrHookMissing(hook.into()));
            }
        }
        let suite = plan.recipe.suite.clone();
        let mirrors = tokio::task::spawn_blocking(move || Mirrors::from_host(&suite)).await?;
        let what = if plan.recipe.packages.is_empty() {
            "essential packages only".to_string()
        } else {
            plan.recipe.packages.join(", ")
        };
        progress(&format!(
            "{lang}: building base root filesystem with mmdebstrap ({what}) from {} (security: {})...",
            mirrors.main, mirrors.security
        ));

        let started = Instant::now();
        let staging = tempfile::Builder::new()
            .prefix(&format!(".tmp-{lang}-"))
            .tempdir_in(&base_dir)
            .ctx(|| format!("creating a temporary directory in {}", base_dir.display()))?;
        let out = staging.path().join("out.tar");
        builder::run_mmdebstrap(lang, &mmdebstrap, &plan.recipe, &mirrors, &out, progress).await?;
        let size = tokio::fs::metadata(&out)
            .await
            .ctx(|| format!("inspecting {}", out.display()))?
            .len();
        tokio::fs::rename(&out, &tarball)
            .await
            .ctx(|| format!("moving {} to {}", out.display(), tarball.display()))?;
        progress(&format!(
            "{lang}: base ready in {:.1}s ({} MiB)",
            started.elapsed().as_secs_f64(),
            builder::mib(size)
        ));
        Ok(tarball)
    }

    /// Unpacks the base, installs the layout and moves the result into place.
    async fn build_image(
        &self,
        plan: &Plan,
        base_tar: &Path,
        agent: Vec<u8>,
        progress: Progress<'_>,
    ) -> Result<RuntimeImage, ImageError> {
        let lang = plan.lang;
        let started = Instant::now();
        progress(&format!(
            "{lang}: unpacking base and installing the guest agent and bootstraps..."
        ));
        let staging = tempfile::Builder::new()
            .prefix(&format!(".build-{lang}-"))
            .tempdir_in(&self.dir)
            .ctx(|| format!("creating a temporary directory in {}", self.dir.display()))?;
        let rootfs = staging.path().join("rootfs");
        tokio::fs::create_dir(&rootfs)
            .await
            .ctx(|| format!("creating {}", rootfs.display()))?;
        builder::extract_base(lang, base_tar, &rootfs).await?;

        let manifest = Manifest {
            kind: lang,
            hash: short(&plan.full_hash).to_string(),
            full_hash: plan.full_hash.clone(),
            base_hash: plan.base_hash.clone(),
            agent_sha256: plan.agent_sha256.clone(),
            recipe_version: recipe::RECIPE_VERSION,
            suite: plan.recipe.suite.clone(),
            packages: plan.recipe.packages.clone(),
            built_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            size_bytes: 0,
        };
        let staging_path = staging.path().to_path_buf();
        let manifest = tokio::task::spawn_blocking(move || {
            builder::install_layout(&rootfs, &agent)?;
            let manifest = Manifest {
                size_bytes: builder::tree_size(&rootfs)?,
                ..manifest
            };
            let path = staging_path.join("image.json");
            let json =
                serde_json::to_vec_pretty(&manifest).map_err(|source| ImageError::Manifest {
                    path: path.clone(),
                    source,
                })?;
            std::fs::write(&path, json).ctx(|| format!("writing {}", path.display()))?;
            builder::set_mode(&path, 0o644)?;
            builder::set_mode(&staging_path, 0o755)?;
            Ok::<_, ImageError>(manifest)
        })
        .await??;

        let final_dir = self.image_dir(plan);
        if tokio::fs::try_exists(&final_dir).await.unwrap_or(false) {
            // A fresh empty directory, which rename(2) may replace.
            let aside = tempfile::Builder::new()
                .prefix(&format!(".replaced-{lang}-{}-", manifest.hash))
                .tempdir_in(&self.dir)
                .ctx(|| format!("creating a temporary directory in {}", self.dir.display()))?
                .keep();
            tokio::fs::rename(&final_dir, &aside)
                .await
                .ctx(|| format!("moving {} aside", final_dir.display()))?;
        }
        tokio::fs::rename(staging.path(), &final_dir)
            .await
            .ctx(|| {
                format!(
                    "moving {} to {}",
                    staging.path().display(),
                    final_dir.display()
                )
            })?;
        // The directory now lives at `final_dir`; make sure dropping `staging` leaves it alone.
        let _ = staging.keep();

        let image = plan.image(final_dir.join("rootfs"));
        progress(&format!(
            "{lang}: image ready at {} (hash {}) in {:.1}s, {} MiB",
            image.rootfs.display(),
            image.hash,
            started.elapsed().as_secs_f64(),
            builder::mib(manifest.size_bytes)
        ));
        tracing::info!(%lang, hash = %image.hash, rootfs = %image.rootfs.display(), "runtime image built");
        Ok(image)
    }
}

fn report_cached(image: &RuntimeImage, progress: Progress<'_>) {
    progress(&format!(
        "{}: image cached at {} (hash {})",
        image.kind,
        image.rootfs.display(),
        image.hash
    ));
}

/// Reads the agent binary and its sha256.
async fn read_agent(agent: &Path) -> Result<(Vec<u8>, String), ImageError> {
    let agent = agent.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if !agent.is_file() {
            return Err(ImageError::AgentMissing(agent));
        }
        let bytes = std::fs::read(&agent).ctx(|| format!("reading {}", agent.display()))?;
        let sha = recipe::sha256_hex(&bytes);
        Ok((bytes, sha))
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.join("rootfs")).unwrap();
        std::fs::write(path.join("image.json"), "{}").unwrap();
        path
    }

    #[test]
    fn prune_removes_what_is_neither_kept_nor_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let current = image(dir.path(), "python-aaaa");
        let stale = image(dir.path(), "python-bbbb");
        let held = image(dir.path(), "node-cccc");
        let replaced = image(dir.path(), ".replaced-shell-dddd-1");
        let unfinished = dir.path().join("shell-eeee");
        std::fs::create_dir_all(&unfinished).unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir_all(&base).unwrap();
        let vm = dir.path().join("microvm");
        std::fs::create_dir_all(vm.join("kernel-ffff")).unwrap();
        let old_disk = vm.join("python-1111.ext4");
        let held_disk = vm.join("node-2222.ext4");
        std::fs::write(&old_disk, "").unwrap();
        std::fs::write(&held_disk, "").unwrap();

        let _image_guard = InUse::file(&held.join("image.json")).unwrap();
        let _disk_guard = InUse::file(&held_disk).unwrap();
        let mut removed = store.prune(std::slice::from_ref(&current)).unwrap();
        removed.sort();
        let mut expected = vec![stale, replaced, old_disk];
        expected.sort();
        assert_eq!(removed, expected);
        for kept in [
            &current,
            &held,
            &unfinished,
            &base,
            &vm.join("kernel-ffff"),
            &held_disk,
        ] {
            assert!(kept.exists(), "{} must stay", kept.display());
        }
    }
}
