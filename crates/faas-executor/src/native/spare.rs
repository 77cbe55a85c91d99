//! Pre-started instances: cold starts without a sandbox or an interpreter
//! to start.
//!
//! The sandbox keeps a few instances per runtime started ahead: container
//! up, agent connected, the Python or Node.js interpreter running its
//! bootstrap (`Prestart`), no function in it, frozen. A cold start of a
//! function that fits one takes it and *specialises* it:
//!
//! 1. its code and dependency views are bound into the instance's empty
//!    slots on the host; the container bound those slots as slaves of the
//!    host's mount, so the views show at `/var/task` and `/opt/faas/deps`
//!    inside (read-only, `nosuid`, `nodev`, as a fresh start has them);
//! 2. its memory cgroup takes the function's limit;
//! 3. the agent loads the handler into the waiting interpreter, which first
//!    takes the function's environment and working directory (`Init`).
//!
//! Everything else an instance is (namespaces, its own host uid, seccomp,
//! capabilities, CPU and pids limits, `/tmp`) does not depend on the
//! function and was set when the container started, exactly as for a fresh
//! one. A specialised instance belongs to its function for good: it is never
//! given back as a spare, so nothing of one function reaches another.
//!
//! A function fits a spare when nothing of the above would differ: the same
//! runtime, no egress allow-list (a network link is made per instance before
//! any code runs), the same `/tmp`, and no environment variable an
//! interpreter reads only at its start (`PYTHON*`, `NODE_*`, `LD_*`, `LC_*`,
//! `LANG`, `TZ`, ...). Others start fresh, as before. The pool refills in
//! the background after each take and never holds more than configured.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faas_common::Language;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::instance::NativeBackend;
use crate::ephemeral::TmpKind;
use crate::instance::AgentInstance;
use crate::{ExecutorError, InstanceSpec};

/// What the native sandbox keeps pre-started.
#[derive(Debug, Clone, Default)]
pub struct Prestart {
    /// How many instances to keep ready, per runtime (none when absent).
    pub counts: HashMap<Language, u32>,
    /// Their memory limit until specialised, in MiB.
    pub memory_mb: u32,
    /// Their `/tmp` size in MiB: only functions with the same `/tmp` fit.
    pub ephemeral_mb: u32,
    /// Where their code and dependency slots are mounted.
    pub slots_dir: PathBuf,
}

/// Environment variables an interpreter (or the C library under it) reads
/// when it starts, by prefix: a function that sets one starts fresh.
const STARTUP_PREFIXES: &[&str] = &[
    "PYTHON", "NODE_", "UV_", "LD_", "LC_", "MALLOC_", "GLIBC_", "GCONV_",
];
/// The same, by exact name.
const STARTUP_NAMES: &[&str] = &["LANG", "LANGUAGE", "TZ", "TZDIR"];

/// Why a pre-started instance could not be specialised.
pub(super) enum Unfit {
    /// The host side failed, or the spare was lost: start fresh.
    Retry(ExecutorError),
    /// The handler failed to load: its own error, as a fresh start gives it.
    Failed(ExecutorError),
}

/// The instances kept ready, and the tasks that refill them.
pub(super) struct Spares {
    config: Prestart,
    /// The `/tmp` the spares have, as the sandbox makes it.
    tmp: TmpKind,
    tmpfs_max_mb: u32,
    state: Mutex<State>,
    /// Turns true when the sandbox shuts down.
    closing: watch::Sender<bool>,
    /// The refill tasks.
    tasks: Mutex<JoinSet<()>>,
}

#[derive(Default)]
struct State {
    ready: HashMap<Language, Vec<AgentInstance<NativeBackend>>>,
    /// Spares being started now, per runtime.
    filling: HashMap<Language, u32>,
}

impl Spares {
    /// A pool of `config`'s spares; `tmpfs_max_mb` is the sandbox's largest
    /// memory-backed `/tmp`.
    pub(super) fn new(config: Prestart, tmpfs_max_mb: u32) -> Arc<Spares> {
        Arc::new(Spares {
            tmp: TmpKind::of(config.ephemeral_mb, tmpfs_max_mb),
            tmpfs_max_mb,
            config,
            state: Mutex::default(),
            closing: watch::Sender::new(false),
            tasks: Mutex::default(),
        })
    }

    /// The spec a spare of `language` starts from.
    pub(super) fn spec(&self, language: Language) -> InstanceSpec {
        InstanceSpec {
            language,
            code_dir: None,
            deps_dir: None,
            memory_mb: self.config.memory_mb,
            ephemeral_mb: self.config.ephemeral_mb,
            init: None,
            egress: Vec::new(),
        }
    }

    /// Whether `spec` can be served by a spare (see the module docs).
    pub(super) fn fits(&self, spec: &InstanceSpec) -> bool {
        let Some(init) = &spec.init else {
            return false;
        };
        let tmp_matches = match (TmpKind::of(spec.ephemeral_mb, self.tmpfs_max_mb), self.tmp) {
            (TmpKind::Disk(a), TmpKind::Disk(b)) => a == b,
            // A tmpfs is sized when mounted, capped at the memory limit then.
            (TmpKind::Memory(a), TmpKind::Memory(b)) => {
                a.min(spec.memory_mb) == b.min(self.config.memory_mb)
            }
            _ => false,
        };
        spec.egress.is_empty() && tmp_matches && !init.env.keys().any(|k| read_at_startup(k))
    }

    /// A ready spare for `spec`, if it fits one and one is ready.
    pub(super) fn take(&self, spec: &InstanceSpec) -> Option<AgentInstance<NativeBackend>> {
        if !self.fits(spec) {
            return None;
        }
        let mut st = self.state.lock().expect("spares lock");
        // Shell spares serve native executables too: one image, no interpreter.
        st.ready.get_mut(&spec.language.image())?.pop()
    }

    /// How many spares are ready now.
    pub(super) fn ready(&self) -> usize {
        let st = self.state.lock().expect("spares lock");
        st.ready.values().map(Vec::len).sum()
    }

    /// Start spares in the background until each runtime has its count
    /// (ready and starting together never exceed it). `start` starts one.
    pub(super) fn fill<F, Fut>(self: &Arc<Self>, start: F)
    where
        F: Fn(Language) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<AgentInstance<NativeBackend>, ExecutorError>>
            + Send
            + 'static,
    {
        if self.closed() {
            return;
        }
        let mut tasks = self.tasks.lock().expect("spares tasks lock");
        let mut st = self.state.lock().expect("spares lock");
        for (&language, &want) in &self.config.counts {
            let have = st.ready.get(&language).map_or(0, Vec::len) as u32
                + st.filling.get(&language).copied().unwrap_or(0);
            for _ in have..want {
                *st.filling.entry(language).or_default() += 1;
                let (spares, start) = (self.clone(), start.clone());
                tasks.spawn(async move { spares.refill(language, start).await });
            }
        }
    }

    /// Start one spare of `language` and keep it, retrying after failures
    /// (a runtime image that cannot start must not spin).
    async fn refill<F, Fut>(self: Arc<Self>, language: Language, start: F)
    where
        F: Fn(Language) -> Fut,
        Fut: std::future::Future<Output = Result<AgentInstance<NativeBackend>, ExecutorError>>,
    {
        let mut backoff = Duration::from_millis(500);
        let mut closing = self.closing.subscribe();
        let spare = loop {
            let started = tokio::select! {
                started = start(language) => started,
                _ = closing.wait_for(|c| *c) => break None,
            };
            match started {
                Ok(spare) => break Some(spare),
                Err(e) => {
                    tracing::warn!(%language, "cannot pre-start an instance: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = closing.wait_for(|c| *c) => break None,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        let unwanted = {
            let mut st = self.state.lock().expect("spares lock");
            if let Some(n) = st.filling.get_mut(&language) {
                *n = n.saturating_sub(1);
            }
            match spare {
                Some(spare) if !self.closed() => {
                    st.ready.entry(language).or_default().push(spare);
                    None
                }
                other => other,
            }
        };
        if let Some(mut spare) = unwanted {
            spare.destroy_backend().await;
        }
    }

    /// Stop refilling and remove every spare; returns once none is left.
    pub(super) async fn close(&self) {
        self.closing.send_replace(true);
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("spares tasks lock"));
        while tasks.join_next().await.is_some() {}
        let ready: Vec<_> = {
            let mut st = self.state.lock().expect("spares lock");
            st.ready.drain().flat_map(|(_, v)| v).collect()
        };
        for mut spare in ready {
            spare.destroy_backend().await;
        }
    }
}

impl Spares {
    fn closed(&self) -> bool {
        *self.closing.borrow()
    }
}

/// Whether an interpreter reads variable `name` only when it starts.
fn read_at_startup(name: &str) -> bool {
    STARTUP_NAMES.contains(&name) || STARTUP_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Specialise `spare` for `spec` (see the module docs).
pub(super) async fn specialise(
    mut spare: AgentInstance<NativeBackend>,
    spec: InstanceSpec,
    views: &Arc<crate::views::Views>,
    swap_accounting: bool,
    load_timeout: Duration,
) -> Result<AgentInstance<NativeBackend>, Unfit> {
    let init = spec.init.expect("a spare fits only a spec with a handler");
    let host_side = async {
        let code = match &spec.code_dir {
            Some(p) => Some(views.acquire(p, "code").await?),
            None => None,
        };
        let deps = match &spec.deps_dir {
            Some(p) => Some(views.acquire(p, "deps").await?),
            None => None,
        };
        spare
            .backend_mut()
            .specialise(code, deps, spec.memory_mb, swap_accounting)
            .await
    };
    if let Err(e) = host_side.await {
        spare.destroy_backend().await;
        return Err(Unfit::Retry(e));
    }
    match spare.specialise(init, spec.memory_mb, load_timeout).await {
        Ok(()) => Ok(spare),
        // The handler itself failed to load: a fresh start would say the same.
        Err(e @ ExecutorError::Init { .. }) => Err(Unfit::Failed(e)),
        // The spare died while it waited, or hung: it is the spare's fault
        // until a fresh start says otherwise.
        Err(e) => Err(Unfit::Retry(e)),
    }
}

/// The code and dependency slots of a pre-started instance: a small tmpfs
/// of its own on the host, a shared mount, holding `code/` and `deps/`,
/// which the container binds as slaves. Dropping it unmounts whatever was
/// bound there and the tmpfs, and removes the directory. Drop it after the
/// container is gone, off the async threads.
#[derive(Debug)]
pub(super) struct Slots {
    root: PathBuf,
}

impl Slots {
    /// Mount the slots at `root`. Its own tmpfs rather than a directory of
    /// the host's: the sandbox sees the root of the mount its `/var/task`
    /// came from (`/code`), never a host path.
    pub(super) fn create(root: PathBuf) -> std::io::Result<Slots> {
        std::fs::create_dir_all(&root)?;
        let slots = Slots { root };
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        crate::mounts::mount(
            "faas-slots",
            &slots.root,
            "tmpfs",
            flags,
            "size=16k,mode=0755",
        )?;
        // A peer group of its own, so mounts into it propagate to exactly
        // the one container bound to it.
        crate::mounts::propagation(&slots.root, libc::MS_PRIVATE)?;
        crate::mounts::propagation(&slots.root, libc::MS_SHARED)?;
        std::fs::create_dir(slots.code())?;
        std::fs::create_dir(slots.deps())?;
        Ok(slots)
    }

    /// The code slot.
    pub(super) fn code(&self) -> PathBuf {
        self.root.join("code")
    }

    /// The dependency slot.
    pub(super) fn deps(&self) -> PathBuf {
        self.root.join("deps")
    }

    /// Bind the views: `code` and `deps` (mount points of read-only views).
    pub(super) fn fill(&self, code: Option<&Path>, deps: Option<&Path>) -> std::io::Result<()> {
        if let Some(code) = code {
            crate::mounts::bind(code, &self.code())?;
        }
        if let Some(deps) = deps {
            crate::mounts::bind(deps, &self.deps())?;
        }
        Ok(())
    }

    /// Unmount every slot under `dir` a crashed server left (deepest first).
    pub(super) fn sweep(dir: &Path) -> usize {
        let mut points = crate::views::mount_points_under(dir);
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in &points {
            crate::mounts::unmount(point);
        }
        let _ = std::fs::remove_dir_all(dir);
        points.len()
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        crate::mounts::unmount(&self.code());
        crate::mounts::unmount(&self.deps());
        crate::mounts::unmount(&self.root);
        let _ = std::fs::remove_dir(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faas_common::protocol::InitSpec;
    use std::collections::BTreeMap;

    fn spares(ephemeral_mb: u32) -> Arc<Spares> {
        Spares::new(
            Prestart {
                counts: HashMap::from([(Language::Python, 1)]),
                memory_mb: 128,
                ephemeral_mb,
                slots_dir: PathBuf::from("/nonexistent"),
            },
            64,
        )
    }

    fn spec(env: &[(&str, &str)]) -> InstanceSpec {
        InstanceSpec {
            language: Language::Python,
            code_dir: Some(PathBuf::from("/c/abc")),
            deps_dir: None,
            memory_mb: 256,
            ephemeral_mb: 512,
            init: Some(InitSpec {
                language: Language::Python,
                handler: "main.handler".into(),
                code_dir: "/var/task".into(),
                deps_dir: None,
                function_name: "f".into(),
                function_version: 1,
                memory_mb: 256,
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            }),
            egress: Vec::new(),
        }
    }

    #[test]
    fn fits_only_what_would_start_the_same() {
        let s = spares(512);
        assert!(s.fits(&spec(&[("GREETING", "hi"), ("API_KEY", "x")])));
        for var in [
            "PYTHONPATH",
            "NODE_OPTIONS",
            "LD_PRELOAD",
            "TZ",
            "LANG",
            "LC_ALL",
        ] {
            assert!(!s.fits(&spec(&[(var, "x")])), "{var}");
        }
        let mut other_tmp = spec(&[]);
        other_tmp.ephemeral_mb = 1024;
        assert!(!s.fits(&other_tmp));
        let mut bare = spec(&[]);
        bare.init = None;
        assert!(!s.fits(&bare));
        let mut egress = spec(&[]);
        egress.egress = vec!["example.com:443".parse().unwrap()];
        assert!(!s.fits(&egress));
    }

    #[test]
    fn a_memory_tmp_fits_only_at_the_same_size() {
        let s = spares(32);
        let mut small = spec(&[]);
        small.ephemeral_mb = 32;
        assert!(s.fits(&small));
        small.memory_mb = 16;
        assert!(
            !s.fits(&small),
            "a 16 MiB limit caps the tmpfs below the spare's"
        );
    }
}
