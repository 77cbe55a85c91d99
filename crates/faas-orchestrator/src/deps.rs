//! Dependency layers: the packages a function declares, installed once on the
//! host into `<data>/deps/<sha256>/` (keyed by language and the sorted list) and
//! mounted read-only into every instance of every function that declares the same
//! list. The sandbox itself never reaches the network.
//!
//! Python: `pip install --target` for the runtime image's interpreter (CPython 3.11,
//! Debian bookworm), binary wheels only, so what the host runs does not matter.
//! Node.js: `npm install --ignore-scripts` (pure JavaScript packages; install
//! scripts would run unsandboxed on the host, so they are refused).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use faas_common::Language;
use sha2::{Digest, Sha256};
use tokio::process::Command;

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
/// Longest an install may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Most dependencies one function may declare.
const MAX_DEPENDENCIES: usize = 100;

/// Installs and finds dependency layers.
pub struct DepsInstaller {
    root: PathBuf,
}

impl DepsInstaller {
    /// Layers live under `root`.
    pub fn new(root: PathBuf) -> Self {
        DepsInstaller { root }
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
        validate(language, deps)?;
        let mut sorted = deps.to_vec();
        sorted.sort();
        sorted.dedup();
        let sha = layer_key(language, &sorted);
        let dest = self.dir(&sha);
        if dest.is_dir() {
            return Ok(Some(sha));
        }
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| OrchestratorError::Internal(format!("create deps dir: {e}")))?;
        let tmp = tempdir_in(&self.root)?;
        let result = run_installer(language, &sorted, tmp.path()).await;
        match result {
            Ok(()) => {
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
            Err(e) => Err(e),
        }
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

fn validate(language: Language, deps: &[String]) -> Result<(), OrchestratorError> {
    if language.is_process_per_call() {
        return Err(OrchestratorError::BadRequest(format!(
            "{language} functions cannot declare dependencies"
        )));
    }
    if deps.len() > MAX_DEPENDENCIES {
        return Err(OrchestratorError::BadRequest(format!(
            "at most {MAX_DEPENDENCIES} dependencies"
        )));
    }
    for d in deps {
        // A leading '-' would be read as an installer option.
        let ok = !d.is_empty()
            && d.len() <= 200
            && !d.starts_with('-')
            && !d.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(OrchestratorError::BadRequest(format!(
                "invalid dependency {d:?}"
            )));
        }
    }
    Ok(())
}

async fn run_installer(
    language: Language,
    deps: &[String],
    target: &Path,
) -> Result<(), OrchestratorError> {
    let mut cmd = match language {
        Language::Python => {
            let mut c = Command::new("python3");
            c.args([
                "-m",
                "pip",
                "install",
                "--no-cache-dir",
                "--disable-pip-version-check",
            ])
            .args([
                "--no-input",
                "--only-binary=:all:",
                "--implementation",
                "cp",
            ])
            .args(["--python-version", PYTHON_VERSION, "--target"])
            .arg(target);
            for p in PYTHON_PLATFORMS {
                c.args(["--platform", p]);
            }
            c.arg("--").args(deps);
            c
        }
        Language::Node => {
            let mut c = Command::new("npm");
            c.args([
                "install",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--omit=dev",
            ])
            .args(["--no-package-lock", "--prefix"])
            .arg(target)
            .arg("--")
            .args(deps);
            c
        }
        Language::Shell | Language::Native => unreachable!("validated"),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let tool = if language == Language::Python {
        "pip"
    } else {
        "npm"
    };
    let child = cmd.spawn().map_err(|e| {
        OrchestratorError::Internal(format!("cannot run {tool} to install dependencies: {e}"))
    })?;
    let out = tokio::time::timeout(INSTALL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            OrchestratorError::BadRequest(format!(
                "dependency install took longer than {INSTALL_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| OrchestratorError::Internal(format!("{tool}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| l.contains("ERROR") || l.contains("ERR!"))
            .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("no output")
            .trim()
            .to_string();
        return Err(OrchestratorError::BadRequest(format!(
            "dependency install failed ({tool}): {reason}"
        )));
    }
    // World-readable: the sandbox user must read the layer.
    let status = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(target)
        .status()
        .await
        .map_err(|e| OrchestratorError::Internal(format!("chmod deps: {e}")))?;
    if !status.success() {
        return Err(OrchestratorError::Internal("chmod deps failed".into()));
    }
    Ok(())
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

    #[test]
    fn refuses_option_injection() {
        assert!(validate(Language::Python, &["--index-url=http://x".into()]).is_err());
        assert!(validate(Language::Python, &["a b".into()]).is_err());
        assert!(validate(Language::Shell, &["x".into()]).is_err());
        assert!(validate(Language::Node, &["left-pad@1.3.0".into()]).is_ok());
    }
}
