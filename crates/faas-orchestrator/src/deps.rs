//! Dependency layers: the packages a function declares, installed once into
//! `<data>/deps/<sha256>/` (keyed by language and the sorted list) and mounted
//! read-only into every instance of every function that declares the same
//! list. The function's sandbox never reaches the network.
//!
//! Only registry requirements are accepted ([`faas_common::deps`]), and the
//! installer runs in the build sandbox ([`faas_executor::native::build`]), as
//! an unprivileged user with a read-only root, writing only the layer, which is
//! bounded in size:
//! - Python: `pip install --target` for the runtime image's interpreter
//!   (CPython 3.11, Debian bookworm), binary wheels only (`--only-binary=:all:`),
//!   so no package's build code ever runs;
//! - Node.js: `npm install --ignore-scripts`, so no install script runs.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use faas_common::contract::{BUILD_LAYER_DIR, BUILD_SCRATCH_DIR};
use faas_common::Language;
use faas_executor::native::build::{BuildJob, BuildSandbox, BUILD_CA_BUNDLE};
use sha2::{Digest, Sha256};
use tokio::process::Command;
use tokio::sync::Semaphore;

use crate::OrchestratorError;

/// Python version of the runtime image (Debian bookworm).
const PYTHON_VERSION: &str = "3.11";
/// manylinux tags the image's glibc (2.36) accepts.
const PYTHON_PLATFORMS: &[&str] = &[
    "manylinux_2_36_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
];
/// Operator settings passed on to the installers (registries, proxies); never
/// anything a function's author controls.
const PASSED_ENV: &[&str] = &[
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_DEFAULT_TIMEOUT",
    "npm_config_registry",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// Bounds on installs.
#[derive(Debug, Clone, Copy)]
pub struct DepsLimits {
    /// Largest layer, MiB.
    pub max_layer_mb: u32,
    /// Longest an install may take.
    pub timeout: Duration,
    /// Installs running at once; more wait.
    pub concurrent: usize,
}

impl Default for DepsLimits {
    fn default() -> Self {
        DepsLimits {
            max_layer_mb: 1024,
            timeout: Duration::from_secs(600),
            concurrent: 2,
        }
    }
}

/// Installs and finds dependency layers.
pub struct DepsInstaller {
    root: PathBuf,
    sandbox: Option<Arc<BuildSandbox>>,
    limits: DepsLimits,
    running: Semaphore,
}

impl DepsInstaller {
    /// Layers live under `root`; installers run in `sandbox` (without one,
    /// functions cannot declare dependencies on this node).
    pub fn new(root: PathBuf, sandbox: Option<Arc<BuildSandbox>>, limits: DepsLimits) -> Self {
        DepsInstaller {
            root,
            sandbox,
            running: Semaphore::new(limits.concurrent.max(1)),
            limits,
        }
    }

    /// Host directory of layer `sha`.
    pub fn dir(&self, sha: &str) -> PathBuf {
        self.root.join(sha)
    }

    /// Install `deps` for `language` unless that layer exists; returns its key
    /// (`None` when there is nothing to install).
    pub async fn install(
        &self,
        language: Language,
        deps: &[String],
    ) -> Result<Option<String>, OrchestratorError> {
        if deps.is_empty() {
            return Ok(None);
        }
        faas_common::deps::validate(language, deps)
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        let mut sorted: Vec<String> = deps.iter().map(|d| d.trim().to_string()).collect();
        sorted.sort();
        sorted.dedup();
        let sha = layer_key(language, &sorted);
        let dest = self.dir(&sha);
        if dest.is_dir() {
            return Ok(Some(sha));
        }
        let sandbox = self
            .sandbox
            .as_ref()
            .filter(|s| s.supports(language))
            .ok_or_else(|| {
                OrchestratorError::Invalid(format!(
                    "this node cannot install {language} dependencies (no build sandbox)"
                ))
            })?;
        let _turn = self
            .running
            .acquire()
            .await
            .map_err(|_| OrchestratorError::Overloaded("server is shutting down".into()))?;
        if dest.is_dir() {
            return Ok(Some(sha));
        }
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| OrchestratorError::Internal(format!("create deps dir: {e}")))?;
        let tmp = tempdir_in(&self.root)?;
        self.run_installer(sandbox, language, &sorted, tmp.path())
            .await?;
        // Back to root: the installer's uid must not own what instances mount.
        let chown = Command::new("chown")
            .args(["-R", "-P", "-h", "0:0"])
            .arg(tmp.path())
            .status()
            .await
            .map_err(|e| OrchestratorError::Internal(format!("chown deps: {e}")))?;
        if !chown.success() {
            return Err(OrchestratorError::Internal("chown deps failed".into()));
        }
        // The copy gave the layer's root the scratch directory's mode (1777).
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| OrchestratorError::Internal(format!("chmod deps: {e}")))?;
        let staged = tmp.keep();
        if let Err(e) = std::fs::rename(&staged, &dest) {
            let _ = std::fs::remove_dir_all(&staged);
            // A concurrent deploy of the same list won: its layer is identical.
            if !dest.is_dir() {
                return Err(OrchestratorError::Internal(format!("store deps: {e}")));
            }
        }
        tracing::info!(%language, layer = %sha, "installed {} dependencies", sorted.len());
        Ok(Some(sha))
    }

    async fn run_installer(
        &self,
        sandbox: &BuildSandbox,
        language: Language,
        deps: &[String],
        target: &Path,
    ) -> Result<(), OrchestratorError> {
        let (tool, script) = match language {
            Language::Python => {
                let platforms: Vec<String> = PYTHON_PLATFORMS
                    .iter()
                    .map(|p| format!("--platform {p}"))
                    .collect();
                (
                    "pip",
                    format!(
                        "set -e\n\
                         python3 -m pip install --no-cache-dir --disable-pip-version-check \
                         --no-input --only-binary=:all: --implementation cp \
                         --python-version {PYTHON_VERSION} {} --target {BUILD_SCRATCH_DIR} -- \"$@\"\n\
                         find {BUILD_SCRATCH_DIR} -mindepth 1 ! -type l -exec chmod a+rX {{}} +\n\
                         cp -a {BUILD_SCRATCH_DIR}/. {BUILD_LAYER_DIR}/\n",
                        platforms.join(" ")
                    ),
                )
            }
            Language::Node => (
                "npm",
                format!(
                    "set -e\n\
                     npm install --no-audit --no-fund --ignore-scripts --omit=dev \
                     --no-package-lock --no-update-notifier --cache /tmp/.npm \
                     --prefix {BUILD_SCRATCH_DIR} -- \"$@\"\n\
                     find {BUILD_SCRATCH_DIR} -mindepth 1 ! -type l -exec chmod a+rX {{}} +\n\
                     cp -a {BUILD_SCRATCH_DIR}/. {BUILD_LAYER_DIR}/\n"
                ),
            ),
            Language::Shell | Language::Native => unreachable!("validated"),
        };
        let mut env: Vec<(String, String)> = PASSED_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        for k in [
            "SSL_CERT_FILE",
            "PIP_CERT",
            "NODE_EXTRA_CA_CERTS",
            "npm_config_cafile",
        ] {
            env.push((k.into(), BUILD_CA_BUNDLE.into()));
        }
        let outcome = sandbox
            .run(BuildJob {
                language,
                script,
                args: deps.to_vec(),
                env,
                output: target.to_path_buf(),
                scratch_mb: self.limits.max_layer_mb,
                memory_mb: self.limits.max_layer_mb + 1024,
                timeout: self.limits.timeout,
            })
            .await
            .map_err(|e| OrchestratorError::Internal(format!("build sandbox: {e}")))?;
        if outcome.exit_code != Some(0) {
            tracing::info!(%language, "dependency install failed:\n{}", outcome.log);
        }
        match outcome.exit_code {
            Some(0) => Ok(()),
            None => Err(OrchestratorError::Invalid(format!(
                "dependency install took longer than {}s",
                self.limits.timeout.as_secs()
            ))),
            Some(_) if outcome.log.contains("No space left on device") => {
                Err(OrchestratorError::TooLarge(format!(
                    "dependencies exceed the {} MiB layer limit",
                    self.limits.max_layer_mb
                )))
            }
            Some(_) => {
                let reason = outcome
                    .log
                    .lines()
                    .rev()
                    .find(|l| l.contains("ERROR") || l.contains("ERR!"))
                    .or_else(|| outcome.log.lines().rev().find(|l| !l.trim().is_empty()))
                    .unwrap_or("no output")
                    .trim();
                Err(OrchestratorError::Invalid(format!(
                    "dependency install failed ({tool}): {}",
                    faas_common::contract::truncate(reason, 1024)
                )))
            }
        }
    }

    /// Remove every layer whose key is not in `keep` (and unfinished ones).
    /// The caller makes sure no install it does not yet reference runs meanwhile.
    pub fn collect(&self, keep: &HashSet<String>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!("cannot remove layer {name}: {e}"),
            }
        }
        removed
    }
}

/// Removes its directory on drop unless kept.
struct TempDir(Option<PathBuf>);

impl TempDir {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("present until kept")
    }

    fn keep(mut self) -> PathBuf {
        self.0.take().expect("present until kept")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn tempdir_in(root: &Path) -> Result<TempDir, OrchestratorError> {
    let p = root.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&p)
        .map_err(|e| OrchestratorError::Internal(format!("create deps temp dir: {e}")))?;
    Ok(TempDir(Some(p)))
}

fn layer_key(language: Language, sorted: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(language.as_str());
    if language == Language::Python {
        h.update(PYTHON_VERSION);
    }
    for d in sorted {
        h.update([0]);
        h.update(d.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ignores_order_but_not_language() {
        let a = layer_key(Language::Python, &["a".into(), "b".into()]);
        let b = layer_key(Language::Node, &["a".into(), "b".into()]);
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_registry_requirement_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let deps = DepsInstaller::new(dir.path().join("deps"), None, DepsLimits::default());
        for bad in [
            "--index-url=http://x",
            "pkg @ https://evil/x.tar.gz",
            "git+https://github.com/x/y",
            "/etc/passwd",
            "./local",
        ] {
            let err = deps
                .install(Language::Python, &[bad.to_string()])
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("not a registry requirement"),
                "{bad}: {err}"
            );
        }
        assert!(!dir.path().join("deps").exists(), "nothing was created");
    }
}
