//! Read-only views of a function's code and dependencies for container
//! sandboxes: each tree is served as an ext4 image (built once per content,
//! `mke2fs -d`), loop-mounted read-only on the host while instances use it,
//! and bound into them from there.
//!
//! A plain bind mount of `<data>/code/<sha256>` would show that host path in
//! the sandbox's `/proc/self/mountinfo` (the mount's root within its
//! filesystem): the data directory and the code's address. A view's
//! filesystem is its own, so the sandbox sees `/` on a loop device, nothing
//! of the host's layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::ExecutorError;

/// How long an unused view stays mounted: the next instance of the function
/// is likely soon.
const KEEP_UNUSED: Duration = Duration::from_secs(60);

/// The views of one sandbox: images cached in `images`, mounted under `mounts`.
#[derive(Debug)]
pub struct Views {
    images: PathBuf,
    mounts: PathBuf,
    /// Mounted views: how many instances use each, since when none does,
    /// and whether its tree is gone (unmount as soon as the last use ends).
    live: Mutex<HashMap<String, (usize, Instant, bool)>>,
    /// Serialises building, mounting and unmounting (a cold path), so a view
    /// is made once and never unmounted while being mounted again.
    making: tokio::sync::Mutex<()>,
}

/// One use of a mounted view; unmounted when the last use is dropped.
#[derive(Debug)]
pub struct View {
    views: Arc<Views>,
    key: String,
    path: PathBuf,
}

impl View {
    /// The mount point to bind into a sandbox.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if self.views.release(&self.key) {
            // The last use of a forgotten view: unmount it and drop its image
            // now (from a thread: Drop cannot await), not at the next start.
            let (views, key) = (self.views.clone(), self.key.clone());
            std::thread::spawn(move || views.remove_forgotten(&key));
        }
    }
}

impl Views {
    /// Views whose images live in `images` and mount points in `mounts`.
    pub fn new(images: PathBuf, mounts: PathBuf) -> Arc<Views> {
        Arc::new(Views {
            images,
            mounts,
            live: Mutex::new(HashMap::new()),
            making: tokio::sync::Mutex::new(()),
        })
    }

    /// Build and mount the views of `code` and `deps` now (a deploy), so the
    /// first instance does not wait for them; they stay mounted as unused
    /// views do.
    pub async fn prepare(self: &Arc<Self>, code: Option<&Path>, deps: Option<&Path>) {
        for (dir, label) in [(code, "code"), (deps, "deps")] {
            if let Some(dir) = dir {
                if let Err(e) = self.acquire(dir, label).await {
                    tracing::warn!("cannot prepare the {label} view: {e}");
                }
            }
        }
    }

    /// A view of `src`, a content-addressed directory (its name is the hash
    /// of its content), labelled `label` (`code`, `deps`).
    pub async fn acquire(self: &Arc<Self>, src: &Path, label: &str) -> Result<View, ExecutorError> {
        let name = src
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric()))
            .ok_or_else(|| {
                ExecutorError::Start(format!("{} is not a content-addressed tree", src.display()))
            })?;
        let key = format!("{label}-{name}");
        let path = self.mounts.join(&key);
        if self.take(&key) {
            return Ok(self.view(key, path));
        }
        let _making = self.making.lock().await;
        if self.take(&key) {
            return Ok(self.view(key, path));
        }
        self.unmount_unused().await;
        let image = self.images.join(format!("{key}.ext4"));
        if !tokio::fs::try_exists(&image).await.unwrap_or(false) {
            build(src, &self.images, &image, label).await?;
        }
        tokio::fs::create_dir_all(&path)
            .await
            .map_err(ExecutorError::io(format!("create {}", path.display())))?;
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,ro,nosuid,nodev,noatime"])
            .arg(&image)
            .arg(&path)
            .output()
            .await
            .map_err(ExecutorError::io("run mount"))?;
        if !out.status.success() {
            return Err(ExecutorError::Start(format!(
                "cannot mount the {label} view: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        self.live
            .lock()
            .expect("views lock")
            .insert(key.clone(), (1, Instant::now(), false));
        Ok(self.view(key, path))
    }

    /// Unmount the views no instance has used for [`KEEP_UNUSED`] (those of
    /// deleted functions among them). Called with `making` held.
    async fn unmount_unused(&self) {
        let stale: Vec<String> = {
            let mut live = self.live.lock().expect("views lock");
            let stale: Vec<String> = live
                .iter()
                .filter(|(_, (n, since, _))| *n == 0 && since.elapsed() >= KEEP_UNUSED)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &stale {
                live.remove(k);
            }
            stale
        };
        for key in stale {
            let _ = Command::new("umount")
                .arg(self.mounts.join(&key))
                .status()
                .await;
        }
    }

    fn view(self: &Arc<Self>, key: String, path: PathBuf) -> View {
        View {
            views: self.clone(),
            key,
            path,
        }
    }

    /// Count one more use of a mounted view; false if it is not mounted.
    fn take(&self, key: &str) -> bool {
        match self.live.lock().expect("views lock").get_mut(key) {
            Some((n, _, forgotten)) => {
                *n += 1;
                // Used again: its tree is stored again.
                *forgotten = false;
                true
            }
            None => false,
        }
    }

    /// One use fewer; true when that was the last use of a forgotten view.
    fn release(&self, key: &str) -> bool {
        match self.live.lock().expect("views lock").get_mut(key) {
            Some((n, since, forgotten)) => {
                *n -= 1;
                if *n == 0 {
                    *since = Instant::now();
                }
                *n == 0 && *forgotten
            }
            None => false,
        }
    }

    /// Unmount a forgotten view nobody uses and remove its image (on a
    /// thread of its own; takes `making` so no mount of it races).
    fn remove_forgotten(&self, key: &str) {
        let _making = self.making.blocking_lock();
        let unused = {
            let mut live = self.live.lock().expect("views lock");
            let unused = matches!(live.get(key), Some((0, _, true)));
            if unused {
                live.remove(key);
            }
            unused
        };
        if unused {
            let _ = std::process::Command::new("umount")
                .arg(self.mounts.join(key))
                .status();
            let _ = std::fs::remove_file(self.images.join(format!("{key}.ext4")));
        }
    }

    /// Remove the images (and unmount the unused views) of trees whose
    /// names are not in `keep[label]`.
    pub async fn forget(&self, keep: &[(&str, &std::collections::HashSet<String>)]) {
        let _making = self.making.lock().await;
        let wanted = |key: &str| {
            keep.iter().any(|(label, names)| {
                key.strip_prefix(label)
                    .and_then(|k| k.strip_prefix('-'))
                    .is_some_and(|name| names.contains(name))
            })
        };
        let unmount: Vec<String> = {
            let mut live = self.live.lock().expect("views lock");
            let gone: Vec<String> = live
                .iter()
                .filter(|(k, (n, _, _))| *n == 0 && !wanted(k))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &gone {
                live.remove(k);
            }
            // In use: unmounted when the last use ends.
            for (k, (_, _, forgotten)) in live.iter_mut() {
                if !wanted(k) {
                    *forgotten = true;
                }
            }
            gone
        };
        for key in unmount {
            let _ = Command::new("umount")
                .arg(self.mounts.join(&key))
                .status()
                .await;
        }
        let Ok(mut entries) = tokio::fs::read_dir(&self.images).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            let in_use = self
                .live
                .lock()
                .expect("views lock")
                .contains_key(name.trim_end_matches(".ext4"));
            if let Some(key) = name.strip_suffix(".ext4") {
                if !wanted(key) && !in_use {
                    let _ = tokio::fs::remove_file(entry.path()).await;
                }
            }
        }
    }

    /// Unmount every view (at start, after a crash; at shutdown, after the
    /// last instance). Returns how many were mounted.
    pub fn sweep(&self) -> usize {
        let points = mount_points_under(&self.mounts);
        for point in &points {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(point)
                .status();
        }
        let n = points.len();
        self.live.lock().expect("views lock").clear();
        let _ = std::fs::remove_dir_all(&self.mounts);
        n
    }
}

/// Every mount point of this process's mount namespace under `dir`
/// (`/proc/self/mountinfo`), for sweeping what a crashed server left.
pub(crate) fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// Build the image of `src` at `image`, aside and renamed into place.
async fn build(src: &Path, dir: &Path, image: &Path, label: &str) -> Result<(), ExecutorError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(ExecutorError::io(format!("create {}", dir.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{label}-"))
        .suffix(".ext4")
        .tempfile_in(dir)
        .map_err(ExecutorError::io("create a temporary image"))?;
    faas_images::microvm::make_ext4(src, tmp.path(), &format!("faas-{label}"))
        .await
        .map_err(|e| ExecutorError::Start(format!("building the {label} view: {e}")))?;
    tmp.persist(image)
        .map_err(|e| ExecutorError::io(format!("store {}", image.display()))(e.error))?;
    Ok(())
}
