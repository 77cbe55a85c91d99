//! The Docker sandbox: the same runtime images (`docker import`ed from the
//! root filesystems), the same guest agent and the same guarantees as the
//! native sandbox, through a real `dockerd` (bollard).
//!
//! Every container carries the labels `faas.managed=true` and
//! `faas.owner=<owner>`; a server removes its own leftovers at start.
//!
//! Docker maps user namespaces per daemon, not per container, so each
//! container runs directly as a host uid of its own range ([`crate::ids`]),
//! under the same seccomp allowlist as every other sandbox kind.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions,
};
use bollard::Docker;
use faas_common::contract::{
    AGENT_PATH, AGENT_SOCKET_NAME, FUNCTION_UID, GUEST_CODE_DIR, GUEST_DEPS_DIR, GUEST_SOCKET_DIR,
};
use faas_common::Language;
use futures_util::StreamExt;
use tokio::sync::Mutex;

use crate::ephemeral::{EphemeralDisk, EphemeralDisks, TmpKind};
use crate::ids::{HostIds, IdSlot};
use crate::instance::{AgentInstance, Backend, FreezeSwitch};
use crate::native::cgroup::Freezer;
use crate::socket::AgentListener;
use crate::views::{View, Views};
use crate::{ExecutorError, ImageRef, Instance, InstanceSpec, Sandbox};

/// Label on every container we create.
pub const LABEL_MANAGED: &str = "faas.managed";
/// Label naming the server that owns a container.
pub const LABEL_OWNER: &str = "faas.owner";

/// Settings of the Docker sandbox.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Daemon socket (`unix:///path`); `None`: `DOCKER_HOST` or `/var/run/docker.sock`.
    pub host: Option<String>,
    /// Per-instance directories (the agent's socket): outside the data
    /// directory, since the container sees this path (as its mount's origin).
    pub instances_dir: PathBuf,
    /// Cached images of the read-only code and dependency views.
    pub views_dir: PathBuf,
    /// Where the views are mounted.
    pub views_mounts: PathBuf,
    /// Value of the `faas.owner` label: which server's containers are whose.
    pub owner: String,
    /// Host id ranges, one per container.
    pub host_ids: HostIds,
    /// Most processes per container.
    pub pids_limit: i64,
    /// CPUs per container (`--cpus`).
    pub cpus: f64,
    /// The largest `/tmp` kept in memory, MiB: a function's `ephemeral_mb`
    /// up to it is a tmpfs (capped at the memory limit, to which it is
    /// charged), above it a disk of the container's own ([`crate::ephemeral`]).
    pub tmp_mb: u32,
    /// Where containers' ephemeral-storage disks live and are mounted (the
    /// daemon must see the host's filesystem: a local daemon).
    pub ephemeral_dir: PathBuf,
    /// How long a container may take to start its agent.
    pub start_timeout: Duration,
    /// The node's egress enforcement; without it, functions with an egress
    /// allow-list are refused.
    pub egress: Option<Arc<faas_netpolicy::Egress>>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: None,
            instances_dir: PathBuf::from("/run/faas/sockets/docker"),
            views_dir: PathBuf::from("/var/lib/faas/views"),
            views_mounts: PathBuf::from("/run/faas/views/docker"),
            owner: "default".into(),
            host_ids: HostIds::default(),
            pids_limit: 128,
            cpus: 1.0,
            tmp_mb: crate::ephemeral::TMPFS_MAX_MB,
            ephemeral_dir: PathBuf::from("/run/faas/ephemeral/docker"),
            start_timeout: Duration::from_secs(30),
            egress: None,
        }
    }
}

/// Starts Docker containers as sandbox instances.
pub struct DockerSandbox {
    docker: Docker,
    config: DockerConfig,
    images: HashMap<Language, ImageRef>,
    /// Images known to be in the daemon; cleared for one when it goes missing.
    imported: Mutex<HashSet<Language>>,
    /// Containers whose removal failed (daemon down); retried at the next start.
    orphans: Orphans,
    views: Arc<Views>,
    ephemeral: EphemeralDisks,
}

type Orphans = Arc<std::sync::Mutex<Vec<String>>>;

impl DockerSandbox {
    /// A sandbox talking to the daemon at `config.host`. Does not need the daemon
    /// to be up yet: images are imported when first needed.
    pub async fn new(
        config: DockerConfig,
        images: HashMap<Language, ImageRef>,
    ) -> Result<Self, ExecutorError> {
        let docker = match &config.host {
            Some(h) => Docker::connect_with_unix(h, 120, bollard::API_DEFAULT_VERSION),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(|e| ExecutorError::Start(format!("cannot use the Docker daemon: {e}")))?;
        tokio::fs::create_dir_all(&config.instances_dir)
            .await
            .map_err(ExecutorError::io(format!(
                "create {}",
                config.instances_dir.display()
            )))?;
        Ok(DockerSandbox {
            views: Views::new(config.views_dir.clone(), config.views_mounts.clone()),
            ephemeral: EphemeralDisks::new(config.ephemeral_dir.clone()),
            docker,
            config,
            images,
            imported: Mutex::new(HashSet::new()),
            orphans: Orphans::default(),
        })
    }

    /// Whether the daemon answers.
    pub async fn ping(&self) -> Result<(), ExecutorError> {
        self.docker.ping().await.map(|_| ()).map_err(daemon_error)
    }

    /// The tag of `lang`'s image, importing the root filesystem if the daemon lacks it.
    async fn image(&self, lang: Language) -> Result<String, ExecutorError> {
        let image = self
            .images
            .get(&lang)
            .ok_or_else(|| ExecutorError::ImageMissing(lang.to_string()))?;
        let tag = image_tag(lang, &image.hash);
        let mut imported = self.imported.lock().await;
        if imported.contains(&lang) {
            return Ok(tag);
        }
        match self.docker.inspect_image(&tag).await {
            Ok(_) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                import(&self.docker, &image.rootfs, lang, &image.hash).await?;
            }
            Err(e) => return Err(daemon_error(e)),
        }
        imported.insert(lang);
        Ok(tag)
    }

    /// Retry removals that failed while the daemon was away.
    async fn remove_orphans(&self) {
        let pending = std::mem::take(&mut *self.orphans.lock().expect("orphans lock"));
        for name in pending {
            match self.docker.remove_container(&name, Some(force())).await {
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(_) => self.orphans.lock().expect("orphans lock").push(name),
            }
        }
    }

    async fn forget_image(&self, lang: Language) {
        self.imported.lock().await.remove(&lang);
    }

    fn host_config(
        &self,
        spec: &InstanceSpec,
        socket_dir: &Path,
        code: Option<&Path>,
        deps: Option<&Path>,
        hosts: Option<&Path>,
        tmp_disk: Option<&Path>,
    ) -> HostConfig {
        let memory = i64::from(spec.memory_mb) * 1024 * 1024;
        let mut binds = vec![format!("{}:{GUEST_SOCKET_DIR}:ro", socket_dir.display())];
        let tmpfs = match tmp_disk {
            // The bind keeps the host mount's nosuid and nodev.
            Some(disk) => {
                binds.push(format!("{}:/tmp:rw", disk.display()));
                None
            }
            // Memory-backed and charged to the container, so capped at its limit.
            None => Some(HashMap::from([(
                "/tmp".to_string(),
                format!(
                    "rw,nosuid,nodev,size={}m,mode=1777",
                    spec.ephemeral_mb.min(spec.memory_mb)
                ),
            )])),
        };
        if let Some(code) = code {
            binds.push(format!("{}:{GUEST_CODE_DIR}:ro", code.display()));
        }
        if let Some(deps) = deps {
            binds.push(format!("{}:{GUEST_DEPS_DIR}:ro", deps.display()));
        }
        if let Some(hosts) = hosts {
            // Ours replaces the one Docker would write.
            binds.push(format!("{}:/etc/hosts:ro", hosts.display()));
        }
        HostConfig {
            memory: Some(memory),
            // memory+swap equal to memory: no swapping past the limit.
            memory_swap: Some(memory),
            nano_cpus: Some((self.config.cpus * 1e9) as i64),
            pids_limit: Some(self.config.pids_limit),
            network_mode: Some("none".into()),
            readonly_rootfs: Some(true),
            tmpfs,
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec![
                "no-new-privileges".into(),
                format!("seccomp={}", faas_common::sandbox::oci_profile()),
            ]),
            binds: Some(binds),
            // The agent reaps orphans itself as PID 1.
            init: Some(false),
            ..Default::default()
        }
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn kind(&self) -> faas_common::SandboxKind {
        faas_common::SandboxKind::Docker
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Box<dyn Instance>, ExecutorError> {
        self.remove_orphans().await;
        let tag = self.image(spec.language.image()).await?;
        let name = format!("faas-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let dir = self.config.instances_dir.join(&name);
        let mut backend = DockerBackend {
            docker: self.docker.clone(),
            name: name.clone(),
            dir: dir.clone(),
            created: false,
            done: false,
            orphans: self.orphans.clone(),
            freezer: None,
            ids: None,
            views: Vec::new(),
            network: None,
            tmp: None,
        };
        let ids = backend.ids.insert(self.config.host_ids.allocate()?);
        let uid = ids.host_base() + FUNCTION_UID;
        let socket_dir = dir.join("sock");
        let listener = AgentListener::bind(&socket_dir, uid).await?;
        if let Some(code) = &spec.code_dir {
            backend.views.push(self.views.acquire(code, "code").await?);
        }
        if let Some(deps) = &spec.deps_dir {
            backend.views.push(self.views.acquire(deps, "deps").await?);
        }
        let view_of = |label: &str| {
            backend
                .views
                .iter()
                .find(|v| {
                    v.path()
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(label))
                })
                .map(|v| v.path().to_path_buf())
        };
        let (code_view, deps_view) = (view_of("code-"), view_of("deps-"));
        let tmp_disk = match TmpKind::of(spec.ephemeral_mb, self.config.tmp_mb) {
            TmpKind::Memory(_) => None,
            TmpKind::Disk(mb) => {
                let disk = backend.tmp.insert(self.ephemeral.mounted(&name, mb).await?);
                Some(disk.path().to_path_buf())
            }
        };
        // Names resolve now and stay pinned for the container's life.
        let egress =
            crate::egress::prepare(self.config.egress.as_ref(), &spec.egress, &dir).await?;
        let env: Vec<String> = crate::base_env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let config = ContainerCreateBody {
            image: Some(tag.clone()),
            cmd: Some(vec![
                AGENT_PATH.to_string(),
                "--connect".into(),
                format!("unix:{GUEST_SOCKET_DIR}/{AGENT_SOCKET_NAME}"),
            ]),
            user: Some(format!("{uid}:{uid}")),
            env: Some(env),
            working_dir: Some("/tmp".into()),
            hostname: Some("faas".into()),
            labels: Some(HashMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_OWNER.to_string(), self.config.owner.clone()),
            ])),
            host_config: Some(self.host_config(
                &spec,
                &socket_dir,
                code_view.as_deref(),
                deps_view.as_deref(),
                egress.as_ref().map(|e| e.hosts.as_path()),
                tmp_disk.as_deref(),
            )),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                config,
            )
            .await;
        match created {
            Ok(_) => backend.created = true,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message,
            }) => {
                // Someone removed our image: import it again for the next call.
                self.forget_image(spec.language.image()).await;
                backend.destroy().await;
                return Err(ExecutorError::Start(format!(
                    "runtime image {tag} is missing from Docker ({message}); it is re-imported for the next invocation"
                )));
            }
            Err(e) => {
                backend.destroy().await;
                return Err(daemon_error(e));
            }
        }
        if let Err(e) = self.docker.start_container(&name, None).await {
            backend.destroy().await;
            return Err(daemon_error(e));
        }
        let docker = self.docker.clone();
        let watched = name.clone();
        let exited = async move {
            // The container's end, as Docker reports it.
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match docker.inspect_container(&watched, None).await {
                    Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => {}
                    _ => return "the container stopped".to_string(),
                }
            }
        };
        let accepted = listener
            .accept(self.config.start_timeout, exited, || {
                backend.diagnose_owned()
            })
            .await;
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                let e = match e {
                    ExecutorError::Start(m) if m.contains("exited") => {
                        ExecutorError::Start(format!("{m}; {}", backend.diagnose().await))
                    }
                    other => other,
                };
                backend.destroy().await;
                return Err(e);
            }
        };
        let pid = self
            .docker
            .inspect_container(&name, None)
            .await
            .ok()
            .and_then(|c| c.state?.pid)
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|pid| *pid > 0);
        backend.freezer = pid.and_then(Freezer::for_pid);
        // The agent is up and has not loaded user code yet: open the
        // allow-list to the container's network namespace now.
        if let Some(egress) = &egress {
            let attached = match pid {
                Some(pid) => egress.attach(pid).await,
                None => Err(ExecutorError::Start(format!("container {name} has no pid"))),
            };
            match attached {
                Ok(a) => backend.network = Some(a),
                Err(e) => {
                    backend.destroy().await;
                    return Err(e);
                }
            }
        }
        let instance = AgentInstance::start(
            backend,
            stream,
            spec.memory_mb,
            spec.init,
            self.config.start_timeout,
        )
        .await?;
        Ok(Box::new(instance))
    }

    fn egress_support(&self) -> Result<(), String> {
        match &self.config.egress {
            Some(_) => Ok(()),
            None => Err("nftables enforcement is not set up (see the server's log)".into()),
        }
    }

    async fn reap_leftovers(&self) -> Result<usize, ExecutorError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_OWNER}={}", self.config.owner)],
        )]);
        let mut removed = 0;
        match self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
        {
            Ok(list) => {
                for c in list {
                    if let Some(id) = c.id {
                        let _ = self.docker.remove_container(&id, Some(force())).await;
                        removed += 1;
                    }
                }
            }
            // A daemon that is down has no containers to leak into our view now;
            // the next start looks again.
            Err(e) => tracing::warn!("cannot list leftover containers: {e}"),
        }
        if let Ok(mut entries) = tokio::fs::read_dir(&self.config.instances_dir).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
            }
        }
        let (views, ephemeral) = (self.views.clone(), self.ephemeral.clone());
        let _ = tokio::task::spawn_blocking(move || (views.sweep(), ephemeral.sweep())).await;
        Ok(removed)
    }

    async fn shutdown(&self) -> Result<usize, ExecutorError> {
        let removed = self.reap_leftovers().await?;
        crate::socket::remove_dirs(&self.config.instances_dir).await;
        Ok(removed)
    }

    async fn forget_trees(&self, code: &HashSet<String>, deps: &HashSet<String>) {
        self.views.forget(&[("code", code), ("deps", deps)]).await;
    }

    async fn prepare(
        &self,
        code_dir: Option<&std::path::Path>,
        deps_dir: Option<&std::path::Path>,
    ) {
        self.views.prepare(code_dir, deps_dir).await;
    }
}

/// `faas-runtime-python:<hash>`.
pub fn image_tag(lang: Language, hash: &str) -> String {
    format!("faas-runtime-{lang}:{hash}")
}

/// `docker import` of a root filesystem directory.
async fn import(
    docker: &Docker,
    rootfs: &Path,
    lang: Language,
    hash: &str,
) -> Result<(), ExecutorError> {
    let started = Instant::now();
    let dir = rootfs.to_path_buf();
    let tarball = tokio::task::spawn_blocking(move || {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.append_dir_all(".", &dir)?;
        b.into_inner()
    })
    .await
    .map_err(|e| ExecutorError::Start(format!("archive task: {e}")))?
    .map_err(ExecutorError::io(format!("archive {}", rootfs.display())))?;
    let repo = format!("faas-runtime-{lang}");
    let mut stream = docker.create_image(
        Some(CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.clone()),
            tag: Some(hash.to_string()),
            ..Default::default()
        }),
        Some(bollard::body_full(tarball.into())),
        None,
    );
    while let Some(item) = stream.next().await {
        let info = item.map_err(daemon_error)?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(ExecutorError::Start(format!(
                "docker import of {repo}:{hash} failed: {err}"
            )));
        }
    }
    tracing::info!(
        "imported {repo}:{hash} into Docker in {:?}",
        started.elapsed()
    );
    Ok(())
}

fn force() -> RemoveContainerOptions {
    RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    }
}

fn daemon_error(e: bollard::errors::Error) -> ExecutorError {
    ExecutorError::Start(format!("docker: {e}"))
}

/// One container and its socket directory.
pub struct DockerBackend {
    docker: Docker,
    name: String,
    dir: PathBuf,
    created: bool,
    done: bool,
    orphans: Orphans,
    freezer: Option<Freezer>,
    /// The container's host ids, free again once it is removed.
    ids: Option<IdSlot>,
    /// The code and dependency views it mounts, released once it is removed.
    views: Vec<View>,
    /// Its network link and egress rules, when it has an allow-list.
    network: Option<faas_netpolicy::Attachment>,
    /// Its `/tmp` disk, when it has one; removed after the container.
    tmp: Option<EphemeralDisk>,
}

impl DockerBackend {
    /// [`Backend::diagnose`] without borrowing the backend.
    fn diagnose_owned(&self) -> impl std::future::Future<Output = String> + 'static {
        let (docker, name) = (self.docker.clone(), self.name.clone());
        async move { diagnose(&docker, &name).await }
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn id(&self) -> &str {
        &self.name
    }

    async fn oom_struck(&mut self) -> bool {
        match self.docker.inspect_container(&self.name, None).await {
            Ok(c) => c.state.and_then(|s| s.oom_killed).unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn diagnose(&mut self) -> String {
        diagnose(&self.docker, &self.name).await
    }

    fn freezer(&self) -> Option<Arc<dyn FreezeSwitch>> {
        self.freezer
            .clone()
            .map(|f| Arc::new(f) as Arc<dyn FreezeSwitch>)
    }

    async fn destroy(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if self.created {
            if let Err(e) = self
                .docker
                .remove_container(&self.name, Some(force()))
                .await
            {
                if !matches!(
                    e,
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }
                ) {
                    tracing::warn!("cannot remove container {} yet: {e}", self.name);
                    self.orphans
                        .lock()
                        .expect("orphans lock")
                        .push(self.name.clone());
                }
            }
        }
        if let Some(network) = self.network.take() {
            network.release().await;
        }
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        self.views.clear();
        if let Some(tmp) = self.tmp.take() {
            // Unmounting blocks: off the async threads.
            let _ = tokio::task::spawn_blocking(move || drop(tmp)).await;
        }
        self.ids = None;
    }
}

/// What Docker says about container `name`: its state and last output lines.
async fn diagnose(docker: &Docker, name: &str) -> String {
    let state = match docker.inspect_container(name, None).await {
        Ok(c) => match c.state {
            Some(s) if s.running == Some(true) => "container running".to_string(),
            Some(s) => format!(
                "container exited with code {}{}",
                s.exit_code.unwrap_or_default(),
                s.error
                    .filter(|e| !e.is_empty())
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            None => "container state unknown".into(),
        },
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => "container was removed".into(),
        Err(e) => format!("docker: {e}"),
    };
    let mut logs = docker.logs(
        name,
        Some(LogsOptions {
            stdout: true,
            stderr: true,
            tail: "10".into(),
            ..Default::default()
        }),
    );
    let mut tail = String::new();
    while let Some(Ok(line)) = logs.next().await {
        tail.push_str(line.to_string().trim_end());
        tail.push_str(" | ");
    }
    if tail.is_empty() {
        state
    } else {
        format!("{state}; output: {}", tail.trim_end_matches(" | "))
    }
}

impl Drop for DockerBackend {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (docker, name, dir, created, ids, views) = (
            self.docker.clone(),
            self.name.clone(),
            self.dir.clone(),
            self.created,
            self.ids.take(),
            std::mem::take(&mut self.views),
        );
        // Its own thread removes the link and the rules.
        drop(self.network.take());
        let tmp = self.tmp.take();
        // Drop cannot await; hand the removal to the runtime if there is one.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if created {
                    let _ = docker.remove_container(&name, Some(force())).await;
                }
                let _ = tokio::fs::remove_dir_all(&dir).await;
                drop(views);
                if let Some(tmp) = tmp {
                    let _ = tokio::task::spawn_blocking(move || drop(tmp)).await;
                }
                drop(ids);
            });
        } else {
            let _ = std::fs::remove_dir_all(&dir);
            drop(tmp);
        }
    }
}
