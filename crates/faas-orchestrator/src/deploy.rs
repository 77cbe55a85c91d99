//! Deploys and their builds.
//!
//! A deploy is checked and its code decoded at once: a bad one is a 4xx and
//! leaves nothing. Then its build merges the definition's `dependencies` with
//! a manifest in the code ([`faas_common::manifest`]), installs them
//! ([`crate::deps`]), stores the code and records the version. A build that
//! has to install runs in the background: the deploy answers at once with
//! the build (`202`), whose state (`building`, `ready`, `failed`) and
//! installer output are readable while it runs, and the previous version
//! serves meanwhile and after a failure. The build always runs as a task of
//! its own, so a client that stops waiting never cuts an install short.
//!
//! Only the newest deploy of a function may record its version: a build that
//! a newer deploy (or a delete) overtook fails as superseded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faas_archive::CodeTree;
use faas_auth::{Caller, Scope, TenantId};
use faas_common::api::{BuildInfo, BuildState, FunctionInfo};
use faas_common::{manifest, FunctionDefinition, Language, SandboxKind, Scaling};
use faas_executor::native::build::LiveLog;

use crate::deps::{DepsRequest, Installed};
use crate::store::{FunctionSettings, FunctionVersion};
use crate::{
    attest, code, now_rfc3339, schedule, tenancy, tree_bytes, Orchestrator, OrchestratorError,
};

/// Most bytes of installer output a build keeps (the newest).
const LOG_LIMIT: usize = 256 * 1024;
/// Most builds installing (or waiting to) at once on a node; each holds its
/// decoded code in memory.
const MAX_PENDING_BUILDS: usize = 16;
/// Most of them one tenant may have, so that one tenant cannot take them all.
const MAX_TENANT_BUILDS: usize = 4;

/// What a deploy did.
#[derive(Debug, Clone)]
pub enum Deployed {
    /// The version is recorded and serves.
    Ready(FunctionInfo),
    /// Dependencies are installing; the build says how it goes.
    Building(BuildInfo),
}

/// A deploy's build in progress: its record and its output so far.
pub(crate) struct LiveBuild {
    tenant: TenantId,
    info: Mutex<BuildInfo>,
    log: Mutex<LogTail>,
}

impl LiveBuild {
    fn snapshot(&self, with_log: bool) -> BuildInfo {
        let mut info = self.info.lock().expect("build lock").clone();
        if with_log {
            info.log = self.log.lock().expect("build log lock").text();
        }
        info
    }
}

/// The newest [`LOG_LIMIT`] bytes of a log.
#[derive(Default)]
struct LogTail {
    text: String,
    dropped: bool,
}

impl LogTail {
    fn push(&mut self, chunk: &str) {
        self.text.push_str(chunk);
        if self.text.len() > LOG_LIMIT {
            let mut cut = self.text.len() - LOG_LIMIT;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
            self.dropped = true;
        }
    }

    fn text(&self) -> String {
        if self.dropped {
            format!("[earlier output dropped]\n{}", self.text)
        } else {
            self.text.clone()
        }
    }
}

/// The newest build of each function still running, by (tenant, name).
/// Recording a version and deleting a function hold its lock, so "is this
/// build still the newest?" and the write it guards are one step.
#[derive(Default)]
pub(crate) struct Builds {
    current: tokio::sync::Mutex<HashMap<(TenantId, String), Arc<LiveBuild>>>,
    /// Builds that install (running or waiting for an installer), per tenant.
    installing: Mutex<HashMap<TenantId, usize>>,
}

/// A build's place among those that install, given back when dropped.
struct InstallSlot {
    orchestrator: Arc<Orchestrator>,
    tenant: TenantId,
}

impl InstallSlot {
    /// A place for `tenant`, unless the node or the tenant has no more.
    fn take(
        orchestrator: &Arc<Orchestrator>,
        tenant: &TenantId,
    ) -> Result<Self, OrchestratorError> {
        let mut installing = orchestrator.builds.installing.lock().expect("builds lock");
        let total: usize = installing.values().sum();
        if total >= MAX_PENDING_BUILDS {
            return Err(OrchestratorError::Overloaded(format!(
                "{total} builds are in progress on this node; retry later"
            )));
        }
        let own = installing.entry(tenant.clone()).or_default();
        if *own >= MAX_TENANT_BUILDS {
            return Err(OrchestratorError::RateLimited {
                message: format!(
                    "tenant {tenant} has {own} builds in progress (at most \
                     {MAX_TENANT_BUILDS}); retry when one ends"
                ),
                retry_after: 10,
            });
        }
        *own += 1;
        Ok(InstallSlot {
            orchestrator: orchestrator.clone(),
            tenant: tenant.clone(),
        })
    }
}

impl Drop for InstallSlot {
    fn drop(&mut self) {
        let mut installing = self
            .orchestrator
            .builds
            .installing
            .lock()
            .expect("builds lock");
        if let Some(n) = installing.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                installing.remove(&self.tenant);
            }
        }
    }
}

/// A checked deploy, ready to build.
struct Prepared {
    caller: Caller,
    create_only: bool,
    name: String,
    language: Language,
    handler: String,
    memory_mb: u32,
    ephemeral_mb: u32,
    timeout_sec: u32,
    env: std::collections::BTreeMap<String, String>,
    sandbox: SandboxKind,
    attestation: Option<String>,
    egress: Vec<String>,
    tree: CodeTree,
    request: DepsRequest,
    scaling: Option<Scaling>,
    schedules: Option<Vec<(String, String, String)>>,
    max_retries: Option<u32>,
}

impl Orchestrator {
    /// Validate, store and register a function in the caller's tenant (a new
    /// version if the name exists there), waiting for its build.
    pub async fn deploy(
        self: &Arc<Self>,
        caller: &Caller,
        def: FunctionDefinition,
    ) -> Result<FunctionInfo, OrchestratorError> {
        match self.deploy_with(caller, def, true).await? {
            Deployed::Ready(info) => Ok(info),
            Deployed::Building(_) => unreachable!("waited for the build"),
        }
    }

    /// As [`Orchestrator::deploy`], but only a new function:
    /// [`OrchestratorError::Conflict`] when the name exists in the tenant.
    pub async fn create(
        self: &Arc<Self>,
        caller: &Caller,
        def: FunctionDefinition,
    ) -> Result<FunctionInfo, OrchestratorError> {
        if self.store.latest(&caller.tenant, &def.name).await.is_ok() {
            // Checked again atomically when stored; this spares the upload's
            // decoding and install in the common case.
            self.require(caller, Scope::Deploy)?;
            return Err(OrchestratorError::Conflict(format!(
                "function {:?} already exists",
                def.name
            )));
        }
        let prepared = self.prepare(caller, def, true).await?;
        match self.build(prepared, true).await? {
            Deployed::Ready(info) => Ok(info),
            Deployed::Building(_) => unreachable!("waited for the build"),
        }
    }

    /// Deploy; unless `wait`, a deploy that has to install dependencies
    /// answers [`Deployed::Building`] at once.
    pub async fn deploy_with(
        self: &Arc<Self>,
        caller: &Caller,
        def: FunctionDefinition,
        wait: bool,
    ) -> Result<Deployed, OrchestratorError> {
        let prepared = self.prepare(caller, def, false).await?;
        self.build(prepared, wait).await
    }

    /// The newest build of the caller's function `name`, with its log.
    pub async fn build_info(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<BuildInfo, OrchestratorError> {
        self.require(caller, Scope::Read)?;
        let name = match self.store.latest(&caller.tenant, name).await {
            Ok(f) => f.name,
            Err(_) => name.to_string(),
        };
        if !caller.may_touch(&name) {
            return Err(OrchestratorError::NotFound(format!("function {name:?}")));
        }
        self.latest_build(&caller.tenant, &name, true)
            .await?
            .ok_or_else(|| OrchestratorError::NotFound(format!("function {name:?}")))
    }

    /// The newest build of `tenant`'s function `name`: the running one, or
    /// the last recorded.
    pub(crate) async fn latest_build(
        &self,
        tenant: &TenantId,
        name: &str,
        with_log: bool,
    ) -> Result<Option<BuildInfo>, OrchestratorError> {
        let live = self
            .builds
            .current
            .lock()
            .await
            .get(&(tenant.clone(), name.to_string()))
            .cloned();
        if let Some(live) = live {
            return Ok(Some(live.snapshot(with_log)));
        }
        let mut build = self.store.latest_build(tenant, name).await?;
        if let (Some(b), false) = (&mut build, with_log) {
            b.log.clear();
        }
        Ok(build)
    }

    /// Make every running build of `tenant`'s function `name` superseded
    /// (it is being deleted), and forget its builds.
    pub(crate) async fn cancel_builds(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<bool, OrchestratorError> {
        let mut current = self.builds.current.lock().await;
        let cancelled = current
            .remove(&(tenant.clone(), name.to_string()))
            .is_some();
        self.store.delete_builds(tenant, name).await?;
        Ok(cancelled)
    }

    async fn prepare(
        &self,
        caller: &Caller,
        def: FunctionDefinition,
        create_only: bool,
    ) -> Result<Prepared, OrchestratorError> {
        self.require(caller, Scope::Deploy)?;
        let language = faas_common::validate::definition(&def)
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        if !caller.may_touch(&def.name) {
            return Err(OrchestratorError::Forbidden(
                "this key may not deploy this function".into(),
            ));
        }
        let tenant = caller.tenant.clone();
        let quota = self.tenancy.quota(&tenant);
        let (functions, _) = self.store.usage(&tenant).await?;
        let new_function = self.store.latest(&tenant, &def.name).await.is_err();
        if new_function
            && quota
                .max_functions
                .is_some_and(|m| functions >= u64::from(m))
        {
            return Err(OrchestratorError::QuotaExceeded(format!(
                "tenant {tenant} has its quota of {functions} functions"
            )));
        }
        let memory_mb = def.memory_mb.unwrap_or(self.config.default_memory_mb);
        if u64::from(memory_mb) > self.config.memory_budget_mb {
            return Err(OrchestratorError::Invalid(format!(
                "memory_mb must be at most {} on this node",
                self.config.memory_budget_mb
            )));
        }
        let ephemeral_mb = def
            .ephemeral_mb
            .unwrap_or(faas_common::validate::DEFAULT_EPHEMERAL_MB);
        if ephemeral_mb > self.config.max_ephemeral_mb {
            return Err(OrchestratorError::Invalid(format!(
                "ephemeral_mb must be at most {} on this node",
                self.config.max_ephemeral_mb
            )));
        }
        let timeout_sec = def.timeout_sec.unwrap_or(self.config.default_timeout_sec);
        let attestation = def
            .attestation
            .as_deref()
            .map(attest::parse_requirement)
            .transpose()?
            .map(|k| k.as_str().to_string());
        let sandbox = match def.sandbox.as_deref() {
            None => self.sandboxes.default_kind(),
            Some(name) => {
                let kind: SandboxKind =
                    name.parse().map_err(|e: faas_common::UnknownSandboxKind| {
                        OrchestratorError::Invalid(e.to_string())
                    })?;
                self.sandboxes.get(kind).map(|s| s.kind()).ok_or_else(|| {
                    let enabled: Vec<&str> =
                        self.sandboxes.kinds().iter().map(|k| k.as_str()).collect();
                    OrchestratorError::Invalid(format!(
                        "sandbox {name:?} is not enabled on this node (enabled: {})",
                        enabled.join(", ")
                    ))
                })?
            }
        };
        let egress = match &def.network {
            Some(policy) => faas_common::network::parse_egress(policy)
                .map_err(|e| OrchestratorError::Invalid(e.to_string()))?,
            None => Vec::new(),
        };
        if !egress.is_empty() {
            let runs_in = self.sandboxes.get(sandbox).ok_or_else(|| {
                OrchestratorError::Internal(format!("sandbox {sandbox} vanished"))
            })?;
            if let Err(why) = runs_in.egress_support() {
                return Err(OrchestratorError::Invalid(format!(
                    "egress policies cannot be enforced in the {sandbox} sandbox on this node: {why}"
                )));
            }
        }
        let egress: Vec<String> = egress.iter().map(|r| r.to_string()).collect();
        let schedules = def
            .schedules
            .as_deref()
            .map(schedule::checked)
            .transpose()?;
        let handler = def.handler.trim().to_string();
        let limits = self.config.code_limits;
        let (b64, files) = (def.code_base64.clone(), def.files.clone());
        let (h, listed) = (handler.clone(), def.dependencies.clone());
        // Decoding holds the whole upload in memory: a few at a time.
        let _turn = tokio::time::timeout(Duration::from_secs(30), self.deploys.acquire())
            .await
            .map_err(|_| {
                OrchestratorError::Overloaded("too many deploys in progress; retry later".into())
            })?
            .map_err(|_| OrchestratorError::Overloaded("server is shutting down".into()))?;
        // Decoding a large archive is CPU work: keep it off the async threads.
        let (tree, request) = tokio::task::spawn_blocking(move || {
            let mut tree =
                code::from_request(b64.as_deref(), files.as_ref(), language, &h, limits)?;
            code::check_handler(&tree, language, &h)?;
            if language == Language::Native {
                tree.make_executable(h.trim_start_matches("./"));
            }
            let request = dependencies(language, &listed, &tree)?;
            Ok::<_, OrchestratorError>((tree, request))
        })
        .await
        .map_err(|e| OrchestratorError::Internal(format!("code task: {e}")))??;
        Ok(Prepared {
            caller: caller.clone(),
            create_only,
            name: def.name,
            language,
            handler,
            memory_mb,
            ephemeral_mb,
            timeout_sec,
            env: def.env,
            sandbox,
            attestation,
            egress,
            tree,
            request,
            scaling: def.scaling,
            schedules,
            max_retries: def.max_retries,
        })
    }

    /// Run `prepared`'s build as a task of its own; wait for it when `wait`
    /// or when it installs nothing.
    async fn build(
        self: &Arc<Self>,
        prepared: Prepared,
        wait: bool,
    ) -> Result<Deployed, OrchestratorError> {
        let cached = if prepared.request.is_empty() {
            None
        } else {
            self.deps.cached(prepared.language, &prepared.request)
        };
        let installs = !prepared.request.is_empty() && cached.is_none();
        let tenant = prepared.caller.tenant.clone();
        let live = Arc::new(LiveBuild {
            tenant: tenant.clone(),
            info: Mutex::new(BuildInfo {
                id: format!("b-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
                function: prepared.name.clone(),
                state: BuildState::Building,
                started_at: now_rfc3339(),
                finished_at: None,
                version: None,
                error: None,
                log: String::new(),
            }),
            log: Mutex::default(),
        });
        // Counted until its task ends, superseded or not: it holds its code
        // in memory and waits for an installer all the same.
        let slot = if installs {
            Some(InstallSlot::take(self, &tenant)?)
        } else {
            None
        };
        match &cached {
            Some(layer) => live.log.lock().expect("build log lock").push(&format!(
                "dependencies: {} packages, installed before (layer {})\n",
                prepared.request.specs.len(),
                &layer.sha[..16]
            )),
            None if !installs => live
                .log
                .lock()
                .expect("build log lock")
                .push("no dependencies to install\n"),
            None => {}
        }
        self.store.put_build(&tenant, &live.snapshot(true)).await?;
        self.builds.current.lock().await.insert(
            (tenant.clone(), live.snapshot(false).function),
            live.clone(),
        );
        let this = self.clone();
        let task_live = live.clone();
        let task = tokio::spawn(async move {
            let result = this.complete(prepared, cached, &task_live).await;
            this.finish_build(&task_live, &result).await;
            drop(slot);
            result
        });
        if installs && !wait {
            return Ok(Deployed::Building(live.snapshot(false)));
        }
        let info = task
            .await
            .map_err(|e| OrchestratorError::Internal(format!("build task: {e}")))??;
        Ok(Deployed::Ready(info))
    }

    /// Record how `live` ended, and let it go from memory.
    async fn finish_build(
        &self,
        live: &Arc<LiveBuild>,
        result: &Result<FunctionInfo, OrchestratorError>,
    ) {
        {
            let mut info = live.info.lock().expect("build lock");
            info.finished_at = Some(now_rfc3339());
            match result {
                Ok(f) => {
                    info.state = BuildState::Ready;
                    info.version = Some(f.version);
                }
                Err(e) => {
                    info.state = BuildState::Failed;
                    info.error = Some(e.to_string());
                }
            }
        }
        if let Err(e) = result {
            live.log
                .lock()
                .expect("build log lock")
                .push(&format!("build failed: {e}\n"));
        }
        let info = live.snapshot(true);
        let mut current = self.builds.current.lock().await;
        let key = (live.tenant.clone(), info.function.clone());
        let newest = current.get(&key).is_some_and(|b| Arc::ptr_eq(b, live));
        // A cancelled build's function was deleted, records and all.
        let cancelled = !newest && result.is_err() && !current.contains_key(&key);
        if !cancelled {
            if let Err(e) = self.store.put_build(&live.tenant, &info).await {
                tracing::warn!("cannot record build {}: {e}", info.id);
            }
        }
        if newest {
            current.remove(&key);
        }
    }

    /// Install, store the code, record the version (if `live` is still the
    /// newest build of its function).
    async fn complete(
        &self,
        p: Prepared,
        cached: Option<Installed>,
        live: &Arc<LiveBuild>,
    ) -> Result<FunctionInfo, OrchestratorError> {
        let installed = match cached {
            Some(layer) => Some(layer),
            None => {
                let sink = live.clone();
                let log = LiveLog(Arc::new(move |chunk: &[u8]| {
                    sink.log
                        .lock()
                        .expect("build log lock")
                        .push(&String::from_utf8_lossy(chunk));
                }));
                self.deps.install(p.language, &p.request, Some(log)).await?
            }
        };
        let deps_bytes = match &installed {
            Some(layer) => tree_bytes(self.deps.dir(&layer.sha)).await,
            None => 0,
        };
        let tenant = p.caller.tenant.clone();
        let stored_bytes = p.tree.total_bytes() + deps_bytes;
        if let Some(max_mb) = self.tenancy.quota(&tenant).max_storage_mb {
            let (_, stored) = self.store.usage(&tenant).await?;
            if stored + stored_bytes > max_mb * 1024 * 1024 {
                return Err(OrchestratorError::StorageQuota(format!(
                    "tenant {tenant} would store more than its quota of {max_mb} MiB of code and dependencies"
                )));
            }
        }
        let _storing = self.storage.read().await;
        let store = self.code.clone();
        let tree = p.tree;
        let code_sha = tokio::task::spawn_blocking(move || store.store(&tree).map(|(sha, _)| sha))
            .await
            .map_err(|e| OrchestratorError::Internal(format!("code task: {e}")))?
            .map_err(code::archive_error)?;
        let current = self.builds.current.lock().await;
        let newest = current
            .get(&(tenant.clone(), p.name.clone()))
            .is_some_and(|b| Arc::ptr_eq(b, live));
        if !newest {
            return Err(OrchestratorError::Conflict(
                "superseded: a newer deploy or a delete of this function came first".into(),
            ));
        }
        let (name, language, handler) = (p.name.clone(), p.language, p.handler);
        let (memory_mb, ephemeral_mb, timeout_sec) = (p.memory_mb, p.ephemeral_mb, p.timeout_sec);
        let env = p.env;
        let (sandbox, attestation, egress) = (p.sandbox, p.attestation, p.egress);
        let (dependencies, max_retries) = (p.request.specs, p.max_retries);
        let deps_sha256 = installed.as_ref().map(|l| l.sha.clone());
        let version_tenant = tenant.clone();
        let record = self
            .store
            .add_version(
                tenant.clone(),
                p.name,
                p.create_only,
                FunctionSettings {
                    scaling: p.scaling,
                    schedules: p.schedules,
                },
                move |id, version| FunctionVersion {
                    id: id.to_string(),
                    tenant: version_tenant,
                    name,
                    version,
                    language,
                    handler,
                    memory_mb,
                    ephemeral_mb,
                    timeout_sec,
                    dependencies,
                    env,
                    sandbox,
                    attestation,
                    egress,
                    created_at: now_rfc3339(),
                    code_sha256: code_sha,
                    deps_sha256,
                    stored_bytes,
                    scaling: Default::default(),
                    max_retries,
                },
            )
            .await?;
        drop(current);
        drop(_storing);
        drop(installed);
        // Older versions' warm instances would serve stale code.
        self.pool.retire(&record.id, record.version);
        self.pool
            .limit_function(&record.id, self.limits_of(&record));
        // The views a first start needs, made now rather than on its clock.
        if let Some(sandbox) = self.sandboxes.get(record.sandbox) {
            let deps = record.deps_sha256.as_ref().map(|sha| self.deps.dir(sha));
            sandbox
                .prepare(Some(&self.code.path(&record.code_sha256)), deps.as_deref())
                .await;
        }
        tracing::info!(tenant = %record.tenant, function = %record.name, version = record.version, "deployed");
        self.audit(tenancy::entry(
            &p.caller,
            "deploy",
            Some(&record.name),
            Some(format!("version {}", record.version)),
        ))
        .await;
        Ok(record.info())
    }
}

/// What a function installs: its `dependencies` list merged with the
/// manifest at the root of its code (checked, never run).
fn dependencies(
    language: Language,
    listed: &[String],
    tree: &CodeTree,
) -> Result<DepsRequest, OrchestratorError> {
    let invalid = |e: manifest::ManifestError| OrchestratorError::Invalid(e.to_string());
    if language.is_process_per_call() {
        if !listed.is_empty() {
            faas_common::deps::validate(language, listed)
                .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        }
        return Ok(DepsRequest::default());
    }
    faas_common::deps::validate(language, listed)
        .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
    let text = |name: &str| -> Result<Option<String>, OrchestratorError> {
        tree.file(name)
            .map(|b| {
                String::from_utf8(b.to_vec())
                    .map_err(|_| OrchestratorError::Invalid(format!("{name} is not UTF-8")))
            })
            .transpose()
    };
    let (from_manifest, lock) = match language {
        Language::Python => match text(manifest::REQUIREMENTS_TXT)? {
            Some(t) => (manifest::requirements_txt(&t).map_err(invalid)?, None),
            None => (Vec::new(), None),
        },
        _ => {
            let package = tree.file(manifest::PACKAGE_JSON);
            let lock = tree.file(manifest::PACKAGE_LOCK_JSON);
            match (package, lock) {
                (None, Some(_)) => {
                    return Err(OrchestratorError::Invalid(
                        "package-lock.json without a package.json".into(),
                    ))
                }
                (None, None) => (Vec::new(), None),
                (Some(package), lock) => {
                    let deps = manifest::package_json(package).map_err(invalid)?;
                    if let Some(lock) = lock {
                        let registry = std::env::var("npm_config_registry").ok();
                        manifest::check_package_lock(lock, registry.as_deref()).map_err(invalid)?;
                    }
                    // A lock with nothing to install pins nothing.
                    let lock = lock.filter(|_| !deps.is_empty()).map(<[u8]>::to_vec);
                    (deps, lock)
                }
            }
        }
    };
    let specs = manifest::merge(language, listed, &from_manifest).map_err(invalid)?;
    let lock = lock.filter(|_| !specs.is_empty());
    Ok(DepsRequest { specs, lock })
}

#[cfg(test)]
mod tests {
    use super::*;
    use faas_archive::Limits;

    fn tree(files: &[(&str, &str)]) -> CodeTree {
        CodeTree::from_files(files.iter().copied(), Limits::default()).unwrap()
    }

    #[test]
    fn manifests_merge_with_the_list() {
        let t = tree(&[
            ("main.py", "def handler(e, c): pass"),
            ("requirements.txt", "numpy==1.26.4\njinja2\n"),
        ]);
        let r = dependencies(Language::Python, &["jinja2".into()], &t).unwrap();
        assert_eq!(r.specs, vec!["jinja2", "numpy==1.26.4"]);
        let err = dependencies(Language::Python, &["numpy==2.0.0".into()], &t).unwrap_err();
        assert!(err.to_string().contains("conflict"), "{err}");
        let shell = dependencies(Language::Shell, &[], &t).unwrap();
        assert!(shell.is_empty(), "shell functions install nothing");
    }

    #[test]
    fn node_lock_needs_a_package_json() {
        let t = tree(&[("index.js", "x"), ("package-lock.json", "{}")]);
        assert!(dependencies(Language::Node, &[], &t).is_err());
        let t = tree(&[
            ("index.js", "x"),
            ("package.json", r#"{"dependencies":{"lodash":"4.17.21"}}"#),
        ]);
        let r = dependencies(Language::Node, &["mustache@4".into()], &t).unwrap();
        assert_eq!(r.specs, vec!["lodash@4.17.21", "mustache@4"]);
        assert!(r.lock.is_none());
    }

    #[test]
    fn log_keeps_the_tail() {
        let mut log = LogTail::default();
        log.push(&"a".repeat(LOG_LIMIT));
        log.push("é tail");
        let text = log.text();
        assert!(text.starts_with("[earlier output dropped]\n"));
        assert!(text.ends_with("é tail"));
        assert!(text.len() <= LOG_LIMIT + 32);
    }
}
