//! The native sandbox: Linux namespaces + cgroups + seccomp through `runc`.
//!
//! Each instance is an OCI bundle (a `config.json` from [`spec`]) run by the
//! real `runc` binary, whose process stays our child for the instance's life.
//! The runtime root filesystem is shared read-only by every instance; per
//! instance there is only a directory holding `config.json` and the agent's
//! socket directory, owned by an `InstanceGuard`, and a host id range of its
//! own ([`crate::ids`]), mapped through a user namespace where the kernel
//! allows one.

pub mod build;
pub(crate) mod cgroup;
mod instance;
mod spare;
pub mod spec;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use faas_common::Language;
use tokio::process::Command;

use crate::ephemeral::EphemeralDisks;
use crate::ids::HostIds;
use crate::views::Views;
use crate::{ExecutorError, ImageRef, Instance, InstanceSpec, Sandbox};
pub use cgroup::{CgroupLayout, ParentLimits};
pub use spare::Prestart;

/// Settings of the native sandbox.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    /// The `runc` binary.
    pub runc: PathBuf,
    /// `runc --root`: where runc keeps container state.
    pub state_dir: PathBuf,
    /// Per-instance bundle directories.
    pub instances_dir: PathBuf,
    /// Per-instance agent socket directories: outside the data directory,
    /// since the sandbox sees this path (as its mount's origin).
    pub sockets_dir: PathBuf,
    /// Cached images of the read-only code and dependency views.
    pub views_dir: PathBuf,
    /// Where the views are mounted.
    pub views_mounts: PathBuf,
    /// Parent cgroup of every instance (`/<parent>/<instance id>`).
    pub cgroup_parent: String,
    /// Limits on that parent: all instances together.
    pub parent_limits: Option<ParentLimits>,
    /// Host id ranges, one per instance.
    pub host_ids: HostIds,
    /// Map each instance's ids through a user namespace. Off by default: a
    /// user namespace runc creates is owned by root, and the kernel charges
    /// the per-user counts of everything inside it (inotify instances and
    /// watches, user namespaces, message queues) to root at the top level, so
    /// one instance could exhaust them for every other and for the host's
    /// root. Without one, the function runs directly as its range's host uid,
    /// which no one else uses.
    pub user_namespace: bool,
    /// Most processes and threads one instance may have.
    pub pids_limit: i64,
    /// CPU time per 100 ms period, in microseconds (100000 = one CPU).
    pub cpu_quota_us: i64,
    /// The largest `/tmp` kept in memory, in MiB: a function's
    /// `ephemeral_mb` up to it is a tmpfs (capped at the memory limit, to
    /// which it is charged), above it a disk of the instance's own
    /// ([`crate::ephemeral`]).
    pub tmp_mb: u32,
    /// Where instances' ephemeral-storage disks live and are mounted.
    pub ephemeral_dir: PathBuf,
    /// Limit memory+swap too (cgroup v1 needs swap accounting for this).
    pub swap_accounting: bool,
    /// How long an instance may take to start its agent.
    pub start_timeout: Duration,
    /// The node's egress enforcement; without it, functions with an egress
    /// allow-list are refused.
    pub egress: Option<Arc<faas_netpolicy::Egress>>,
    /// Instances kept started ahead, per runtime (see [`spare`]).
    pub prestart: Prestart,
}

impl Default for NativeConfig {
    fn default() -> Self {
        NativeConfig {
            runc: PathBuf::from("runc"),
            state_dir: PathBuf::from("/run/faas/runc"),
            instances_dir: PathBuf::from("/run/faas/instances"),
            sockets_dir: PathBuf::from("/run/faas/sockets/native"),
            views_dir: PathBuf::from("/var/lib/faas/views"),
            views_mounts: PathBuf::from("/run/faas/views/native"),
            cgroup_parent: "faas".into(),
            parent_limits: None,
            host_ids: HostIds::default(),
            user_namespace: false,
            pids_limit: faas_common::sandbox::DEFAULT_PIDS_LIMIT,
            cpu_quota_us: 100_000,
            tmp_mb: crate::ephemeral::TMPFS_MAX_MB,
            ephemeral_dir: PathBuf::from("/run/faas/ephemeral/native"),
            swap_accounting: CgroupLayout::detect().swap_accounting(),
            start_timeout: Duration::from_secs(20),
            egress: None,
            prestart: Prestart {
                slots_dir: PathBuf::from("/run/faas/spares/native"),
                ..Prestart::default()
            },
        }
    }
}

/// Starts native sandbox instances.
pub struct NativeSandbox {
    starter: Arc<Starter>,
    spares: Arc<spare::Spares>,
}

/// What starting an instance takes.
struct Starter {
    config: NativeConfig,
    images: HashMap<Language, ImageRef>,
    cgroups: CgroupLayout,
    cleanups: Arc<instance::Cleanups>,
    views: Arc<Views>,
    ephemeral: EphemeralDisks,
}

impl Starter {
    async fn start(
        &self,
        spec: InstanceSpec,
        spare: bool,
    ) -> Result<instance::AgentInstanceOf, ExecutorError> {
        let rootfs = self
            .images
            .get(&spec.language.image())
            .ok_or_else(|| ExecutorError::ImageMissing(spec.language.to_string()))?;
        instance::start(self, &rootfs.rootfs, spec, spare).await
    }

    /// Start a spare of `language` for `spares`.
    async fn spare(
        self: Arc<Self>,
        spares: Arc<spare::Spares>,
        language: Language,
    ) -> Result<instance::AgentInstanceOf, ExecutorError> {
        let mut spare = self.start(spares.spec(language), true).await?;
        if let Err(e) = spare.prestart(language, self.config.start_timeout).await {
            spare.destroy_backend().await;
            return Err(e);
        }
        Ok(spare)
    }
}

impl NativeSandbox {
    /// A sandbox using `images` (runtime root filesystem per language).
    ///
    /// Fails when `runc` is missing or the state directories cannot be made.
    pub async fn new(
        config: NativeConfig,
        images: HashMap<Language, ImageRef>,
    ) -> Result<Self, ExecutorError> {
        let version = Command::new(&config.runc)
            .arg("--version")
            .output()
            .await
            .map_err(|e| {
                ExecutorError::Start(format!(
                    "cannot run {} ({e}); install it with `apt-get install runc`",
                    config.runc.display()
                ))
            })?;
        if !version.status.success() {
            return Err(ExecutorError::Start(format!(
                "{} --version failed",
                config.runc.display()
            )));
        }
        for dir in [
            &config.state_dir,
            &config.instances_dir,
            &config.sockets_dir,
        ] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(ExecutorError::io(format!("create {}", dir.display())))?;
        }
        if config.user_namespace && !user_namespaces_available() {
            return Err(ExecutorError::Start(
                "user namespaces are disabled on this kernel (user.max_user_namespaces = 0)".into(),
            ));
        }
        let spares = spare::Spares::new(config.prestart.clone(), config.tmp_mb);
        let sandbox = NativeSandbox {
            starter: Arc::new(Starter {
                views: Views::new(config.views_dir.clone(), config.views_mounts.clone()),
                ephemeral: EphemeralDisks::new(config.ephemeral_dir.clone()),
                config,
                images,
                cgroups: CgroupLayout::detect(),
                cleanups: Arc::default(),
            }),
            spares,
        };
        Ok(sandbox)
    }

    /// The settings in force.
    pub fn config(&self) -> &NativeConfig {
        &self.starter.config
    }

    /// Unmount every slot, view and `/tmp` disk (nothing uses them now).
    async fn sweep_mounts(&self) {
        let starter = &self.starter;
        let (views, ephemeral) = (starter.views.clone(), starter.ephemeral.clone());
        let slots = starter.config.prestart.slots_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            (
                spare::Slots::sweep(&slots),
                views.sweep(),
                ephemeral.sweep(),
            )
        })
        .await;
    }

    /// Start spares until each runtime has its configured count.
    fn fill_spares(&self) {
        let (starter, spares) = (self.starter.clone(), self.spares.clone());
        self.spares
            .fill(move |language| starter.clone().spare(spares.clone(), language));
    }
}

#[async_trait]
impl Sandbox for NativeSandbox {
    fn kind(&self) -> faas_common::SandboxKind {
        faas_common::SandboxKind::Native
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Box<dyn Instance>, ExecutorError> {
        if let Some(spare) = self.spares.take(&spec) {
            self.fill_spares();
            let config = &self.starter.config;
            match spare::specialise(
                spare,
                spec.clone(),
                &self.starter.views,
                config.swap_accounting,
                config.start_timeout,
            )
            .await
            {
                Ok(instance) => return Ok(Box::new(instance)),
                Err(spare::Unfit::Failed(e)) => return Err(e),
                Err(spare::Unfit::Retry(e)) => {
                    tracing::warn!("cannot specialise a pre-started instance, starting anew: {e}");
                }
            }
        }
        let instance = self.starter.start(spec, false).await?;
        Ok(Box::new(instance))
    }

    fn spares(&self) -> usize {
        self.spares.ready()
    }

    async fn prepare(&self, code_dir: Option<&Path>, deps_dir: Option<&Path>) {
        self.starter.views.prepare(code_dir, deps_dir).await;
    }

    fn egress_support(&self) -> Result<(), String> {
        match &self.starter.config.egress {
            Some(_) => Ok(()),
            None => Err("nftables enforcement is not set up (see the server's log)".into()),
        }
    }

    async fn reap_leftovers(&self) -> Result<usize, ExecutorError> {
        let starter = &self.starter;
        let config = &starter.config;
        let n = instance::reap_leftovers(config).await?;
        self.sweep_mounts().await;
        // The sweep removed the parent; instances to come live under its limits.
        if let Some(limits) = config.parent_limits {
            let parent = config.cgroup_parent.clone();
            tokio::task::spawn_blocking(move || cgroup::limit_parent(&parent, limits))
                .await
                .map_err(|e| ExecutorError::Start(format!("cgroup task: {e}")))?
                .map_err(ExecutorError::io(format!(
                    "limit the parent cgroup {}",
                    config.cgroup_parent
                )))?;
        }
        // A clean slate: time to start the spares.
        self.fill_spares();
        Ok(n)
    }

    async fn shutdown(&self) -> Result<usize, ExecutorError> {
        self.spares.close().await;
        let starter = &self.starter;
        let config = &starter.config;
        let cleanups = starter.cleanups.clone();
        let _ = tokio::task::spawn_blocking(move || cleanups.join_all()).await;
        let n = instance::reap_leftovers(config).await?;
        self.sweep_mounts().await;
        crate::socket::remove_dirs(&config.sockets_dir).await;
        Ok(n)
    }

    async fn forget_trees(&self, code: &HashSet<String>, deps: &HashSet<String>) {
        self.starter
            .views
            .forget(&[("code", code), ("deps", deps)])
            .await;
    }
}

/// Whether this kernel lets root create user namespaces.
pub fn user_namespaces_available() -> bool {
    std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}
