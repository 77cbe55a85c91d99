//! One native sandbox instance and the guard that removes it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::cgroup::{CgroupLayout, Freezer};
use super::spare::Slots;
use super::spec::{self, InstanceIds, InstanceMounts, Tmp};
use super::NativeConfig;
use crate::ephemeral::{EphemeralDisk, TmpKind};
use crate::ids::IdSlot;
use crate::instance::{AgentInstance, Backend, FreezeSwitch};
use crate::socket::AgentListener;
use crate::views::View;
use crate::{ExecutorError, InstanceSpec};

/// Lines of runc/agent stderr kept for error messages.
const STDERR_TAIL: usize = 20;

/// Cleanups that guards dropped without `destroy` run on threads of their
/// own; the sandbox's shutdown waits for them.
#[derive(Default)]
pub(super) struct Cleanups(Mutex<Vec<std::thread::JoinHandle<()>>>);

impl Cleanups {
    /// Wait for every cleanup started so far.
    pub(super) fn join_all(&self) {
        let pending = std::mem::take(&mut *self.0.lock().expect("cleanups lock"));
        for handle in pending {
            let _ = handle.join();
        }
    }
}

/// Owns everything an instance has on the host: the `runc run` process (and so
/// the container), its runc state, its cgroups (runc removes them on delete) and
/// its bundle directory. Dropping it without [`InstanceGuard::destroy`] still
/// cleans up, from a background thread.
pub(super) struct InstanceGuard {
    id: String,
    dir: PathBuf,
    runc: PathBuf,
    state_dir: PathBuf,
    cgroup_parent: String,
    cleanups: Arc<Cleanups>,
    pub(super) child: Option<Child>,
    /// The instance's host ids: free again only once nothing runs under them.
    pub(super) ids: Option<IdSlot>,
    /// The code and dependency views it mounts, released after it is gone.
    pub(super) views: Vec<View>,
    /// Its agent socket directory (outside the bundle; see `NativeConfig`).
    pub(super) socket_dir: Option<PathBuf>,
    /// Its network link and egress rules, when it has an allow-list.
    pub(super) network: Option<faas_netpolicy::Attachment>,
    /// Its `/tmp` disk, when it has one; removed after the container.
    pub(super) tmp: Option<EphemeralDisk>,
    /// Its code and dependency slots, when it was pre-started; unmounted
    /// after the container, before the views bound there are released.
    pub(super) slots: Option<Slots>,
    done: bool,
}

impl InstanceGuard {
    /// A guard for container `id` of bundle `dir`, created before either
    /// exists; a cleanup it has to run when dropped is registered in `cleanups`.
    pub(super) fn new(
        id: &str,
        dir: &Path,
        config: &NativeConfig,
        cleanups: Arc<Cleanups>,
    ) -> Self {
        InstanceGuard {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            runc: config.runc.clone(),
            state_dir: config.state_dir.clone(),
            cgroup_parent: config.cgroup_parent.clone(),
            cleanups,
            child: None,
            ids: None,
            views: Vec::new(),
            socket_dir: None,
            network: None,
            tmp: None,
            slots: None,
            done: false,
        }
    }

    /// Remove the container, its bundle directory, and release its ids.
    pub(super) async fn destroy(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let _ = Command::new(&self.runc)
            .arg("--root")
            .arg(&self.state_dir)
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if let Some(mut child) = self.child.take() {
            // runc exits once its container is gone; kill it if it lingers.
            if tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        if let Some(network) = self.network.take() {
            network.release().await;
        }
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        if let Some(sockets) = self.socket_dir.take() {
            let _ = tokio::fs::remove_dir_all(sockets).await;
        }
        if let Some(slots) = self.slots.take() {
            let _ = tokio::task::spawn_blocking(move || drop(slots)).await;
        }
        self.views.clear();
        if let Some(tmp) = self.tmp.take() {
            // Unmounting blocks: off the async threads.
            let _ = tokio::task::spawn_blocking(move || drop(tmp)).await;
        }
        self.ids = None;
    }
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (runc, state, id, dir, parent) = (
            self.runc.clone(),
            self.state_dir.clone(),
            self.id.clone(),
            self.dir.clone(),
            self.cgroup_parent.clone(),
        );
        let child = self.child.take();
        let ids = self.ids.take();
        let views = std::mem::take(&mut self.views);
        let socket_dir = self.socket_dir.take();
        let network = self.network.take();
        let tmp = self.tmp.take();
        let slots = self.slots.take();
        // Drop cannot await; a plain thread keeps this off the async runtime.
        let cleanup = std::thread::spawn(move || {
            // `runc run` first: dropped mid-start it may still be creating the
            // container, which a delete issued now would miss.
            if let Some(mut child) = child {
                let _ = child.start_kill();
                for _ in 0..200 {
                    if !matches!(child.try_wait(), Ok(None)) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = std::process::Command::new(&runc)
                .arg("--root")
                .arg(&state)
                .args(["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            // Its own thread removes the link and the rules.
            drop(network);
            // What a half-created container left in its cgroups.
            super::cgroup::sweep_instance(&parent, &id);
            let _ = std::fs::remove_dir_all(&dir);
            if let Some(sockets) = socket_dir {
                let _ = std::fs::remove_dir_all(sockets);
            }
            drop(slots);
            drop(views);
            drop(tmp);
            drop(ids);
        });
        let mut pending = self.cleanups.0.lock().expect("cleanups lock");
        pending.retain(|h| !h.is_finished());
        pending.push(cleanup);
    }
}

/// The native side of an instance: its guard, its host id range, its memory
/// cgroup for OOM checks and its freezer.
pub struct NativeBackend {
    guard: InstanceGuard,
    cgroups: CgroupLayout,
    memory_dir: Option<PathBuf>,
    freezer: Option<Freezer>,
    oom_seen: u64,
    limit_hits_seen: u64,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// A native instance.
pub(super) type AgentInstanceOf = AgentInstance<NativeBackend>;

/// Start a native instance of `spec` on `rootfs`; a pre-started one, its
/// code and dependency slots empty, when `spare` is set.
pub(super) async fn start(
    starter: &super::Starter,
    rootfs: &Path,
    spec: InstanceSpec,
    spare: bool,
) -> Result<AgentInstance<NativeBackend>, ExecutorError> {
    let super::Starter {
        config,
        cgroups,
        cleanups,
        views,
        ephemeral,
        ..
    } = starter;
    let id = format!("faas-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let dir = config.instances_dir.join(&id);
    // The guard exists before anything is created, so every early return cleans up.
    let mut guard = InstanceGuard::new(&id, &dir, config, cleanups.clone());
    let ids = guard.ids.insert(config.host_ids.allocate()?);
    let (host_base, host_uid) = (ids.host_base(), ids.sandbox_host_uid());
    let socket_dir = guard
        .socket_dir
        .insert(config.sockets_dir.join(&id))
        .clone();
    let listener = AgentListener::bind(&socket_dir, host_uid).await?;
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(ExecutorError::io(format!("create {}", dir.display())))?;
    let view = |path: Option<PathBuf>, label: &'static str| {
        let views = views.clone();
        async move {
            match path {
                Some(p) => views.acquire(&p, label).await.map(Some),
                None => Ok(None),
            }
        }
    };
    let code = view(spec.code_dir.clone(), "code").await?;
    let deps = view(spec.deps_dir.clone(), "deps").await?;
    let (code_dir, deps_dir) = match spare {
        // Empty until the instance is specialised (see `spare`).
        true => {
            let root = config.prestart.slots_dir.join(&id);
            let slots = tokio::task::spawn_blocking(move || Slots::create(root))
                .await
                .map_err(|e| ExecutorError::Start(format!("slots task: {e}")))?;
            let slots = guard
                .slots
                .insert(slots.map_err(ExecutorError::io("mount the code and dependency slots"))?);
            (Some(slots.code()), Some(slots.deps()))
        }
        false => (
            code.as_ref().map(|v| v.path().to_path_buf()),
            deps.as_ref().map(|v| v.path().to_path_buf()),
        ),
    };
    guard.views.extend(code.into_iter().chain(deps));
    let tmp_dir = match TmpKind::of(spec.ephemeral_mb, config.tmp_mb) {
        TmpKind::Memory(_) => None,
        TmpKind::Disk(mb) => {
            let disk = guard.tmp.insert(ephemeral.mounted(&id, mb).await?);
            Some(disk.path().to_path_buf())
        }
    };
    // Names resolve now and stay pinned for the instance's life.
    let egress = crate::egress::prepare(config.egress.as_ref(), &spec.egress, &dir).await?;

    let oci = spec::build(
        config,
        &id,
        spec.memory_mb,
        &InstanceMounts {
            rootfs,
            socket_dir: &socket_dir,
            code_dir: code_dir.as_deref(),
            deps_dir: deps_dir.as_deref(),
            hosts_file: egress.as_ref().map(|e| e.hosts.as_path()),
            slots: guard.slots.is_some(),
            tmp: tmp_dir
                .as_deref()
                .map_or(Tmp::Memory(spec.ephemeral_mb), Tmp::Disk),
        },
        InstanceIds {
            host_base,
            user_namespace: config.user_namespace,
        },
    )?;
    let json = serde_json::to_vec(&oci)
        .map_err(|e| ExecutorError::Start(format!("serialize spec: {e}")))?;
    tokio::fs::write(dir.join("config.json"), json)
        .await
        .map_err(ExecutorError::io("write config.json"))?;

    let mut child = Command::new(&config.runc)
        .arg("--root")
        .arg(&config.state_dir)
        .args(["run", "--no-new-keyring", "--bundle"])
        .arg(&dir)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ExecutorError::Start(format!("cannot run {}: {e}", config.runc.display())))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr_pipe = child.stderr.take().expect("piped");
    let (exited_tx, exited_rx) = tokio::sync::oneshot::channel::<()>();
    guard.child = Some(child);
    let stderr = Arc::new(Mutex::new(VecDeque::new()));
    tokio::spawn(keep_tail(stderr_pipe, stderr.clone()));

    tokio::spawn(drain(stdout, exited_tx));
    let exited = async {
        let _ = exited_rx.await;
        // runc exited before the agent connected: give stderr a moment to arrive.
        tokio::time::sleep(Duration::from_millis(20)).await;
        stderr_tail(&stderr)
    };
    let stream = listener
        .accept(config.start_timeout, exited, || async {
            stderr_tail(&stderr)
        })
        .await?;
    // The agent is up and has not loaded user code yet: open the allow-list
    // to its network namespace now.
    if let Some(egress) = &egress {
        let pid = container_pid(config, &id).await?;
        guard.network = Some(egress.attach(pid).await?);
    }
    let cgroup = format!("/{}/{}", config.cgroup_parent, id);
    let backend = NativeBackend {
        guard,
        cgroups: cgroups.clone(),
        memory_dir: cgroups.memory_dir(&cgroup),
        freezer: Freezer::for_cgroup(&cgroup),
        oom_seen: 0,
        limit_hits_seen: 0,
        stderr,
    };
    AgentInstance::start(
        backend,
        stream,
        spec.memory_mb,
        spec.init,
        config.start_timeout,
    )
    .await
}

impl NativeBackend {
    /// The host side of specialising a pre-started instance: bind the views
    /// into its slots and give it the function's memory limit.
    pub(super) async fn specialise(
        &mut self,
        code: Option<View>,
        deps: Option<View>,
        memory_mb: u32,
        swap_accounting: bool,
    ) -> Result<(), ExecutorError> {
        let Some(slots) = self.guard.slots.take() else {
            return Err(ExecutorError::Start("not a pre-started instance".into()));
        };
        let paths = (
            code.as_ref().map(|v| v.path().to_path_buf()),
            deps.as_ref().map(|v| v.path().to_path_buf()),
        );
        // Held by the guard before they are bound: it unmounts the slots first.
        self.guard.views.extend(code.into_iter().chain(deps));
        let (cgroups, memory_dir) = (self.cgroups.clone(), self.memory_dir.clone());
        let (slots, done) = tokio::task::spawn_blocking(move || {
            let done = slots
                .fill(paths.0.as_deref(), paths.1.as_deref())
                .map_err(ExecutorError::io("bind the views into the slots"))
                .and_then(|()| match &memory_dir {
                    Some(dir) => cgroups
                        .set_memory_limit(dir, u64::from(memory_mb) << 20, swap_accounting)
                        .map_err(ExecutorError::io("set the memory limit")),
                    None => Ok(()),
                });
            (slots, done)
        })
        .await
        .map_err(|e| ExecutorError::Start(format!("specialise task: {e}")))?;
        self.guard.slots = Some(slots);
        done
    }
}

#[async_trait]
impl Backend for NativeBackend {
    fn id(&self) -> &str {
        &self.guard.id
    }

    async fn oom_struck(&mut self) -> bool {
        let Some(dir) = &self.memory_dir else {
            return false;
        };
        let kills = self.cgroups.oom_kills(dir);
        let struck = kills > self.oom_seen;
        self.oom_seen = kills;
        struck
    }

    async fn limit_hit(&mut self) -> bool {
        let Some(dir) = &self.memory_dir else {
            return false;
        };
        let hits = self.cgroups.limit_hits(dir);
        let hit = hits > self.limit_hits_seen;
        self.limit_hits_seen = hits;
        hit
    }

    async fn diagnose(&mut self) -> String {
        stderr_tail(&self.stderr)
    }

    fn freezer(&self) -> Option<Arc<dyn FreezeSwitch>> {
        self.freezer
            .clone()
            .map(|f| Arc::new(f) as Arc<dyn FreezeSwitch>)
    }

    async fn destroy(&mut self) {
        self.guard.destroy().await;
    }
}

/// The host pid of container `id`'s first process (`runc state`).
async fn container_pid(config: &NativeConfig, id: &str) -> Result<u32, ExecutorError> {
    let out = Command::new(&config.runc)
        .arg("--root")
        .arg(&config.state_dir)
        .args(["state", id])
        .output()
        .await
        .map_err(ExecutorError::io("runc state"))?;
    let state: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| ExecutorError::Start(format!("runc state {id}: {e}")))?;
    state["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| ExecutorError::Start(format!("runc state {id}: no pid")))
}

/// Read the container's output until runc exits (so a chatty process never
/// blocks on a full pipe), then say so.
async fn drain(stdout: impl AsyncRead + Unpin, exited: tokio::sync::oneshot::Sender<()>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(target: "faas_executor::native", "sandbox: {line}");
    }
    let _ = exited.send(());
}

pub(super) async fn keep_tail(pipe: impl AsyncRead + Unpin, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(target: "faas_executor::native", "sandbox: {line}");
        let mut t = tail.lock().expect("tail lock");
        if t.len() == STDERR_TAIL {
            t.pop_front();
        }
        t.push_back(line);
    }
}

pub(super) fn stderr_tail(tail: &Mutex<VecDeque<String>>) -> String {
    let t = tail.lock().expect("tail lock");
    if t.is_empty() {
        return "no output".into();
    }
    t.iter().cloned().collect::<Vec<_>>().join(" | ")
}

/// Delete every container in our runc state directory and every bundle directory:
/// after a crash of the serving process these belong to no one.
pub(super) async fn reap_leftovers(config: &NativeConfig) -> Result<usize, ExecutorError> {
    let out = Command::new(&config.runc)
        .arg("--root")
        .arg(&config.state_dir)
        .args(["list", "--quiet"])
        .output()
        .await
        .map_err(ExecutorError::io("runc list"))?;
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    for id in &ids {
        let _ = Command::new(&config.runc)
            .arg("--root")
            .arg(&config.state_dir)
            .args(["delete", "--force", id])
            .status()
            .await;
    }
    let parent = config.cgroup_parent.clone();
    let swept = tokio::task::spawn_blocking(move || {
        let swept = super::cgroup::sweep_children(&parent);
        super::cgroup::remove_parent(&parent);
        swept
    })
    .await
    .unwrap_or(0);
    let mut dirs = 0;
    for parent in [&config.instances_dir, &config.sockets_dir] {
        if let Ok(mut entries) = tokio::fs::read_dir(parent).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
                dirs += 1;
            }
        }
    }
    Ok(ids.len().max(dirs).max(swept))
}
