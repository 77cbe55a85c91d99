//! Dependency layers: the packages a function declares (its `dependencies`
//! list merged with a manifest in its code, [`faas_common::manifest`]),
//! installed once into `<data>/deps/<sha256>/` and mounted read-only into
//! every instance of every function whose packages resolve the same. The
//! function's sandbox never reaches the network.
//!
//! A layer is named by what it resolved to (every installed package and
//! version), so two different requests that resolve alike share one; an
//! index (`<data>/deps/.index/<request sha256>`) maps each request to its
//! layer, so asking again installs nothing. An unpinned request is resolved
//! once per node: pin versions to move.
//!
//! Only registry requirements are accepted ([`faas_common::deps`]), and the
//! installer runs in the build sandbox ([`faas_executor::native::build`]), as
//! an unprivileged user with a read-only root, writing only the layer, which is
//! bounded in size:
//! - Python: `pip install --target` for the runtime image's interpreter
//!   (CPython 3.11, Debian bookworm), binary wheels only (`--only-binary=:all:`),
//!   so no package's build code ever runs;
//! - Node.js: `npm install --ignore-scripts` of a `package.json` written
//!   from the merged list (with the function's `package-lock.json`, checked,
//!   when it has one), so no install script runs; a package that needs one
//!   (a native addon built or fetched at install time) is refused by name.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faas_common::contract::{BUILD_LAYER_DIR, BUILD_SCRATCH_DIR};
use faas_common::Language;
use faas_executor::native::build::{BuildJob, BuildSandbox, LiveLog, BUILD_CA_BUNDLE};
use sha2::{Digest, Sha256};
use tokio::process::Command;
use tokio::sync::Semaphore;

use crate::OrchestratorError;

mod inspect;

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

/// What to install: a language's merged, sorted dependency list, and the
/// function's lock file if it has one.
#[derive(Debug, Clone, Default)]
pub struct DepsRequest {
    /// Registry requirements, checked, sorted and without duplicates.
    pub specs: Vec<String>,
    /// A checked `package-lock.json` (Node.js only).
    pub lock: Option<Vec<u8>>,
}

impl DepsRequest {
    /// Nothing to install.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

/// A layer ready for a function version; it is safe from garbage collection
/// until this is dropped (by then a stored version refers to it, or nothing does).
#[derive(Debug)]
pub struct Installed {
    /// The layer's key (its directory under the deps root).
    pub sha: String,
    _lease: Lease,
}

/// Installs and finds dependency layers.
pub struct DepsInstaller {
    root: PathBuf,
    sandbox: Option<Arc<BuildSandbox>>,
    limits: DepsLimits,
    running: Semaphore,
    leases: Arc<Mutex<HashMap<String, usize>>>,
}

/// Keeps a directory under the deps root from garbage collection while held.
#[derive(Debug)]
struct Lease {
    name: String,
    leases: Arc<Mutex<HashMap<String, usize>>>,
}

impl Lease {
    fn new(leases: &Arc<Mutex<HashMap<String, usize>>>, name: &str) -> Lease {
        *leases
            .lock()
            .expect("leases lock")
            .entry(name.to_string())
            .or_default() += 1;
        Lease {
            name: name.to_string(),
            leases: leases.clone(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = self.leases.lock().expect("leases lock");
        if let Some(n) = leases.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                leases.remove(&self.name);
            }
        }
    }
}

/// Subdirectory of the deps root mapping request keys to layer keys.
const INDEX_DIR: &str = ".index";
/// Where the installer's input files (package.json, lock) are put, inside
/// the layer directory the sandbox binds; removed before the layer is kept.
const INPUT_DIR: &str = ".faas-input";

impl DepsInstaller {
    /// Layers live under `root`; installers run in `sandbox` (without one,
    /// functions cannot declare dependencies on this node).
    pub fn new(root: PathBuf, sandbox: Option<Arc<BuildSandbox>>, limits: DepsLimits) -> Self {
        DepsInstaller {
            root,
            sandbox,
            running: Semaphore::new(limits.concurrent.max(1)),
            limits,
            leases: Arc::default(),
        }
    }

    /// Host directory of layer `sha`.
    pub fn dir(&self, sha: &str) -> PathBuf {
        self.root.join(sha)
    }

    /// The layer `request` was installed into before, if it is still there.
    pub fn cached(&self, language: Language, request: &DepsRequest) -> Option<Installed> {
        let key = request_key(language, request);
        let sha = std::fs::read_to_string(self.root.join(INDEX_DIR).join(&key)).ok()?;
        let sha = sha.trim();
        let valid = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
        let lease = Lease::new(&self.leases, sha);
        (valid && self.dir(sha).is_dir()).then(|| Installed {
            sha: sha.to_string(),
            _lease: lease,
        })
    }

    /// Install `request` for `language` unless it was before; the installer's
    /// output goes to `live` as it comes. `None` when there is nothing to install.
    pub async fn install(
        &self,
        language: Language,
        request: &DepsRequest,
        live: Option<LiveLog>,
    ) -> Result<Option<Installed>, OrchestratorError> {
        if request.is_empty() {
            return Ok(None);
        }
        faas_common::deps::validate_count(
            language,
            &request.specs,
            faas_common::manifest::MAX_MERGED,
        )
        .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        if let Some(found) = self.cached(language, request) {
            return Ok(Some(found));
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
        if let Some(found) = self.cached(language, request) {
            return Ok(Some(found));
        }
        tokio::fs::create_dir_all(self.root.join(INDEX_DIR))
            .await
            .map_err(|e| OrchestratorError::Internal(format!("create deps dir: {e}")))?;
        let tmp = tempdir_in(&self.root)?;
        let _tmp_lease = Lease::new(&self.leases, &tmp.name());
        self.write_inputs(language, request, tmp.path())?;
        self.run_installer(sandbox, language, request, tmp.path(), live)
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
        let path = tmp.path().to_path_buf();
        let scan = tokio::task::spawn_blocking(move || inspect::layer(language, &path))
            .await
            .map_err(|e| OrchestratorError::Internal(format!("scan task: {e}")))?;
        let resolved = scan.map_err(OrchestratorError::Invalid)?;
        let sha = resolved_key(language, &resolved);
        let lease = Lease::new(&self.leases, &sha);
        let dest = self.dir(&sha);
        if dest.is_dir() {
            // Another request resolved to the same packages: share its layer.
            drop(tmp);
        } else {
            let staged = tmp.keep();
            if let Err(e) = std::fs::rename(&staged, &dest) {
                let _ = std::fs::remove_dir_all(&staged);
                if !dest.is_dir() {
                    return Err(OrchestratorError::Internal(format!("store deps: {e}")));
                }
            }
        }
        let index = self.root.join(INDEX_DIR);
        let entry = index.join(request_key(language, request));
        let staged_entry = index.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&staged_entry, &sha)
            .and_then(|()| std::fs::rename(&staged_entry, &entry))
            .map_err(|e| OrchestratorError::Internal(format!("index deps: {e}")))?;
        tracing::info!(%language, layer = %sha, "installed {} packages", resolved.len());
        Ok(Some(Installed { sha, _lease: lease }))
    }

    /// The installer's input files, where the sandbox's script finds them.
    fn write_inputs(
        &self,
        language: Language,
        request: &DepsRequest,
        layer: &Path,
    ) -> Result<(), OrchestratorError> {
        if language != Language::Node {
            return Ok(());
        }
        let input = layer.join(INPUT_DIR);
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(input.join(name), bytes)
                .map_err(|e| OrchestratorError::Internal(format!("write {name}: {e}")))
        };
        std::fs::create_dir(&input)
            .map_err(|e| OrchestratorError::Internal(format!("create installer input: {e}")))?;
        let mut dependencies = serde_json::Map::new();
        for spec in &request.specs {
            let (name, range) = match spec[1..].find('@') {
                Some(i) => (&spec[..i + 1], spec[i + 2..].trim()),
                None => (spec.as_str(), "latest"),
            };
            dependencies.insert(name.to_string(), range.into());
        }
        let package = serde_json::json!({
            "name": "faas-function-dependencies",
            "private": true,
            "dependencies": dependencies,
        });
        write(
            faas_common::manifest::PACKAGE_JSON,
            package.to_string().as_bytes(),
        )?;
        if let Some(lock) = &request.lock {
            write(faas_common::manifest::PACKAGE_LOCK_JSON, lock)?;
        }
        Ok(())
    }

    async fn run_installer(
        &self,
        sandbox: &BuildSandbox,
        language: Language,
        request: &DepsRequest,
        target: &Path,
        live: Option<LiveLog>,
    ) -> Result<(), OrchestratorError> {
        let (tool, script, args) = match language {
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
                         --no-input --progress-bar off --only-binary=:all: --implementation cp \
                         --python-version {PYTHON_VERSION} {} --target {BUILD_SCRATCH_DIR} -- \"$@\"\n\
                         find {BUILD_SCRATCH_DIR} -mindepth 1 ! -type l -exec chmod a+rX {{}} +\n\
                         cp -a {BUILD_SCRATCH_DIR}/. {BUILD_LAYER_DIR}/\n",
                        platforms.join(" ")
                    ),
                    request.specs.clone(),
                )
            }
            Language::Node => {
                // With the function's lock npm installs exactly what it pins.
                let lock = if request.lock.is_some() {
                    format!(
                        "cp {BUILD_LAYER_DIR}/{INPUT_DIR}/package-lock.json {BUILD_SCRATCH_DIR}/\n"
                    )
                } else {
                    String::new()
                };
                let lock_flag = if request.lock.is_some() {
                    ""
                } else {
                    "--no-package-lock "
                };
                (
                    "npm",
                    format!(
                        "set -e\n\
                         cp {BUILD_LAYER_DIR}/{INPUT_DIR}/package.json {BUILD_SCRATCH_DIR}/\n\
                         {lock}\
                         npm install --no-audit --no-fund --ignore-scripts --omit=dev \
                         {lock_flag}--no-update-notifier --cache /tmp/.npm \
                         --prefix {BUILD_SCRATCH_DIR}\n\
                         find {BUILD_SCRATCH_DIR} -mindepth 1 ! -type l -exec chmod a+rX {{}} +\n\
                         cp -a {BUILD_SCRATCH_DIR}/. {BUILD_LAYER_DIR}/\n"
                    ),
                    Vec::new(),
                )
            }
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
                args,
                env,
                output: target.to_path_buf(),
                scratch_mb: self.limits.max_layer_mb,
                memory_mb: self.limits.max_layer_mb + 1024,
                timeout: self.limits.timeout,
                live,
            })
            .await
            .map_err(|e| OrchestratorError::Internal(format!("build sandbox: {e}")))?;
        // Root owns the input directory: the installer could not remove it.
        let _ = std::fs::remove_dir_all(target.join(INPUT_DIR));
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
            Some(_) => Err(OrchestratorError::Invalid(failure_reason(
                language,
                tool,
                &outcome.log,
            ))),
        }
    }

    /// Remove every layer whose key is not in `keep`, unfinished ones and
    /// index entries of removed layers; what an install in progress holds
    /// (a lease) stays.
    pub fn collect(&self, keep: &HashSet<String>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let leased: HashSet<String> = self
            .leases
            .lock()
            .expect("leases lock")
            .keys()
            .cloned()
            .collect();
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) || leased.contains(&name) || name == INDEX_DIR {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!("cannot remove layer {name}: {e}"),
            }
        }
        if let Ok(index) = std::fs::read_dir(self.root.join(INDEX_DIR)) {
            for entry in index.flatten() {
                let target = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let target = target.trim();
                if !keep.contains(target) && !leased.contains(target) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        removed
    }
}

/// The client's explanation of a failed install: which package, and why.
fn failure_reason(language: Language, tool: &str, log: &str) -> String {
    if language == Language::Python {
        const NO_MATCH: &str = "No matching distribution found for ";
        if let Some(req) = log
            .lines()
            .find_map(|l| l.split_once(NO_MATCH).map(|(_, r)| r.trim()))
        {
            return format!(
                "dependency {:?} cannot be installed: the index has no wheel of it for \
                 CPython {PYTHON_VERSION} on manylinux x86_64 (the runtime image's platform), and \
                 source distributions are never built here; pin a version that ships such a \
                 wheel (or check the name)",
                faas_common::contract::truncate(req, 200)
            );
        }
    }
    let reason = log
        .lines()
        .rev()
        .find(|l| l.contains("ERROR") || l.contains("ERR!"))
        .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("no output")
        .trim();
    format!(
        "dependency install failed ({tool}): {}",
        faas_common::contract::truncate(reason, 1024)
    )
}

/// Removes its directory on drop unless kept.
struct TempDir(Option<PathBuf>);

impl TempDir {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("present until kept")
    }

    fn name(&self) -> String {
        self.path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
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

/// Bump when the installer's invocation changes what a request installs.
const INSTALLER_VERSION: &str = "2";

/// The index key of a request: language, interpreter, installer, the list
/// and the lock.
fn request_key(language: Language, request: &DepsRequest) -> String {
    let mut h = Sha256::new();
    h.update(b"request\0");
    h.update(INSTALLER_VERSION);
    h.update([0]);
    h.update(language.as_str());
    if language == Language::Python {
        h.update(PYTHON_VERSION);
    }
    for d in &request.specs {
        h.update([0]);
        h.update(d.as_bytes());
    }
    if let Some(lock) = &request.lock {
        h.update(b"\0lock\0");
        h.update(Sha256::digest(lock));
    }
    hex::encode(h.finalize())
}

/// The layer key: language, interpreter and every resolved package.
fn resolved_key(language: Language, resolved: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(b"resolved\0");
    h.update(language.as_str());
    if language == Language::Python {
        h.update(PYTHON_VERSION);
    }
    for d in resolved {
        h.update([0]);
        h.update(d.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_language_list_and_lock() {
        let req = |specs: &[&str], lock: Option<&str>| DepsRequest {
            specs: specs.iter().map(|s| s.to_string()).collect(),
            lock: lock.map(|l| l.as_bytes().to_vec()),
        };
        let a = request_key(Language::Python, &req(&["a", "b"], None));
        assert_ne!(a, request_key(Language::Node, &req(&["a", "b"], None)));
        assert_ne!(a, request_key(Language::Python, &req(&["a"], None)));
        let n = request_key(Language::Node, &req(&["a"], Some("{}")));
        assert_ne!(n, request_key(Language::Node, &req(&["a"], Some("{ }"))));
        let r = resolved_key(Language::Python, &["a==1".into()]);
        assert_ne!(r, resolved_key(Language::Python, &["a==2".into()]));
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
            let request = DepsRequest {
                specs: vec![bad.to_string()],
                lock: None,
            };
            let err = deps
                .install(Language::Python, &request, None)
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
