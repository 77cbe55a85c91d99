//! Everything between the API and the sandbox.
//!
//! [`Orchestrator`] owns the function registry ([`store`], SQLite), the code
//! storage ([`code`], content-addressed on disk), dependency layers ([`deps`]),
//! the warm-instance [`pool`] and the [`metrics`]. The gateway calls it; it calls
//! a [`faas_executor::Sandbox`].

#![forbid(unsafe_code)]

mod async_invoke;
pub mod attest;
pub mod code;
mod deploy;
pub mod deps;
mod error;
pub mod metrics;
pub mod pool;
pub mod queue;
mod scaling;
mod schedule;
pub mod store;
pub mod tenancy;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use faas_archive::CodeStore;
use faas_auth::{Caller, Scope, TenantId};
use faas_common::api::{
    BuildState, FunctionInfo, FunctionStatus, InvocationList, InvocationRecord, JobBinding, Outcome,
};
use faas_common::contract::{GUEST_CODE_DIR, GUEST_DEPS_DIR};
use faas_common::protocol::InitSpec;
use faas_common::{ExecuteFunctionArgs, InvocationResult, Language, SandboxConfig, SandboxKind};
use faas_executor::native::build::BuildSandbox;
use faas_executor::{ExecutorError, InstanceSpec, Sandbox, SandboxExecutor};
use tokio::sync::{RwLock, Semaphore};

pub use deploy::Deployed;
pub use error::{FailureKind, OrchestratorError};
use metrics::{FunctionLabels, Metrics, OutcomeLabels};
use pool::{AcquireError, Pool, PoolKey};
use store::{FunctionVersion, Store};

/// Limits and defaults.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Root of all state: `state.db`, `code/`, `deps/`.
    pub data_dir: PathBuf,
    /// Largest invocation payload accepted.
    pub max_payload_bytes: usize,
    /// How long an idle instance stays warm.
    pub idle_timeout: Duration,
    /// How often an idle instance's agent is pinged (a hung one is replaced).
    pub heartbeat: Duration,
    /// Most instances alive at once, over all functions.
    pub max_instances: usize,
    /// Most instances of one function alive at once.
    pub max_instances_per_function: usize,
    /// Invocations that may wait for one function's instances when all are
    /// busy (a function's `max_queue` overrides it); beyond, 429.
    pub max_queue: usize,
    /// Memory all live instances may have together, MiB; no function may ask
    /// for more than this.
    pub memory_budget_mb: u64,
    /// Memory limit when a deploy gives none, MiB.
    pub default_memory_mb: u32,
    /// Largest `ephemeral_mb` (per-instance `/tmp`) a function may ask for, MiB.
    pub max_ephemeral_mb: u32,
    /// Timeout when a deploy gives none, seconds.
    pub default_timeout_sec: u32,
    /// Limits on uploaded code.
    pub code_limits: faas_archive::Limits,
    /// Deploys decoding code at once; more wait (bounds the memory uploads take).
    pub concurrent_deploys: usize,
    /// Limits on dependency installs.
    pub deps_limits: deps::DepsLimits,
    /// Unprivileged host uid that writes function code (when running as root).
    pub code_writer_uid: Option<u32>,
    /// Require an API key on every request (off only for local development).
    pub auth: bool,
    /// Asynchronous invocations running at once.
    pub async_workers: usize,
    /// Asynchronous invocations one tenant may have waiting (each holds its
    /// payload on disk); beyond, 429.
    pub max_async_pending: usize,
    /// How long final asynchronous results (and dead letters) are kept.
    pub async_retention: Duration,
    /// Let callbacks reach loopback, private and link-local addresses (off:
    /// a tenant's callback URL could otherwise probe the node's network).
    pub callbacks_allow_private: bool,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            data_dir: PathBuf::from("/var/lib/faas"),
            max_payload_bytes: 6 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
            heartbeat: Duration::from_secs(15),
            max_instances: 32,
            max_instances_per_function: 8,
            max_queue: 64,
            memory_budget_mb: default_memory_budget_mb(),
            default_memory_mb: 128,
            max_ephemeral_mb: faas_common::validate::DEFAULT_MAX_EPHEMERAL_MB,
            default_timeout_sec: 30,
            code_limits: faas_archive::Limits::default(),
            concurrent_deploys: 2,
            deps_limits: deps::DepsLimits::default(),
            code_writer_uid: None,
            auth: true,
            async_workers: 8,
            max_async_pending: 1000,
            async_retention: Duration::from_secs(24 * 3600),
            callbacks_allow_private: false,
        }
    }
}

/// The memory instances may have together by default: the machine's memory
/// less a reserve for the host (a tenth, at least 1 GiB).
pub fn default_memory_budget_mb() -> u64 {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(4 * 1024 * 1024);
    let total_mb = total_kb / 1024;
    total_mb.saturating_sub((total_mb / 10).max(1024)).max(256)
}

/// How long invocations still running at shutdown may go on.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Most bytes of records one `logs` page carries.
pub const MAX_LOGS_PAGE_BYTES: usize = 4 * 1024 * 1024;

pub use faas_common::validate::{MEMORY_RANGE_MB, TIMEOUT_RANGE_SEC};

/// A successful invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Request id.
    pub request_id: String,
    /// Function version that ran.
    pub version: u32,
    /// Response body.
    pub body: Vec<u8>,
    /// Its MIME type.
    pub content_type: String,
    /// Whether a new instance was started.
    pub cold_start: bool,
    /// Whether that new instance was a pre-started one, specialised.
    pub prestarted: bool,
    /// Wall time, cold start included.
    pub duration: Duration,
    /// Signature and evidence kind, for functions that require attestation.
    pub proof: Option<attest::Proof>,
    /// What the function printed.
    pub logs: String,
}

/// The sandbox kinds a node offers: a default, and others functions may ask
/// for; and the build sandbox where dependency installers run.
#[derive(Clone)]
pub struct Sandboxes {
    default: Arc<dyn Sandbox>,
    others: Vec<Arc<dyn Sandbox>>,
    build: Option<Arc<BuildSandbox>>,
}

impl Sandboxes {
    /// Only `default`.
    pub fn new(default: Arc<dyn Sandbox>) -> Self {
        Sandboxes {
            default,
            others: Vec::new(),
            build: None,
        }
    }

    /// Install dependencies in `build` (without one, functions cannot
    /// declare dependencies).
    pub fn with_build(mut self, build: Arc<BuildSandbox>) -> Self {
        self.build = Some(build);
        self
    }

    /// Also let functions choose `sandbox` (`"sandbox": "<kind>"` at deploy).
    pub fn allow(mut self, sandbox: Arc<dyn Sandbox>) -> Self {
        self.others.push(sandbox);
        self
    }

    /// The default kind.
    pub fn default_kind(&self) -> SandboxKind {
        self.default.kind()
    }

    /// Every kind offered, the default first.
    pub fn kinds(&self) -> Vec<SandboxKind> {
        self.all().map(|s| s.kind()).collect()
    }

    fn all(&self) -> impl Iterator<Item = &Arc<dyn Sandbox>> {
        std::iter::once(&self.default).chain(self.others.iter())
    }

    fn get(&self, kind: SandboxKind) -> Option<&Arc<dyn Sandbox>> {
        self.all().find(|s| s.kind() == kind)
    }
}

/// The orchestrator.
pub struct Orchestrator {
    config: OrchestratorConfig,
    store: Store,
    sandboxes: Sandboxes,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    code: CodeStore,
    deps: deps::DepsInstaller,
    /// Deploys hold it shared from storing code until their version is
    /// recorded; garbage collection holds it alone, so it never removes what
    /// a deploy is about to reference.
    storage: RwLock<()>,
    deploys: Semaphore,
    stopping: tokio_util::sync::CancellationToken,
    tenancy: tenancy::Tenancy,
    attestation: Option<Arc<attest::NodeAttestation>>,
    /// Per function id: how long its newest instance took to start.
    cold_starts: std::sync::Mutex<HashMap<String, Duration>>,
    /// Asynchronous invocations.
    queue: Arc<dyn queue::InvocationQueue>,
    /// Wakes the async worker when a request arrives.
    async_wake: Arc<tokio::sync::Notify>,
    /// Deploy builds running now.
    builds: deploy::Builds,
}

impl Orchestrator {
    /// Open the state in `config.data_dir` and remove instances a crashed
    /// predecessor left behind.
    pub async fn new(
        config: OrchestratorConfig,
        sandboxes: Sandboxes,
    ) -> Result<Orchestrator, OrchestratorError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            OrchestratorError::Internal(format!("create {}: {e}", config.data_dir.display()))
        })?;
        let store = Store::open(&config.data_dir.join("state.db"))?;
        for sandbox in sandboxes.all() {
            match sandbox.reap_leftovers().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    "removed {n} {} instance(s) left by a previous run",
                    sandbox.kind()
                ),
                Err(e) => tracing::warn!(
                    "could not check for leftover {} instances: {e}",
                    sandbox.kind()
                ),
            }
        }
        if let Some(build) = &sandboxes.build {
            if let Err(e) = build.reap_leftovers().await {
                tracing::warn!("could not check for leftover build sandboxes: {e}");
            }
        }
        let kinds: Vec<&str> = sandboxes.kinds().iter().map(|k| k.as_str()).collect();
        let metrics = Arc::new(Metrics::new(&kinds));
        let pool = Pool::new(
            pool::PoolLimits {
                instances: config.max_instances,
                per_function: config.max_instances_per_function,
                max_queue: config.max_queue,
                memory_mb: config.memory_budget_mb,
            },
            config.idle_timeout,
            config.heartbeat,
            metrics.clone(),
        );
        let code = CodeStore::new(config.data_dir.join("code"), config.code_writer_uid);
        code.prepare().map_err(code::archive_error)?;
        let deps = deps::DepsInstaller::new(
            config.data_dir.join("deps"),
            sandboxes.build.clone(),
            config.deps_limits,
        );
        let tenancy = tenancy::Tenancy::open(&config.data_dir, &store, config.auth).await?;
        let queue: Arc<dyn queue::InvocationQueue> =
            Arc::new(queue::SqliteQueue::new(store.clone()));
        let orchestrator = Orchestrator {
            tenancy,
            deploys: Semaphore::new(config.concurrent_deploys.max(1)),
            config,
            store,
            sandboxes,
            pool,
            metrics,
            code,
            deps,
            storage: RwLock::new(()),
            stopping: tokio_util::sync::CancellationToken::new(),
            attestation: None,
            cold_starts: Default::default(),
            queue,
            async_wake: Default::default(),
            builds: Default::default(),
        };
        let interrupted = orchestrator
            .store
            .interrupt_builds(
                "the server restarted during this build; deploy again",
                &now_rfc3339(),
            )
            .await?;
        if interrupted > 0 {
            tracing::warn!("{interrupted} builds were cut short by a restart");
        }
        orchestrator.collect_garbage().await;
        Ok(orchestrator)
    }

    /// Remove code trees and dependency layers no stored version uses any
    /// more (and what interrupted deploys left).
    pub async fn collect_garbage(&self) {
        let _alone = self.storage.write().await;
        let (code, deps) = match self.store.referenced().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot collect unused code: {e}");
                return;
            }
        };
        for sandbox in self.sandboxes.all() {
            sandbox.forget_trees(&code, &deps).await;
        }
        let store = self.code.clone();
        let removed = tokio::task::spawn_blocking(move || store.collect(&code)).await;
        let layers = self.deps.collect(&deps);
        match removed {
            Ok(Ok(n)) if n + layers > 0 => {
                tracing::info!("removed {n} unused code trees and {layers} dependency layers")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("cannot collect unused code: {e}"),
            Err(e) => tracing::warn!("code collection task: {e}"),
        }
    }

    /// Attest this node with `node`: functions that require attestation run only
    /// while its verdict satisfies them, and their results are signed.
    pub fn set_attestation(&mut self, node: Arc<attest::NodeAttestation>) {
        self.attestation = Some(node);
    }

    /// The node's attestation, if it has one.
    pub fn attestation(&self) -> Option<&Arc<attest::NodeAttestation>> {
        self.attestation.as_ref()
    }

    /// The settings in force.
    pub fn config(&self) -> &OrchestratorConfig {
        &self.config
    }

    /// Whether requests must present a key.
    pub fn auth_enabled(&self) -> bool {
        self.tenancy.enabled()
    }

    /// The caller a bearer token (or, with authentication off, anyone)
    /// stands for; `source` is where the request came from. A refusal is
    /// audited (at a bounded rate).
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        source: Option<String>,
    ) -> Result<Caller, OrchestratorError> {
        match self.tenancy.authenticate(token) {
            Ok(caller) => Ok(match source {
                Some(s) => caller.from_source(s),
                None => caller,
            }),
            Err(e) => {
                if let Some(dropped) = self.tenancy.refusal_budget() {
                    self.audit(faas_common::api::AuditEntry {
                        seq: 0,
                        at: now_rfc3339(),
                        tenant: None,
                        key_id: token.and_then(faas_auth::Token::parse).map(|t| t.id),
                        source,
                        action: "auth.failed".into(),
                        target: None,
                        detail: (dropped > 0)
                            .then(|| format!("{dropped} earlier failures not logged")),
                    })
                    .await;
                }
                Err(e)
            }
        }
    }

    /// At the first start of an empty data directory, make the admin key
    /// and write it to `<data>/admin.key` (0600); returns it then, once.
    pub async fn bootstrap_admin_key(&self) -> Result<Option<String>, OrchestratorError> {
        self.tenancy
            .bootstrap_admin(&self.store, &self.config.data_dir.join("admin.key"))
            .await
    }

    /// `POST /admin/keys`.
    pub async fn create_key(
        &self,
        caller: &Caller,
        request: faas_common::api::CreateKey,
    ) -> Result<faas_common::api::KeyInfo, OrchestratorError> {
        self.require(caller, Scope::Admin)?;
        let info = self.tenancy.create_key(&self.store, request).await?;
        self.audit(tenancy::entry(
            caller,
            "key.create",
            Some(&info.id),
            Some(format!(
                "tenant {}, scopes {}",
                info.tenant,
                info.scopes.join(",")
            )),
        ))
        .await;
        Ok(info)
    }

    /// `GET /admin/keys`.
    pub fn keys(
        &self,
        caller: &Caller,
    ) -> Result<Vec<faas_common::api::KeyInfo>, OrchestratorError> {
        self.require(caller, Scope::Admin)?;
        Ok(self.tenancy.keys())
    }

    /// `DELETE /admin/keys/{id}`: the key stops working at once.
    pub async fn revoke_key(&self, caller: &Caller, id: &str) -> Result<(), OrchestratorError> {
        self.require(caller, Scope::Admin)?;
        let record = self.tenancy.revoke_key(&self.store, id).await?;
        self.audit(tenancy::entry(
            caller,
            "key.revoke",
            Some(id),
            Some(format!("tenant {}", record.tenant)),
        ))
        .await;
        Ok(())
    }

    /// `GET /admin/tenants/{tenant}/quota`.
    pub fn quota(
        &self,
        caller: &Caller,
        tenant: &str,
    ) -> Result<faas_common::api::TenantQuota, OrchestratorError> {
        self.require(caller, Scope::Admin)?;
        Ok(self.tenancy.quota(&parse_tenant(tenant)?))
    }

    /// `PUT /admin/tenants/{tenant}/quota`.
    pub async fn set_quota(
        &self,
        caller: &Caller,
        tenant: &str,
        quota: faas_common::api::TenantQuota,
    ) -> Result<(), OrchestratorError> {
        self.require(caller, Scope::Admin)?;
        let tenant = parse_tenant(tenant)?;
        let detail = serde_json::to_string(&quota).ok();
        self.tenancy.set_quota(&self.store, &tenant, quota).await?;
        self.audit(tenancy::entry(
            caller,
            "quota.set",
            Some(tenant.as_str()),
            detail,
        ))
        .await;
        Ok(())
    }

    /// `GET /admin/audit`: a page, newest first.
    pub async fn audit_log(
        &self,
        caller: &Caller,
        limit: usize,
        before: Option<&str>,
    ) -> Result<faas_common::api::AuditList, OrchestratorError> {
        self.require(caller, Scope::Admin)?;
        let before = before
            .map(|b| {
                b.parse::<i64>()
                    .map_err(|_| OrchestratorError::Invalid(format!("invalid cursor {b:?}")))
            })
            .transpose()?;
        let limit = limit.clamp(1, 500);
        let mut entries = self.store.audit_page(limit + 1, before).await?;
        let next = (entries.len() > limit).then(|| entries[limit - 1].seq.to_string());
        entries.truncate(limit);
        Ok(faas_common::api::AuditList { entries, next })
    }

    /// `POST /admin/rotate-key`: re-seal every secret under a new key.
    pub async fn rotate_secrets_key(&self, caller: &Caller) -> Result<usize, OrchestratorError> {
        self.require(caller, Scope::Admin)?;
        let n = self.tenancy.rotate_secrets_key(&self.store).await?;
        self.audit(tenancy::entry(
            caller,
            "secrets.rotate",
            None,
            Some(format!("{n} secrets re-sealed")),
        ))
        .await;
        Ok(n)
    }

    /// `PUT /functions/{fn}/secrets/{name}`: the function's next instances
    /// get it as an environment variable; running ones are replaced.
    pub async fn set_secret(
        &self,
        caller: &Caller,
        function: &str,
        name: &str,
        value: &[u8],
    ) -> Result<(), OrchestratorError> {
        let f = self.function(caller, Scope::Deploy, function).await?;
        faas_common::validate::env_var(name, "")
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        let text = std::str::from_utf8(value)
            .map_err(|_| OrchestratorError::Invalid("a secret's value must be UTF-8".into()))?;
        if text.contains('\0') || value.len() > 32 * 1024 {
            return Err(OrchestratorError::Invalid(
                "a secret's value is at most 32 KiB, without NUL".into(),
            ));
        }
        let existing = self.store.secrets(Some(&f.id)).await?;
        if existing.len() >= 100 && !existing.iter().any(|(_, n, _)| n == name) {
            return Err(OrchestratorError::QuotaExceeded(
                "a function has at most 100 secrets".into(),
            ));
        }
        let sealed = self.tenancy.seal(&f.id, name, value)?;
        self.store.put_secret(&f.id, name, sealed).await?;
        self.tenancy.forget_secrets(&f.id);
        self.pool.recycle(&f.id);
        self.audit(tenancy::entry(
            caller,
            "secret.set",
            Some(&f.name),
            Some(name.to_string()),
        ))
        .await;
        Ok(())
    }

    /// `DELETE /functions/{fn}/secrets/{name}`.
    pub async fn delete_secret(
        &self,
        caller: &Caller,
        function: &str,
        name: &str,
    ) -> Result<(), OrchestratorError> {
        let f = self.function(caller, Scope::Deploy, function).await?;
        self.store.delete_secret(&f.id, name).await?;
        self.tenancy.forget_secrets(&f.id);
        self.pool.recycle(&f.id);
        self.audit(tenancy::entry(
            caller,
            "secret.delete",
            Some(&f.name),
            Some(name.to_string()),
        ))
        .await;
        Ok(())
    }

    /// `GET /functions/{fn}/secrets`: names only.
    pub async fn secret_names(
        &self,
        caller: &Caller,
        function: &str,
    ) -> Result<Vec<String>, OrchestratorError> {
        let f = self.function(caller, Scope::Read, function).await?;
        Ok(self
            .store
            .secrets(Some(&f.id))
            .await?
            .into_iter()
            .map(|(_, name, _)| name)
            .collect())
    }

    /// Sandbox kinds offered, the default first.
    pub fn sandbox_kinds(&self) -> Vec<SandboxKind> {
        self.sandboxes.kinds()
    }

    /// The caller's function `id_or_name`, if the caller may `scope` it: a
    /// missing scope is 403; a function of another tenant, or outside the
    /// key's list, is not found, as if it did not exist.
    async fn function(
        &self,
        caller: &Caller,
        scope: Scope,
        id_or_name: &str,
    ) -> Result<FunctionVersion, OrchestratorError> {
        self.require(caller, scope)?;
        let f = match self.store.latest(&caller.tenant, id_or_name).await {
            Ok(f) => f,
            Err(OrchestratorError::NotFound(what)) => {
                let first_build = self
                    .latest_build(&caller.tenant, id_or_name, false)
                    .await?
                    .filter(|b| b.state == BuildState::Building && caller.may_touch(&b.function));
                return Err(match first_build {
                    Some(b) => OrchestratorError::Conflict(format!(
                        "function {id_or_name:?} is not deployed yet: its first build {} is \
                         still installing dependencies (GET /functions/{id_or_name}/build)",
                        b.id
                    )),
                    None => OrchestratorError::NotFound(what),
                });
            }
            Err(e) => return Err(e),
        };
        if !caller.may_touch(&f.name) {
            return Err(OrchestratorError::NotFound(format!(
                "function {id_or_name:?}"
            )));
        }
        Ok(f)
    }

    /// 403 unless the caller holds the admin scope.
    pub fn require_admin(&self, caller: &Caller) -> Result<(), OrchestratorError> {
        self.require(caller, Scope::Admin)
    }

    /// 403 unless the caller holds `scope`.
    fn require(&self, caller: &Caller, scope: Scope) -> Result<(), OrchestratorError> {
        if caller.may(scope) {
            Ok(())
        } else {
            Err(OrchestratorError::Forbidden(format!(
                "this key lacks the {} scope",
                scope.as_str()
            )))
        }
    }

    /// Record a policy's refusal of `caller`'s `request` (method and
    /// path, keys redacted): a scope, a quota, a rate. Refusals come in
    /// floods; past a bounded rate they are counted, not written.
    pub async fn audit_refusal(&self, caller: &Caller, request: &str, why: &str) {
        let Some(dropped) = self.tenancy.refusal_budget() else {
            return;
        };
        let mut detail = why.to_string();
        if dropped > 0 {
            detail.push_str(&format!(" ({dropped} earlier refusals not logged)"));
        }
        self.audit(tenancy::entry(
            caller,
            "denied",
            Some(request),
            Some(detail),
        ))
        .await;
    }

    /// Append to the audit log; a failure to do so is logged, not fatal.
    pub async fn audit(&self, entry: faas_common::api::AuditEntry) {
        if let Err(e) = self.store.audit(entry).await {
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    /// A function's newest version.
    pub async fn get(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> Result<FunctionInfo, OrchestratorError> {
        Ok(self.function(caller, Scope::Read, id_or_name).await?.info())
    }

    /// Every function of the caller's tenant (that the key may see).
    pub async fn list(&self, caller: &Caller) -> Result<Vec<FunctionInfo>, OrchestratorError> {
        self.require(caller, Scope::Read)?;
        Ok(self
            .store
            .list(Some(&caller.tenant))
            .await?
            .into_iter()
            .filter(|v| caller.may_touch(&v.name))
            .map(|v| v.info())
            .collect())
    }

    /// How many functions there are on this node, every tenant's.
    pub async fn function_count(&self) -> Result<usize, OrchestratorError> {
        Ok(self.store.list(None).await?.len())
    }

    /// Remove a function, stop its instances and collect its code; returns
    /// (id, name).
    pub async fn delete(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> Result<(String, String), OrchestratorError> {
        let f = match self.function(caller, Scope::Deploy, id_or_name).await {
            Ok(f) => f,
            Err(e @ (OrchestratorError::NotFound(_) | OrchestratorError::Conflict(_))) => {
                // No version yet: deleting it cancels its first build.
                let known = self
                    .latest_build(&caller.tenant, id_or_name, false)
                    .await?
                    .is_some_and(|b| caller.may_touch(&b.function));
                if !known {
                    return Err(e);
                }
                self.cancel_builds(&caller.tenant, id_or_name).await?;
                self.audit(tenancy::entry(caller, "delete", Some(id_or_name), None))
                    .await;
                return Ok((String::new(), id_or_name.to_string()));
            }
            Err(e) => return Err(e),
        };
        // First, so that no build running now records a version after it.
        self.cancel_builds(&caller.tenant, &f.name).await?;
        let (id, name) = self.store.delete(&caller.tenant, &f.id).await?;
        self.pool.retire(&id, u32::MAX);
        self.tenancy.forget_secrets(&id);
        self.cold_starts
            .lock()
            .expect("cold starts lock")
            .remove(&id);
        tracing::info!(tenant = %caller.tenant, function = %name, "deleted");
        self.audit(tenancy::entry(caller, "delete", Some(&name), None))
            .await;
        self.collect_garbage().await;
        Ok((id, name))
    }

    /// Bind Blueprint job `job_id` to a function: `POST /job/{job_id}` then invokes it.
    pub async fn bind_job(
        &self,
        caller: &Caller,
        job_id: u32,
        function: &str,
    ) -> Result<JobBinding, OrchestratorError> {
        let f = self.function(caller, Scope::Deploy, function).await?;
        let binding = self.store.bind_job(&caller.tenant, job_id, &f.id).await?;
        tracing::info!(tenant = %caller.tenant, job_id, function = %binding.function, "job bound");
        self.audit(tenancy::entry(
            caller,
            "job.bind",
            Some(&binding.function),
            Some(format!("job {job_id}")),
        ))
        .await;
        Ok(binding)
    }

    /// Remove one of the tenant's job bindings.
    pub async fn unbind_job(&self, caller: &Caller, job_id: u32) -> Result<(), OrchestratorError> {
        self.require(caller, Scope::Deploy)?;
        // A key limited to some functions may unbind only their jobs.
        let binding = self
            .store
            .job(&caller.tenant, job_id)
            .await?
            .filter(|b| caller.may_touch(&b.function))
            .ok_or_else(|| OrchestratorError::NotFound(format!("job {job_id} is not bound")))?;
        self.store.unbind_job(&caller.tenant, job_id).await?;
        self.audit(tenancy::entry(
            caller,
            "job.unbind",
            Some(&binding.function),
            Some(format!("job {job_id}")),
        ))
        .await;
        Ok(())
    }

    /// Every job binding of the tenant.
    pub async fn jobs(&self, caller: &Caller) -> Result<Vec<JobBinding>, OrchestratorError> {
        self.require(caller, Scope::Read)?;
        Ok(self
            .store
            .jobs(&caller.tenant)
            .await?
            .into_iter()
            .filter(|b| caller.may_touch(&b.function))
            .collect())
    }

    /// The tenant's binding of `job_id`, if any (and if the key may see it).
    pub async fn job(
        &self,
        caller: &Caller,
        job_id: u32,
    ) -> Result<Option<JobBinding>, OrchestratorError> {
        self.require(caller, Scope::Read)?;
        Ok(self
            .store
            .job(&caller.tenant, job_id)
            .await?
            .filter(|b| caller.may_touch(&b.function)))
    }

    /// Invoke the function the tenant bound to `job_id` with the raw job arguments.
    pub async fn invoke_job(
        self: &Arc<Self>,
        caller: &Caller,
        job_id: u32,
        args: Vec<u8>,
    ) -> Result<Invocation, OrchestratorError> {
        self.require(caller, Scope::Invoke)?;
        let binding = self
            .store
            .job(&caller.tenant, job_id)
            .await?
            .filter(|b| caller.may_touch(&b.function))
            .ok_or_else(|| {
                OrchestratorError::NotFound(format!("function bound to job {job_id}"))
            })?;
        self.invoke(caller, &binding.function_id, args).await
    }

    /// Instance and invocation counts.
    pub async fn status(
        &self,
        caller: &Caller,
        id_or_name: &str,
    ) -> Result<FunctionStatus, OrchestratorError> {
        let f = match self.function(caller, Scope::Read, id_or_name).await {
            Ok(f) => f,
            Err(e @ (OrchestratorError::NotFound(_) | OrchestratorError::Conflict(_))) => {
                // No version yet: a first build running or failed is its status.
                let build = self
                    .latest_build(&caller.tenant, id_or_name, false)
                    .await?
                    .filter(|b| caller.may_touch(&b.function))
                    .ok_or(e)?;
                return Ok(FunctionStatus {
                    id: String::new(),
                    name: build.function.clone(),
                    version: 0,
                    warm_instances: 0,
                    busy_instances: 0,
                    starting_instances: 0,
                    queued: 0,
                    effective_scaling: None,
                    ephemeral_mb: None,
                    invocations: 0,
                    failures: 0,
                    last_invocation: None,
                    last_outcome: None,
                    last_cold_start_ms: None,
                    build: Some(build),
                });
            }
            Err(e) => return Err(e),
        };
        let build = self.latest_build(&f.tenant, &f.name, false).await?;
        let (warm, busy) = self.pool.counts(&f.id);
        let (queued, starting) = self.pool.pressure(&f.id);
        let limits = self.limits_of(&f);
        let (invocations, failures) = self.store.counts(&f.id).await?;
        let last = self.store.invocations(&f.id, 1, None).await?.pop();
        let last_cold_start_ms = self
            .cold_starts
            .lock()
            .expect("cold starts lock")
            .get(&f.id)
            .map(|d| d.as_secs_f64() * 1000.0);
        Ok(FunctionStatus {
            id: f.id,
            name: f.name,
            version: f.version,
            warm_instances: warm,
            busy_instances: busy,
            starting_instances: starting,
            queued,
            effective_scaling: Some(scaling::effective(&limits)),
            ephemeral_mb: Some(f.ephemeral_mb),
            invocations,
            failures,
            last_invocation: last.as_ref().map(|(_, r)| r.started_at.clone()),
            last_outcome: last.map(|(_, r)| r.outcome),
            last_cold_start_ms,
            build,
        })
    }

    /// One page of recent invocations, newest first: at most `limit` (up to
    /// 100) records older than the cursor `before`, and never more than
    /// [`MAX_LOGS_PAGE_BYTES`] of them.
    pub async fn logs(
        &self,
        caller: &Caller,
        id_or_name: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<InvocationList, OrchestratorError> {
        let before = before
            .map(|b| {
                b.parse::<i64>()
                    .map_err(|_| OrchestratorError::Invalid(format!("invalid cursor {b:?}")))
            })
            .transpose()?;
        let f = self.function(caller, Scope::Read, id_or_name).await?;
        let limit = limit.clamp(1, 100);
        // One more than asked says whether there is a next page.
        let rows = self.store.invocations(&f.id, limit + 1, before).await?;
        let mut page = InvocationList {
            invocations: Vec::new(),
            next: None,
        };
        let mut bytes = 0;
        for (i, (seq, record)) in rows.into_iter().enumerate() {
            let size = record.logs.len() + record.error.as_ref().map_or(0, String::len) + 256;
            let full =
                i == limit || (!page.invocations.is_empty() && bytes + size > MAX_LOGS_PAGE_BYTES);
            if full {
                page.next = page.invocations.last().map(|_| (seq + 1).to_string());
                break;
            }
            bytes += size;
            page.invocations.push(record);
        }
        Ok(page)
    }

    /// Invoke the newest version of a function with `payload`.
    ///
    /// The work runs in its own task: a caller that goes away does not cut an
    /// invocation short, and its instance and record are settled either way.
    pub async fn invoke(
        self: &Arc<Self>,
        caller: &Caller,
        id_or_name: &str,
        payload: Vec<u8>,
    ) -> Result<Invocation, OrchestratorError> {
        if payload.len() > self.config.max_payload_bytes {
            return Err(OrchestratorError::TooLarge(format!(
                "payload of {} bytes exceeds the {} byte limit",
                payload.len(),
                self.config.max_payload_bytes
            )));
        }
        let f = self.function(caller, Scope::Invoke, id_or_name).await?;
        self.tenancy
            .admit_invocation(&caller.tenant)
            .inspect_err(|_| self.metrics.reject("rate_limited"))?;
        let this = self.clone();
        let request_id = uuid::Uuid::new_v4().to_string();
        let span = invocation_span(&f, &request_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move { this.run(f, payload, request_id).await },
            span,
        ))
        .await
        .map_err(|e| OrchestratorError::Internal(format!("invocation task: {e}")))?
    }

    /// One invocation: admit, acquire an instance, call it, settle the
    /// outcome, record it, sign the result of an attested function.
    async fn run(
        &self,
        f: FunctionVersion,
        payload: Vec<u8>,
        request_id: String,
    ) -> Result<Invocation, OrchestratorError> {
        let started = Instant::now();
        let started_at = now_rfc3339();
        // Attested functions: refuse before any sandbox starts, never fall back.
        let attested_kind = match &f.attestation {
            None => None,
            Some(required) => Some(self.admit(&f.name, required)?),
        };
        let secrets = self.tenancy.secrets_of(&self.store, &f.id).await?;
        let wait = Duration::from_secs(f.timeout_sec.into());
        let (result, cold, prestarted) = match self.acquire(&f, &secrets, &request_id, wait).await {
            Err(e) => (Err(e), false, false),
            Ok(lease) => {
                let (cold, prestarted) = (lease.cold, lease.cold && lease.prestarted());
                let result = self.call(&f, lease, &request_id, payload).await;
                (scrub_result(result, &secrets), cold, prestarted)
            }
        };
        let duration = started.elapsed();
        self.record(&f, &request_id, started_at, duration, cold, &result);
        let (body, content_type, logs) = result?;
        let proof = match (attested_kind, &self.attestation) {
            (Some(kind), Some(node)) => Some(node.sign(
                kind,
                &faas_attest::ResultFields {
                    request_id: &request_id,
                    function: &f.name,
                    version: f.version,
                    body: &body,
                },
            )),
            _ => None,
        };
        Ok(Invocation {
            request_id,
            version: f.version,
            body,
            content_type,
            cold_start: cold,
            prestarted,
            duration,
            proof,
            logs,
        })
    }

    /// A warm instance of `f`, or a new one (counted as a cold start),
    /// waiting at most `wait` for capacity.
    async fn acquire(
        &self,
        f: &FunctionVersion,
        secrets: &BTreeMap<String, String>,
        request_id: &str,
        wait: Duration,
    ) -> Result<pool::Lease, OrchestratorError> {
        let Some(sandbox) = self.sandboxes.get(f.sandbox) else {
            return Err(OrchestratorError::Overloaded(format!(
                "function {} needs the {} sandbox, which this node no longer offers",
                f.name, f.sandbox
            )));
        };
        let key = PoolKey {
            function_id: f.id.clone(),
            version: f.version,
        };
        let quota = self.tenancy.quota(&f.tenant);
        let share = pool::TenantShare {
            tenant: f.tenant.to_string(),
            max_instances: quota.max_instances,
            max_memory_mb: quota.max_memory_mb,
        };
        self.pool.limit_function(&f.id, self.limits_of(f));
        let lease = self
            .pool
            .acquire(
                &key,
                &share,
                sandbox.as_ref(),
                || self.instance_spec(f, secrets),
                f.memory_mb,
                wait,
            )
            .await
            .map_err(|e| self.acquire_failure(request_id, e))?;
        if lease.cold {
            self.cold_starts
                .lock()
                .expect("cold starts lock")
                .insert(f.id.clone(), lease.start_time);
            // Warm-ups and provisioning name their leases `warm-...`.
            let kind = if request_id.starts_with("warm-") {
                "ahead"
            } else {
                "on_demand"
            };
            let from = if lease.prestarted() {
                "prestarted"
            } else {
                "full"
            };
            self.metrics
                .instance_start
                .get_or_create(&metrics::StartLabels {
                    kind: kind.into(),
                    from: from.into(),
                })
                .observe(lease.start_time.as_secs_f64());
            let labels = FunctionLabels {
                tenant: f.tenant.to_string(),
                function: f.name.clone(),
            };
            self.metrics.cold_starts.get_or_create(&labels).inc();
            self.metrics
                .cold_start_duration
                .get_or_create(&labels)
                .observe(lease.start_time.as_secs_f64());
        }
        Ok(lease)
    }

    /// Invoke the handler on the leased instance and give the instance back
    /// (unhealthy when the call failed); the body, its type and the logs.
    async fn call(
        &self,
        f: &FunctionVersion,
        mut lease: pool::Lease,
        request_id: &str,
        payload: Vec<u8>,
    ) -> Result<(Vec<u8>, String, String), OrchestratorError> {
        // `timeout_sec` bounds the handler's run, as Lambda's does; the cold
        // start has its own bounds (sandbox start, handler load), so a slow
        // boot (a microVM under TCG) never eats a short timeout.
        let timeout = Duration::from_secs(f.timeout_sec.into());
        let out = tokio::select! {
            out = lease.instance().invoke(request_id, payload, timeout) => out,
            () = self.stopping_for(SHUTDOWN_GRACE) => Err(ExecutorError::Crashed {
                reason: "the server shut down during the invocation".into(),
                signal: None,
                logs: String::new(),
            }),
        };
        self.pool.release(lease, out.is_ok());
        settle(f, request_id, out)
    }

    /// Count the invocation in the metrics and keep its record.
    fn record(
        &self,
        f: &FunctionVersion,
        request_id: &str,
        started_at: String,
        duration: Duration,
        cold: bool,
        result: &Result<(Vec<u8>, String, String), OrchestratorError>,
    ) {
        let (outcome, error, logs) = match result {
            Ok((_, _, logs)) => (Outcome::Success, None, logs.clone()),
            Err(OrchestratorError::Invocation {
                kind,
                message,
                logs,
                ..
            }) => (kind.outcome(), Some(message.clone()), logs.clone()),
            Err(
                OrchestratorError::Overloaded(m)
                | OrchestratorError::Busy { message: m, .. }
                | OrchestratorError::RateLimited { message: m, .. },
            ) => (Outcome::Unavailable, Some(m.clone()), String::new()),
            Err(e) => (Outcome::Crash, Some(e.to_string()), String::new()),
        };
        self.metrics
            .invocations
            .get_or_create(&OutcomeLabels {
                tenant: f.tenant.to_string(),
                function: f.name.clone(),
                outcome: outcome.as_str().into(),
            })
            .inc();
        self.metrics
            .duration
            .get_or_create(&FunctionLabels {
                tenant: f.tenant.to_string(),
                function: f.name.clone(),
            })
            .observe(duration.as_secs_f64());
        let record = InvocationRecord {
            request_id: request_id.to_string(),
            version: f.version,
            started_at,
            duration_ms: duration.as_secs_f64() * 1000.0,
            outcome,
            cold_start: cold,
            error,
            logs,
        };
        // Written after the answer: the caller does not wait for a log line.
        self.store.record_later(f.id.clone(), record);
    }

    /// Whether this node may run a function that requires `required` attestation.
    fn admit(
        &self,
        function: &str,
        required: &str,
    ) -> Result<faas_attest::EvidenceKind, OrchestratorError> {
        let kind = attest::parse_requirement(required)?;
        let refuse = |why: String| {
            OrchestratorError::NotAttested(format!(
                "function {function} requires {kind} attestation and will not run here: {why}"
            ))
        };
        let node = self
            .attestation
            .as_ref()
            .ok_or_else(|| refuse("attestation is not enabled on this node".into()))?;
        node.admit(kind).map_err(refuse)
    }

    /// What an instance of `f` starts with; its secrets join its environment.
    fn instance_spec(
        &self,
        f: &FunctionVersion,
        secrets: &BTreeMap<String, String>,
    ) -> InstanceSpec {
        let info = &f;
        let deps_dir = f.deps_sha256.as_ref().map(|sha| self.deps.dir(sha));
        InstanceSpec {
            language: info.language,
            code_dir: Some(self.code.path(&f.code_sha256)),
            deps_dir: deps_dir.clone(),
            memory_mb: info.memory_mb,
            ephemeral_mb: info.ephemeral_mb,
            init: Some(InitSpec {
                language: info.language,
                handler: info.handler.clone(),
                code_dir: GUEST_CODE_DIR.into(),
                deps_dir: deps_dir.map(|_| GUEST_DEPS_DIR.to_string()),
                function_name: info.name.clone(),
                function_version: info.version,
                memory_mb: info.memory_mb,
                env: info
                    .env
                    .iter()
                    .chain(secrets.iter())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
            // Stored canonical at deploy: they parse again.
            egress: f.egress.iter().filter_map(|r| r.parse().ok()).collect(),
        }
    }

    fn acquire_failure(&self, request_id: &str, e: AcquireError) -> OrchestratorError {
        match &e {
            AcquireError::Saturated(_) => self.metrics.reject("no_capacity"),
            AcquireError::TenantFull(_) => self.metrics.reject("tenant_quota"),
            AcquireError::QueueFull(_) => self.metrics.reject("queue_full"),
            AcquireError::Closed | AcquireError::Start(_) => {}
        }
        match e {
            AcquireError::Saturated(why) => {
                OrchestratorError::Overloaded(format!("{why}; retry later"))
            }
            // Its own limit: the tenant's next instance frees up when one of
            // its calls ends, typically within a second.
            AcquireError::TenantFull(why) => OrchestratorError::RateLimited {
                message: why,
                retry_after: 1,
            },
            AcquireError::Closed => OrchestratorError::Overloaded("server is shutting down".into()),
            // A short queue drains in about one call's time.
            AcquireError::QueueFull(why) => OrchestratorError::Busy {
                message: format!("{why}; retry later"),
                retry_after: 1,
            },
            AcquireError::Start(e) => invocation_error(request_id, e),
        }
    }

    /// `POST /execute`: run a command in a runtime image with the payload on stdin.
    pub async fn execute(
        &self,
        caller: &Caller,
        args: ExecuteFunctionArgs,
    ) -> Result<InvocationResult, OrchestratorError> {
        // Running an arbitrary command is as much as deploying code.
        self.require(caller, Scope::Deploy)?;
        self.tenancy
            .admit_invocation(&caller.tenant)
            .inspect_err(|_| self.metrics.reject("rate_limited"))?;
        if args.payload.len() > self.config.max_payload_bytes {
            return Err(OrchestratorError::TooLarge(format!(
                "payload of {} bytes exceeds the {} byte limit",
                args.payload.len(),
                self.config.max_payload_bytes
            )));
        }
        args.image
            .parse::<Language>()
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        if args.command.is_empty() {
            return Err(OrchestratorError::Invalid(
                "command must not be empty".into(),
            ));
        }
        for kv in args.env_vars.iter().flatten() {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                OrchestratorError::Invalid(format!("env var {kv:?} is not KEY=VALUE"))
            })?;
            faas_common::validate::env_var(k, v)
                .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        let config = SandboxConfig {
            function_id: request_id.clone(),
            source: args.image,
            command: args.command,
            env_vars: args.env_vars,
            payload: args.payload,
            memory_mb: self.config.default_memory_mb,
            timeout_sec: self.config.default_timeout_sec,
        };
        match self.sandboxes.default.execute(config).await {
            Ok(r) => Ok(r),
            Err(ExecutorError::BadRequest(m)) => Err(OrchestratorError::Invalid(m)),
            Err(ExecutorError::ImageMissing(m)) => Err(OrchestratorError::Overloaded(
                ExecutorError::ImageMissing(m).to_string(),
            )),
            // The command ran (or tried to) and failed: that is a result, not a server error.
            Err(e) => Ok(InvocationResult {
                request_id,
                response: None,
                logs: e.logs().map(str::to_string),
                error: Some(e.to_string()),
            }),
        }
    }

    /// Prometheus text.
    pub fn render_metrics(&self) -> String {
        let spares: usize = self.sandboxes.all().map(|s| s.spares()).sum();
        self.metrics.prestarted_instances.set(spares as i64);
        if let Some(a) = self.attestation.as_ref().and_then(|n| n.current()) {
            self.metrics.set_attestation(
                a.evidence.kind.as_str(),
                a.verdict.simulated,
                a.verdict.hardware,
                a.verdict.ok,
            );
        }
        self.metrics.render()
    }

    /// Resolves `grace` after shutdown began.
    async fn stopping_for(&self, grace: Duration) {
        self.stopping.cancelled().await;
        tokio::time::sleep(grace).await;
    }

    /// Begin shutting down (at the signal, before the API drains): new
    /// invocations are refused, instances still starting are abandoned, idle
    /// ones destroyed; invocations running now get [`SHUTDOWN_GRACE`].
    pub fn begin_shutdown(&self) {
        self.stopping.cancel();
        self.pool.close();
    }

    /// Stop every instance: idle ones at once, busy ones when their
    /// invocation ends or [`SHUTDOWN_GRACE`] has passed; waits for every
    /// teardown, then sweeps anything a failed teardown left (a container
    /// whose daemon was away, say).
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        self.pool.shutdown().await;
        self.store.settled().await;
        if let Some(build) = &self.sandboxes.build {
            if let Err(e) = build.reap_leftovers().await {
                tracing::warn!("could not sweep build sandboxes at shutdown: {e}");
            }
        }
        for sandbox in self.sandboxes.all() {
            if let Err(e) = sandbox.shutdown().await {
                tracing::warn!(
                    "could not sweep {} instances at shutdown: {e}",
                    sandbox.kind()
                );
            }
        }
    }
}

/// The result with every secret's value scrubbed from its logs and error.
fn scrub_result(
    result: Result<(Vec<u8>, String, String), OrchestratorError>,
    secrets: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, String, String), OrchestratorError> {
    if secrets.is_empty() {
        return result;
    }
    match result {
        Ok((body, content_type, logs)) => Ok((body, content_type, tenancy::scrub(&logs, secrets))),
        Err(OrchestratorError::Invocation {
            request_id,
            kind,
            message,
            logs,
        }) => Err(OrchestratorError::Invocation {
            request_id,
            kind,
            message: tenancy::scrub(&message, secrets),
            logs: tenancy::scrub(&logs, secrets),
        }),
        Err(e) => Err(e),
    }
}

/// Bytes of the files under `dir` (symlinks not followed).
pub(crate) async fn tree_bytes(dir: PathBuf) -> u64 {
    tokio::task::spawn_blocking(move || {
        let mut total = 0;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(e.path()),
                    Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                    _ => {}
                }
            }
        }
        total
    })
    .await
    .unwrap_or(0)
}

/// What the sandbox's answer means for the caller: the response, or the
/// failure with its kind.
fn settle(
    f: &FunctionVersion,
    request_id: &str,
    out: Result<faas_executor::InvokeOutput, ExecutorError>,
) -> Result<(Vec<u8>, String, String), OrchestratorError> {
    match out {
        Ok(out) => match out.error {
            None => Ok((out.body, out.content_type, out.logs)),
            Some(message) => Err(OrchestratorError::Invocation {
                request_id: request_id.to_string(),
                kind: FailureKind::Handler,
                message,
                logs: out.logs,
            }),
        },
        Err(ExecutorError::Timeout { .. }) => Err(OrchestratorError::Invocation {
            request_id: request_id.to_string(),
            kind: FailureKind::Timeout,
            message: format!("function timed out after {}s", f.timeout_sec),
            logs: String::new(),
        }),
        Err(e) => Err(invocation_error(request_id, e)),
    }
}

fn invocation_error(request_id: &str, e: ExecutorError) -> OrchestratorError {
    let kind = match &e {
        ExecutorError::Init { .. } => FailureKind::Init,
        ExecutorError::Timeout { .. } => FailureKind::Timeout,
        ExecutorError::OutOfMemory { .. } => FailureKind::OutOfMemory,
        ExecutorError::ImageMissing(_) | ExecutorError::Start(_) | ExecutorError::Io { .. } => {
            return OrchestratorError::Internal(e.to_string())
        }
        _ => FailureKind::Crash,
    };
    let message = match &e {
        ExecutorError::Init { error, .. } => format!("handler failed to load: {error}"),
        other => other.to_string(),
    };
    OrchestratorError::Invocation {
        request_id: request_id.to_string(),
        kind,
        logs: e.logs().unwrap_or_default().to_string(),
        message,
    }
}

fn parse_tenant(tenant: &str) -> Result<TenantId, OrchestratorError> {
    TenantId::try_from(tenant.to_string()).map_err(|e| OrchestratorError::Invalid(e.to_string()))
}

/// Now as RFC 3339 with second precision.
/// The span every log line of one invocation is written in: its request id
/// and function on each line.
pub(crate) fn invocation_span(f: &FunctionVersion, request_id: &str) -> tracing::Span {
    tracing::info_span!("invocation", request_id = %request_id, tenant = %f.tenant, function = %f.name)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
