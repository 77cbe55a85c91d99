//! The build sandbox: where package installers (pip, npm) run to install a
//! function's dependencies. They download from registries, so they need the
//! network; everything else is as tight as a function's sandbox.
//!
//! - its own pid, mount, ipc, uts and cgroup namespaces and (where the kernel
//!   allows) a user namespace over a host id range of its own; no capability,
//!   no-new-privileges, the sandbox seccomp allowlist;
//! - a builder image (the language's interpreter and installer, from Debian)
//!   as a read-only root, with nothing of the host but DNS settings and the
//!   CA bundle, both read-only;
//! - the installer writes into a tmpfs of the layer's size limit
//!   ([`BUILD_SCRATCH_DIR`]), and the finished layer is copied to the one
//!   writable host directory ([`BUILD_LAYER_DIR`]);
//! - memory, CPU and process limits, and a deadline after which it is killed.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faas_common::contract::{BUILD_LAYER_DIR, BUILD_SCRATCH_DIR, FUNCTION_UID};
use faas_common::Language;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::instance::{Cleanups, InstanceGuard};
use super::NativeConfig;
use crate::ids::SLOT_SIZE;
use crate::{ExecutorError, ImageRef};

/// Printed by the sandbox's shell before the installer runs: its absence in
/// a failed run's output means the sandbox itself failed, not the installer.
const STARTED: &str = "FAAS_BUILD_STARTED";
/// The CA bundle, inside the sandbox, that installers are pointed at.
pub const BUILD_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Most bytes of installer output kept.
const LOG_LIMIT: usize = 64 * 1024;

/// One installer run.
#[derive(Debug, Clone)]
pub struct BuildJob {
    /// Whose installer (the builder image of this language).
    pub language: Language,
    /// `sh -c` script, run in [`BUILD_SCRATCH_DIR`]; `args` follow as `$1`, `$2`, ...
    pub script: String,
    /// Arguments of the script (never parsed by a shell).
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Host directory that receives the layer (bound at [`BUILD_LAYER_DIR`]).
    pub output: PathBuf,
    /// Size of the scratch tmpfs at [`BUILD_SCRATCH_DIR`]: the layer's size limit.
    pub scratch_mb: u32,
    /// Memory limit of the whole sandbox (scratch included), MiB.
    pub memory_mb: u32,
    /// Killed after this long.
    pub timeout: Duration,
    /// Receives the installer's output as it is printed (progress for a
    /// waiting client); the outcome's log has it all the same.
    pub live: Option<LiveLog>,
}

/// What receives each chunk of output.
pub type OnOutput = dyn Fn(&[u8]) + Send + Sync;

/// A callback given each chunk of an installer's output as it arrives.
#[derive(Clone)]
pub struct LiveLog(pub Arc<OnOutput>);

impl std::fmt::Debug for LiveLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveLog")
    }
}

/// How an installer run ended.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// Exit status; `None` when it was killed.
    pub exit_code: Option<i32>,
    /// What it printed (stdout and stderr, the last bytes).
    pub log: String,
}

/// Runs installers in builder images through `runc`.
pub struct BuildSandbox {
    config: NativeConfig,
    cleanups: Arc<Cleanups>,
    images: HashMap<Language, ImageRef>,
    ca_bundle: Option<PathBuf>,
    resolv_conf: Option<PathBuf>,
}

impl BuildSandbox {
    /// A build sandbox using the builder image of each language in `images`.
    /// `config` gives runc, its state and bundle directories (use ones apart
    /// from the function sandbox's), the cgroup parent and the host ids.
    pub async fn new(
        config: NativeConfig,
        images: HashMap<Language, ImageRef>,
    ) -> Result<Self, ExecutorError> {
        for dir in [&config.state_dir, &config.instances_dir] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(ExecutorError::io(format!("create {}", dir.display())))?;
        }
        let existing = |p: &str| Some(PathBuf::from(p)).filter(|p| p.is_file());
        Ok(BuildSandbox {
            config,
            cleanups: Arc::default(),
            images,
            ca_bundle: existing("/etc/ssl/certs/ca-certificates.crt"),
            resolv_conf: existing("/etc/resolv.conf"),
        })
    }

    /// Remove build containers a crashed predecessor (or an abandoned
    /// install) left.
    pub async fn reap_leftovers(&self) -> Result<usize, ExecutorError> {
        let cleanups = self.cleanups.clone();
        let _ = tokio::task::spawn_blocking(move || cleanups.join_all()).await;
        super::instance::reap_leftovers(&self.config).await
    }

    /// Whether there is a builder image for `language`.
    pub fn supports(&self, language: Language) -> bool {
        self.images.contains_key(&language)
    }

    /// Run `job` to completion (or its deadline). An installer that fails is
    /// an outcome, not an error; errors are the sandbox's own failures.
    pub async fn run(&self, job: BuildJob) -> Result<BuildOutcome, ExecutorError> {
        let image = self
            .images
            .get(&job.language)
            .ok_or_else(|| ExecutorError::ImageMissing(format!("{}-build", job.language)))?;
        let id = format!("faas-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let dir = self.config.instances_dir.join(&id);
        let mut guard = InstanceGuard::new(&id, &dir, &self.config, self.cleanups.clone());
        let result = self.run_in(&mut guard, &id, &dir, image, job).await;
        guard.destroy().await;
        result
    }

    async fn run_in(
        &self,
        guard: &mut InstanceGuard,
        id: &str,
        dir: &Path,
        image: &ImageRef,
        job: BuildJob,
    ) -> Result<BuildOutcome, ExecutorError> {
        let ids = guard.ids.insert(self.config.host_ids.allocate()?);
        let host_base = ids.host_base();
        let user_namespace = self.config.user_namespace;
        let uid = if user_namespace {
            FUNCTION_UID
        } else {
            host_base + FUNCTION_UID
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(ExecutorError::io(format!("create {}", dir.display())))?;
        std::os::unix::fs::chown(
            &job.output,
            Some(host_base + FUNCTION_UID),
            Some(host_base + FUNCTION_UID),
        )
        .map_err(ExecutorError::io("chown the layer directory"))?;

        let spec = self.spec(id, image, &job, uid, host_base, user_namespace);
        tokio::fs::write(dir.join("config.json"), spec.to_string())
            .await
            .map_err(ExecutorError::io("write config.json"))?;
        let mut child = Command::new(&self.config.runc)
            .arg("--root")
            .arg(&self.config.state_dir)
            .args(["run", "--no-new-keyring", "--bundle"])
            .arg(dir)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ExecutorError::Start(format!("cannot run {}: {e}", self.config.runc.display()))
            })?;
        let log = Arc::new(Mutex::new(VecDeque::<u8>::new()));
        let out = tokio::spawn(capture(
            child.stdout.take().expect("piped"),
            log.clone(),
            job.live.clone(),
        ));
        let err = tokio::spawn(capture(
            child.stderr.take().expect("piped"),
            log.clone(),
            job.live.clone(),
        ));
        guard.child = Some(child);
        let child = guard.child.as_mut().expect("just set");
        let status = tokio::time::timeout(job.timeout, child.wait()).await;
        let exit_code = match status {
            Ok(Ok(status)) => status.code(),
            Ok(Err(e)) => return Err(ExecutorError::io("wait for the installer")(e)),
            // The guard's destroy kills it.
            Err(_) => None,
        };
        if exit_code.is_some() {
            let _ = tokio::join!(out, err);
        }
        let log = {
            let log = log.lock().expect("log lock");
            String::from_utf8_lossy(&log.iter().copied().collect::<Vec<u8>>()).into_owned()
        };
        if exit_code.is_some_and(|c| c != 0) && !log.contains(STARTED) {
            // runc's own failure: its message names host paths, which are
            // for the operator's log, not for the client.
            tracing::error!("build sandbox failed to start: {log}");
            return Err(ExecutorError::Start(
                "the build sandbox failed to start (see the server log)".into(),
            ));
        }
        let log = match exit_code {
            None => format!(
                "{log}\n[killed after {}s, the install time limit]",
                job.timeout.as_secs()
            ),
            Some(_) => log.replacen(&format!("{STARTED}\n"), "", 1),
        };
        Ok(BuildOutcome { exit_code, log })
    }

    fn spec(
        &self,
        id: &str,
        image: &ImageRef,
        job: &BuildJob,
        uid: u32,
        host_base: u32,
        user_namespace: bool,
    ) -> serde_json::Value {
        let memory = u64::from(job.memory_mb) * 1024 * 1024;
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc",
                   "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                   "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=16m"]}),
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777", "size=512m"]}),
            json!({"destination": BUILD_SCRATCH_DIR, "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777", format!("size={}m", job.scratch_mb)]}),
            json!({"destination": BUILD_LAYER_DIR, "type": "bind", "source": job.output,
                   "options": ["rbind", "nosuid", "nodev", "noexec"]}),
        ];
        let ro_file = |dest: &str, src: &Path| {
            json!({"destination": dest, "type": "bind", "source": src,
                   "options": ["bind", "ro", "nosuid", "nodev", "noexec"]})
        };
        if let Some(ca) = &self.ca_bundle {
            mounts.push(ro_file(BUILD_CA_BUNDLE, ca));
        }
        if let Some(resolv) = &self.resolv_conf {
            mounts.push(ro_file("/etc/resolv.conf", resolv));
        }
        let mut namespaces = vec![
            json!({"type": "pid"}),
            json!({"type": "ipc"}),
            json!({"type": "uts"}),
            json!({"type": "mount"}),
            json!({"type": "cgroup"}),
        ];
        let mut linux = json!({
            "cgroupsPath": format!("/{}/{}", self.config.cgroup_parent, id),
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": if self.config.swap_accounting {
                    json!({"limit": memory, "swap": memory})
                } else {
                    json!({"limit": memory})
                },
                "cpu": {"quota": self.config.cpu_quota_us, "period": 100_000u64},
                "pids": {"limit": 512},
            },
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"],
            "seccomp": faas_common::sandbox::oci_profile(),
        });
        if user_namespace {
            namespaces.push(json!({"type": "user"}));
            let map = json!([{"containerID": 0, "hostID": host_base, "size": SLOT_SIZE}]);
            linux["uidMappings"] = map.clone();
            linux["gidMappings"] = map;
        }
        linux["namespaces"] = serde_json::Value::Array(namespaces);
        let mut env: Vec<String> = crate::base_env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.extend(job.env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut args = vec![
            "/bin/sh".to_string(),
            "-c".into(),
            format!("echo {STARTED}\ncd {BUILD_SCRATCH_DIR}\n{}", job.script),
            "build".into(),
        ];
        args.extend(job.args.iter().cloned());
        json!({
            "ociVersion": "1.0.2",
            "root": {"path": image.rootfs, "readonly": true},
            "hostname": "faas-build",
            "process": {
                "terminal": false,
                "user": {"uid": uid, "gid": uid},
                "args": args,
                "env": env,
                "cwd": "/tmp",
                "capabilities": {"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096u64, "soft": 4096u64},
                            {"type": "RLIMIT_CORE", "hard": 0u64, "soft": 0u64}],
                "noNewPrivileges": true,
            },
            "mounts": mounts,
            "linux": linux,
        })
    }
}

/// Keep the last [`LOG_LIMIT`] bytes of a pipe.
async fn capture(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    log: Arc<Mutex<VecDeque<u8>>>,
    live: Option<LiveLog>,
) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Some(live) = &live {
            // The sandbox's own start marker is not the installer's output.
            let chunk = &buf[..n];
            match chunk.strip_prefix(format!("{STARTED}\n").as_bytes()) {
                Some(rest) => (live.0)(rest),
                None => (live.0)(chunk),
            }
        }
        let mut log = log.lock().expect("log lock");
        log.extend(&buf[..n]);
        let excess = log.len().saturating_sub(LOG_LIMIT);
        log.drain(..excess);
    }
}
