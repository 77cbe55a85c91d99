//! Durable state in SQLite (WAL): functions and their versions per tenant,
//! recent invocations, job bindings, API keys (hashes only), quotas, sealed
//! secrets and the append-only audit log.
//!
//! One connection behind a mutex, used from `spawn_blocking`: SQLite serialises
//! writers anyway, and the statements here take microseconds.
//!
//! The schema is versioned (`PRAGMA user_version`): [`MIGRATIONS`] brings a
//! database of any earlier version forward, in order, each step in a
//! transaction, so a data directory written by one release opens in the next.
//! A version this release does not know (a newer release's) is refused.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use std::collections::BTreeMap;

use faas_auth::KeyRecord;
use faas_auth::TenantId;
use faas_common::api::{
    AuditEntry, BuildInfo, BuildState, FunctionInfo, InvocationRecord, JobBinding, TenantQuota,
};
use faas_common::{Language, SandboxKind, Scaling};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::OrchestratorError;

/// How many invocation records are kept per function.
const KEEP_INVOCATIONS: i64 = 200;
/// How many versions are kept per function (the newest); older ones, and the
/// code and dependency layers only they used, go.
const KEEP_VERSIONS: i64 = 5;

/// One version of a function as stored: what the API shows, and what it
/// does not (the content addresses of its code and dependencies). Its JSON
/// form is the `spec` column; fields are only ever added, with defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionVersion {
    /// Stable id (`fn-` + 12 hex digits).
    pub id: String,
    /// The tenant that owns it (records written before tenants: the default one).
    #[serde(default = "TenantId::default_tenant")]
    pub tenant: TenantId,
    /// Name.
    pub name: String,
    /// Version number, from 1.
    pub version: u32,
    /// Runtime language.
    pub language: Language,
    /// Handler reference.
    pub handler: String,
    /// Memory limit, MiB.
    pub memory_mb: u32,
    /// Size of each instance's `/tmp`, MiB (versions stored before it
    /// existed read as the default).
    #[serde(default = "faas_common::validate::default_ephemeral_mb")]
    pub ephemeral_mb: u32,
    /// Invocation time limit, seconds.
    pub timeout_sec: u32,
    /// Declared dependencies, as given.
    pub dependencies: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Sandbox kind it runs in.
    pub sandbox: SandboxKind,
    /// Attested hardware it requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// Destinations it may reach, canonical (`faas_common::network`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    /// When this version was deployed (RFC 3339).
    pub created_at: String,
    /// SHA-256 key of the stored code tree (never shown by the API: it names
    /// a host directory).
    pub code_sha256: String,
    /// SHA-256 key of the installed dependency layer, if any.
    pub deps_sha256: Option<String>,
    /// Bytes of code and dependencies this version stores (for quotas).
    #[serde(default)]
    pub stored_bytes: u64,
    /// The function's scaling (stored with the function, not the version).
    #[serde(skip)]
    pub scaling: Scaling,
    /// Retries of a failed asynchronous invocation, if set at deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

impl FunctionVersion {
    /// What the API shows of it.
    pub fn info(&self) -> FunctionInfo {
        FunctionInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            version: self.version,
            language: self.language,
            handler: self.handler.clone(),
            memory_mb: self.memory_mb,
            ephemeral_mb: self.ephemeral_mb,
            timeout_sec: self.timeout_sec,
            dependencies: self.dependencies.clone(),
            env: self.env.clone(),
            sandbox: self.sandbox,
            attestation: self.attestation.clone(),
            egress: self.egress.clone(),
            scaling: self.scaling,
            max_retries: self.max_retries,
            stored_bytes: self.stored_bytes,
            created_at: self.created_at.clone(),
        }
    }
}

/// The schema each version adds, in order: `MIGRATIONS[i]` takes a database
/// from version `i` to `i + 1`. Version 0 is an empty database or one written
/// before the schema carried a version (the same tables, all created with
/// `IF NOT EXISTS`, so the first step applies to both).
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS functions (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        invocations INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS versions (
        function_id TEXT NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        spec TEXT NOT NULL,
        PRIMARY KEY (function_id, version)
    );
    CREATE TABLE IF NOT EXISTS invocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL,
        function_id TEXT NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (function_id, seq);
    CREATE TABLE IF NOT EXISTS jobs (
        job_id INTEGER PRIMARY KEY,
        function_id TEXT NOT NULL REFERENCES functions(id) ON DELETE CASCADE
    );",
    // 2: tenants. Function names and job ids are per tenant; what existed
    // before belongs to the default tenant. API keys (hashes only), quotas,
    // sealed secrets, and the append-only audit log.
    "CREATE TABLE functions_2 (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL,
        invocations INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        UNIQUE (tenant, name)
    );
    INSERT INTO functions_2 (id, tenant, name, created_at, invocations, failures)
        SELECT id, 'default', name, created_at, invocations, failures FROM functions;
    DROP TABLE functions;
    ALTER TABLE functions_2 RENAME TO functions;
    CREATE TABLE jobs_2 (
        tenant TEXT NOT NULL,
        job_id INTEGER NOT NULL,
        function_id TEXT NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
        PRIMARY KEY (tenant, job_id)
    );
    INSERT INTO jobs_2 (tenant, job_id, function_id) SELECT 'default', job_id, function_id FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_2 RENAME TO jobs;
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        record TEXT NOT NULL,
        hash TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE quotas (
        tenant TEXT PRIMARY KEY,
        quota TEXT NOT NULL
    );
    CREATE TABLE secrets (
        function_id TEXT NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        sealed BLOB NOT NULL,
        PRIMARY KEY (function_id, name)
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        entry TEXT NOT NULL
    );
    CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
    // 3: scaling, per function (not per version: it changes without a deploy).
    "ALTER TABLE functions ADD COLUMN scaling TEXT NOT NULL DEFAULT '{}';",
    // 4: asynchronous invocations (`queue.rs`): the request, durable before
    // its 202, then its result until it expires.
    "CREATE TABLE async_invocations (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        function_id TEXT NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
        state TEXT NOT NULL,
        next_at INTEGER NOT NULL,
        expires_at INTEGER,
        payload BLOB NOT NULL,
        callback_url TEXT,
        record TEXT NOT NULL
    );
    CREATE INDEX async_due ON async_invocations (state, next_at);
    CREATE INDEX async_by_function ON async_invocations (function_id, state);",
    // 5: cron schedules, per function; `last_fire_ms` is the last tick that
    // fired, so a restart after downtime fires a missed tick once.
    "CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        function_id TEXT NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
        cron TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        last_fire_ms INTEGER
    );
    CREATE INDEX schedules_by_function ON schedules (function_id);",
    // 6: deploy builds (`builds.rs`), by tenant and function name: a first
    // deploy's build exists before its function does.
    "CREATE TABLE builds (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        seq INTEGER NOT NULL,
        info TEXT NOT NULL
    );
    CREATE INDEX builds_by_function ON builds (tenant, name, seq);",
];

/// Builds kept per function (the newest).
const KEEP_BUILDS: i64 = 10;
/// Builds kept per tenant (the newest), whatever their functions.
const KEEP_TENANT_BUILDS: i64 = 200;

/// A stored cron schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSchedule {
    /// Its id.
    pub id: String,
    /// The tenant of its function.
    pub tenant: TenantId,
    /// The function's id.
    pub function_id: String,
    /// The cron expression.
    pub cron: String,
    /// The payload, JSON text.
    pub payload: String,
    /// When it was added, Unix ms.
    pub created_ms: i64,
    /// The last tick that fired, Unix ms.
    pub last_fire_ms: Option<i64>,
}

/// What a deploy sets besides the version: `None` keeps what the function has.
#[derive(Debug, Clone, Default)]
pub struct FunctionSettings {
    /// Its scaling.
    pub scaling: Option<Scaling>,
    /// Its schedules (id, cron, payload JSON), replacing the old ones.
    pub schedules: Option<Vec<(String, String, String)>>,
}

/// A stored version's spec with its function's scaling.
fn version_with(spec: &str, scaling: &str) -> Result<FunctionVersion, OrchestratorError> {
    let mut version: FunctionVersion = serde_json::from_str(spec)?;
    version.scaling = serde_json::from_str(scaling)?;
    Ok(version)
}

/// Bring `conn` to the newest schema version; returns the version it was at.
fn migrate(conn: &mut Connection) -> Result<u32, OrchestratorError> {
    let found: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let newest = MIGRATIONS.len() as u32;
    if found > newest {
        return Err(OrchestratorError::Internal(format!(
            "the database is at schema version {found}, newer than this release knows ({newest}); use a newer release"
        )));
    }
    // Tables are rebuilt by copy, drop and rename: with foreign keys on, a
    // drop would cascade into the rows that reference them. Checked before
    // each step commits instead.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    for (from, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        let broken: Option<String> = tx
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()?;
        if let Some(table) = broken {
            return Err(OrchestratorError::Internal(format!(
                "schema migration {} left broken references in {table}",
                from + 1
            )));
        }
        tx.pragma_update(None, "user_version", from as u32 + 1)?;
        tx.commit()?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(found)
}

/// (id, name) of `tenant`'s function whose id or name is `key`; another
/// tenant's function is not found, exactly as one that does not exist.
fn resolve(
    conn: &Connection,
    tenant: &TenantId,
    key: &str,
) -> Result<(String, String), OrchestratorError> {
    conn.query_row(
        "SELECT id, name FROM functions WHERE (id = ?1 OR name = ?1) AND tenant = ?2",
        params![key, tenant.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?
    .ok_or_else(|| OrchestratorError::NotFound(format!("function {key:?}")))
}

/// Handle to the database.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// [`Store::latest`]'s answers, so that an invocation of a known function
    /// costs no query. Filled and cleared only while holding `conn`, by the
    /// reads that fill it and the writes that change what it holds
    /// ([`Store::write`]), so it never keeps what a write replaced.
    latest: Arc<Mutex<HashMap<(TenantId, String), FunctionVersion>>>,
    /// Invocation records written after their answer went out.
    pending: Arc<Pending>,
    /// Records waiting for the writer, which takes them in batches.
    queued: Arc<Mutex<RecordQueue>>,
}

/// Invocation records waiting to be written, each with its ticket.
#[derive(Default)]
struct RecordQueue {
    records: Vec<(String, InvocationRecord, PendingWrite)>,
    /// Whether a writer task is running (it drains the queue before it ends).
    writing: bool,
}

/// Record writes in flight, by ticket: a reader waits for the writes that
/// began before it, never for later ones (under steady load there always
/// are some).
#[derive(Default)]
struct Pending {
    tickets: Mutex<Tickets>,
    progress: tokio::sync::Notify,
}

#[derive(Default)]
struct Tickets {
    /// The next write's ticket.
    next: u64,
    /// Every ticket below it is done.
    low: u64,
    /// Done tickets at or above `low`.
    done: std::collections::BTreeSet<u64>,
}

impl Pending {
    /// The ticket the next write gets: a reader waits until all below are done.
    fn target(&self) -> u64 {
        self.tickets.lock().expect("tickets lock").next
    }

    /// Wait until every write with a ticket below `target` is done, or
    /// until `deadline`.
    async fn reached(&self, target: u64, deadline: tokio::time::Instant) {
        loop {
            let progress = self.progress.notified();
            if self.tickets.lock().expect("tickets lock").low >= target {
                return;
            }
            if tokio::time::timeout_at(deadline, progress).await.is_err() {
                return;
            }
        }
    }
}

/// One write in flight until dropped.
struct PendingWrite {
    pending: Arc<Pending>,
    ticket: u64,
}

impl PendingWrite {
    fn new(pending: &Arc<Pending>) -> Self {
        let mut tickets = pending.tickets.lock().expect("tickets lock");
        let ticket = tickets.next;
        tickets.next += 1;
        PendingWrite {
            pending: pending.clone(),
            ticket,
        }
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        {
            let mut tickets = self.pending.tickets.lock().expect("tickets lock");
            tickets.done.insert(self.ticket);
            while {
                let low = tickets.low;
                tickets.done.remove(&low)
            } {
                tickets.low += 1;
            }
        }
        self.pending.progress.notify_waiters();
    }
}

/// Most entries of the `latest` cache; past it, it starts over.
const MAX_CACHED_VERSIONS: usize = 4096;

impl Store {
    /// Open (or create) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, OrchestratorError> {
        let mut conn = Connection::open(path)?;
        // Function definitions (their environment included) are nobody else's
        // business; SQLite gives its WAL files the same mode.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| OrchestratorError::Internal(format!("chmod {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let was = migrate(&mut conn)?;
        if was != MIGRATIONS.len() as u32 {
            tracing::info!(
                "state database migrated from schema version {was} to {}",
                MIGRATIONS.len()
            );
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            latest: Arc::default(),
            pending: Arc::default(),
            queued: Arc::default(),
        })
    }

    /// Keep an invocation's record without making its caller wait: a writer
    /// task writes it with the others queued meanwhile, and readers of records ([`Store::invocations`],
    /// [`Store::counts`]) and [`Store::settled`] wait for it.
    pub fn record_later(&self, function_id: String, record: InvocationRecord) {
        let pending = PendingWrite::new(&self.pending);
        let start = {
            let mut q = self.queued.lock().expect("record queue lock");
            q.records.push((function_id, record, pending));
            !std::mem::replace(&mut q.writing, true)
        };
        if start {
            let store = self.clone();
            tokio::spawn(async move { store.write_queued().await });
        }
    }

    /// Write queued records until none is left, each batch in one
    /// transaction: under load, the records that arrive while one batch is
    /// written make the next, so a call costs a row, not a commit.
    async fn write_queued(&self) {
        loop {
            let batch = {
                let mut q = self.queued.lock().expect("record queue lock");
                if q.records.is_empty() {
                    q.writing = false;
                    return;
                }
                std::mem::take(&mut q.records)
            };
            let (rows, tickets): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|(f, r, t)| ((f, r), t)).unzip();
            let n = rows.len();
            if let Err(e) = self.record_all(rows).await {
                tracing::warn!("could not record {n} invocations: {e}");
            }
            drop(tickets);
        }
    }

    /// Wait (at most 5 s) until every record write begun before this call
    /// is done.
    pub async fn settled(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        self.pending.reached(self.pending.target(), deadline).await;
    }

    /// As [`Store::with`], for a write that may change a function's newest
    /// version or its scaling: the `latest` cache is emptied with it.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, OrchestratorError> + Send + 'static,
    ) -> Result<T, OrchestratorError> {
        let latest = self.latest.clone();
        self.with(move |conn| {
            let result = f(conn);
            latest.lock().expect("cache lock").clear();
            result
        })
        .await
    }

    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, OrchestratorError> + Send + 'static,
    ) -> Result<T, OrchestratorError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().expect("store lock");
            f(&mut conn)
        })
        .await
        .map_err(|e| OrchestratorError::Internal(format!("store task: {e}")))?
    }

    /// Add a version of `name` (creating the function if needed), atomically;
    /// with `create_only`, fail with [`OrchestratorError::Conflict`] instead
    /// when the function exists. `make` gets the function id and the new
    /// version number and returns the record.
    pub async fn add_version(
        &self,
        tenant: TenantId,
        name: String,
        create_only: bool,
        settings: FunctionSettings,
        make: impl FnOnce(&str, u32) -> FunctionVersion + Send + 'static,
    ) -> Result<FunctionVersion, OrchestratorError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let existing: Option<String> = tx
                .query_row(
                    "SELECT id FROM functions WHERE tenant = ?1 AND name = ?2",
                    params![tenant.as_str(), name],
                    |r| r.get(0),
                )
                .optional()?;
            let id = match existing {
                Some(_) if create_only => {
                    return Err(OrchestratorError::Conflict(format!(
                        "function {name:?} already exists"
                    )))
                }
                Some(id) => id,
                None => {
                    let id = format!("fn-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
                    tx.execute(
                        "INSERT INTO functions (id, tenant, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![id, tenant.as_str(), name, crate::now_rfc3339()],
                    )?;
                    id
                }
            };
            let version: u32 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE function_id = ?1",
                [&id],
                |r| r.get(0),
            )?;
            let mut record = make(&id, version);
            tx.execute(
                "INSERT INTO versions (function_id, version, spec) VALUES (?1, ?2, ?3)",
                params![id, version, serde_json::to_string(&record)?],
            )?;
            if let Some(scaling) = settings.scaling {
                tx.execute(
                    "UPDATE functions SET scaling = ?2 WHERE id = ?1",
                    params![id, serde_json::to_string(&scaling)?],
                )?;
            }
            if let Some(schedules) = settings.schedules {
                tx.execute("DELETE FROM schedules WHERE function_id = ?1", [&id])?;
                for (sid, cron, payload) in schedules {
                    tx.execute(
                        "INSERT INTO schedules (id, tenant, function_id, cron, payload, created_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![sid, tenant.as_str(), id, cron, payload, crate::unix_ms()],
                    )?;
                }
            }
            record.scaling = tx.query_row(
                "SELECT scaling FROM functions WHERE id = ?1",
                [&id],
                |r| r.get::<_, String>(0),
            )
            .map(|s| serde_json::from_str(&s))??;
            tx.execute(
                "DELETE FROM versions WHERE function_id = ?1 AND version <= ?2",
                params![id, i64::from(version) - KEEP_VERSIONS],
            )?;
            tx.commit()?;
            Ok(record)
        })
        .await
    }

    /// The newest version of `tenant`'s function with this id or name.
    pub async fn latest(
        &self,
        tenant: &TenantId,
        id_or_name: &str,
    ) -> Result<FunctionVersion, OrchestratorError> {
        let cache_key = (tenant.clone(), id_or_name.to_string());
        if let Some(found) = self.latest.lock().expect("cache lock").get(&cache_key) {
            return Ok(found.clone());
        }
        let key = id_or_name.to_string();
        let tenant = tenant.clone();
        let latest = self.latest.clone();
        self.with(move |conn| {
            let row: Option<(String, String)> = conn
                .query_row(
                    "SELECT v.spec, f.scaling FROM versions v JOIN functions f ON f.id = v.function_id
                     WHERE (f.id = ?1 OR f.name = ?1) AND f.tenant = ?2
                     ORDER BY v.version DESC LIMIT 1",
                    params![key, tenant.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let found = match row {
                Some((spec, scaling)) => version_with(&spec, &scaling)?,
                None => return Err(OrchestratorError::NotFound(format!("function {key:?}"))),
            };
            let mut cache = latest.lock().expect("cache lock");
            if cache.len() >= MAX_CACHED_VERSIONS {
                cache.clear();
            }
            cache.insert(cache_key, found.clone());
            Ok(found)
        })
        .await
    }

    /// The newest version of every function of `tenant` (every tenant:
    /// `None`), by name.
    pub async fn list(
        &self,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<FunctionVersion>, OrchestratorError> {
        let tenant = tenant.map(|t| t.as_str().to_string());
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT v.spec, f.scaling FROM versions v JOIN functions f ON f.id = v.function_id
                 WHERE v.version = (SELECT MAX(version) FROM versions WHERE function_id = f.id)
                   AND (?1 IS NULL OR f.tenant = ?1)
                 ORDER BY f.tenant, f.name",
            )?;
            let rows = stmt.query_map([tenant], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (spec, scaling) = row?;
                out.push(version_with(&spec, &scaling)?);
            }
            Ok(out)
        })
        .await
    }

    /// Every schedule (`function_id`: of that function only), oldest first.
    pub async fn schedules(
        &self,
        function_id: Option<&str>,
    ) -> Result<Vec<StoredSchedule>, OrchestratorError> {
        let function_id = function_id.map(str::to_string);
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, tenant, function_id, cron, payload, created_ms, last_fire_ms
                 FROM schedules WHERE (?1 IS NULL OR function_id = ?1) ORDER BY created_ms, rowid",
            )?;
            let rows = stmt.query_map([function_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, tenant, function_id, cron, payload, created_ms, last_fire_ms) = row?;
                out.push(StoredSchedule {
                    id,
                    tenant: TenantId::try_from(tenant)
                        .map_err(|e| OrchestratorError::Internal(format!("stored tenant: {e}")))?,
                    function_id,
                    cron,
                    payload,
                    created_ms,
                    last_fire_ms,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Add one schedule to a function, at most `max` per function.
    pub async fn add_schedule(
        &self,
        schedule: StoredSchedule,
        max: usize,
    ) -> Result<(), OrchestratorError> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n: i64 = tx.query_row(
                "SELECT COUNT(*) FROM schedules WHERE function_id = ?1",
                [&schedule.function_id],
                |r| r.get(0),
            )?;
            if n as usize >= max {
                return Err(OrchestratorError::QuotaExceeded(format!(
                    "the function has {max} schedules, the most it may have"
                )));
            }
            tx.execute(
                "INSERT INTO schedules (id, tenant, function_id, cron, payload, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    schedule.id,
                    schedule.tenant.as_str(),
                    schedule.function_id,
                    schedule.cron,
                    schedule.payload,
                    schedule.created_ms
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Remove a function's schedule; whether it existed.
    pub async fn remove_schedule(
        &self,
        function_id: &str,
        id: &str,
    ) -> Result<bool, OrchestratorError> {
        let (function_id, id) = (function_id.to_string(), id.to_string());
        self.with(move |conn| {
            Ok(conn.execute(
                "DELETE FROM schedules WHERE id = ?1 AND function_id = ?2",
                params![id, function_id],
            )? > 0)
        })
        .await
    }

    /// Record that a schedule's tick `at_ms` fired.
    pub async fn schedule_fired(&self, id: &str, at_ms: i64) -> Result<(), OrchestratorError> {
        let id = id.to_string();
        self.with(move |conn| {
            conn.execute(
                "UPDATE schedules SET last_fire_ms = ?2 WHERE id = ?1",
                params![id, at_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// Replace the scaling of `tenant`'s function `id`.
    pub async fn set_scaling(
        &self,
        tenant: &TenantId,
        id: &str,
        scaling: Scaling,
    ) -> Result<(), OrchestratorError> {
        let (tenant, id) = (tenant.clone(), id.to_string());
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE functions SET scaling = ?3 WHERE id = ?1 AND tenant = ?2",
                params![id, tenant.as_str(), serde_json::to_string(&scaling)?],
            )?;
            if n == 0 {
                return Err(OrchestratorError::NotFound(format!("function {id:?}")));
            }
            Ok(())
        })
        .await
    }

    /// The newest version of every function that keeps instances started
    /// (`min_instances` above 0), every tenant's.
    pub async fn provisioned(&self) -> Result<Vec<FunctionVersion>, OrchestratorError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT v.spec, f.scaling FROM versions v JOIN functions f ON f.id = v.function_id
                 WHERE v.version = (SELECT MAX(version) FROM versions WHERE function_id = f.id)
                   AND COALESCE(json_extract(f.scaling, '$.min_instances'), 0) > 0",
            )?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (spec, scaling) = row?;
                out.push(version_with(&spec, &scaling)?);
            }
            Ok(out)
        })
        .await
    }

    /// Delete a function with all its versions, records, secrets and job
    /// bindings; returns (id, name).
    pub async fn delete(
        &self,
        tenant: &TenantId,
        id_or_name: &str,
    ) -> Result<(String, String), OrchestratorError> {
        let key = id_or_name.to_string();
        let tenant = tenant.clone();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let (id, name) = resolve(&tx, &tenant, &key)?;
            tx.execute("DELETE FROM functions WHERE id = ?1", [&id])?;
            tx.commit()?;
            Ok((id, name))
        })
        .await
    }

    /// Bind `job_id` to the function with this id or name (replacing any binding).
    pub async fn bind_job(
        &self,
        tenant: &TenantId,
        job_id: u32,
        function: &str,
    ) -> Result<JobBinding, OrchestratorError> {
        let key = function.to_string();
        let tenant = tenant.clone();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let (function_id, name) = resolve(&tx, &tenant, &key)?;
            tx.execute(
                "INSERT INTO jobs (tenant, job_id, function_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT(tenant, job_id) DO UPDATE SET function_id = excluded.function_id",
                params![tenant.as_str(), job_id, function_id],
            )?;
            tx.commit()?;
            Ok(JobBinding {
                job_id,
                function: name,
                function_id,
            })
        })
        .await
    }

    /// Remove `tenant`'s binding of `job_id`.
    pub async fn unbind_job(
        &self,
        tenant: &TenantId,
        job_id: u32,
    ) -> Result<(), OrchestratorError> {
        let tenant = tenant.clone();
        self.with(move |conn| {
            match conn.execute(
                "DELETE FROM jobs WHERE tenant = ?1 AND job_id = ?2",
                params![tenant.as_str(), job_id],
            )? {
                0 => Err(OrchestratorError::NotFound(format!(
                    "binding of job {job_id}"
                ))),
                _ => Ok(()),
            }
        })
        .await
    }

    /// `tenant`'s binding of `job_id`, if any.
    pub async fn job(
        &self,
        tenant: &TenantId,
        job_id: u32,
    ) -> Result<Option<JobBinding>, OrchestratorError> {
        Ok(self
            .jobs_where(tenant, Some(job_id))
            .await?
            .into_iter()
            .next())
    }

    /// Every binding of `tenant`, by job id.
    pub async fn jobs(&self, tenant: &TenantId) -> Result<Vec<JobBinding>, OrchestratorError> {
        self.jobs_where(tenant, None).await
    }

    async fn jobs_where(
        &self,
        tenant: &TenantId,
        job_id: Option<u32>,
    ) -> Result<Vec<JobBinding>, OrchestratorError> {
        let tenant = tenant.clone();
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT j.job_id, f.name, f.id FROM jobs j JOIN functions f ON f.id = j.function_id
                 WHERE j.tenant = ?1 AND (?2 IS NULL OR j.job_id = ?2) ORDER BY j.job_id",
            )?;
            let rows = stmt.query_map(params![tenant.as_str(), job_id], |r| {
                Ok(JobBinding {
                    job_id: r.get(0)?,
                    function: r.get(1)?,
                    function_id: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Keep invocation records (function id, record) in one transaction,
    /// each function's oldest beyond [`KEEP_INVOCATIONS`] dropped.
    async fn record_all(
        &self,
        records: Vec<(String, InvocationRecord)>,
    ) -> Result<(), OrchestratorError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let mut touched = std::collections::BTreeSet::new();
            {
                let mut count = tx.prepare_cached(
                    "UPDATE functions SET invocations = invocations + 1, failures = failures + ?2
                     WHERE id = ?1",
                )?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO invocations (request_id, function_id, record) VALUES (?1, ?2, ?3)",
                )?;
                for (function_id, record) in &records {
                    let failed = i64::from(record.outcome != faas_common::api::Outcome::Success);
                    // The function may have been deleted meanwhile; then
                    // there is nothing to keep.
                    if count.execute(params![function_id, failed])? == 1 {
                        insert.execute(params![
                            record.request_id,
                            function_id,
                            serde_json::to_string(record)?
                        ])?;
                        touched.insert(function_id.as_str());
                    }
                }
                let mut trim = tx.prepare_cached(
                    "DELETE FROM invocations WHERE function_id = ?1 AND seq <=
                     (SELECT seq FROM invocations WHERE function_id = ?1
                      ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                )?;
                for function_id in touched {
                    trim.execute(params![function_id, KEEP_INVOCATIONS])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` invocation records of a function older than `before`
    /// (a sequence number; `None`: the newest), newest first, with their
    /// sequence numbers.
    pub async fn invocations(
        &self,
        function_id: &str,
        limit: usize,
        before: Option<i64>,
    ) -> Result<Vec<(i64, InvocationRecord)>, OrchestratorError> {
        self.settled().await;
        let id = function_id.to_string();
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT seq, record FROM invocations WHERE function_id = ?1 AND seq < ?3
                 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![id, limit as i64, before.unwrap_or(i64::MAX)], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, record) = row?;
                out.push((seq, serde_json::from_str(&record)?));
            }
            Ok(out)
        })
        .await
    }

    /// Every code tree and dependency layer some stored version uses.
    pub async fn referenced(
        &self,
    ) -> Result<(HashSet<String>, HashSet<String>), OrchestratorError> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT spec FROM versions")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let (mut code, mut deps) = (HashSet::new(), HashSet::new());
            for row in rows {
                let v: FunctionVersion = serde_json::from_str(&row?)?;
                code.insert(v.code_sha256);
                deps.extend(v.deps_sha256);
            }
            Ok((code, deps))
        })
        .await
    }

    /// Every key, with its hash and, if revoked, when.
    pub async fn keys(
        &self,
    ) -> Result<Vec<(KeyRecord, String, Option<String>)>, OrchestratorError> {
        self.with(|conn| {
            let mut stmt =
                conn.prepare("SELECT record, hash, revoked_at FROM keys ORDER BY rowid")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (record, hash, revoked) = row?;
                out.push((serde_json::from_str(&record)?, hash, revoked));
            }
            Ok(out)
        })
        .await
    }

    /// Store a new key (its hash only).
    pub async fn add_key(&self, record: KeyRecord, hash: String) -> Result<(), OrchestratorError> {
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO keys (id, record, hash) VALUES (?1, ?2, ?3)",
                params![record.id, serde_json::to_string(&record)?, hash],
            )?;
            Ok(())
        })
        .await
    }

    /// Revoke key `id`; not found if there is no such live key.
    pub async fn revoke_key(&self, id: &str) -> Result<KeyRecord, OrchestratorError> {
        let id = id.to_string();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let record: Option<String> = tx
                .query_row(
                    "SELECT record FROM keys WHERE id = ?1 AND revoked_at IS NULL",
                    [&id],
                    |r| r.get(0),
                )
                .optional()?;
            let record =
                record.ok_or_else(|| OrchestratorError::NotFound(format!("key {id:?}")))?;
            tx.execute(
                "UPDATE keys SET revoked_at = ?2 WHERE id = ?1",
                params![id, crate::now_rfc3339()],
            )?;
            tx.commit()?;
            Ok(serde_json::from_str(&record)?)
        })
        .await
    }

    /// Every tenant's quota.
    pub async fn quotas(&self) -> Result<Vec<(TenantId, TenantQuota)>, OrchestratorError> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT tenant, quota FROM quotas")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (tenant, quota) = row?;
                let tenant = TenantId::try_from(tenant)
                    .map_err(|e| OrchestratorError::Internal(format!("stored tenant: {e}")))?;
                out.push((tenant, serde_json::from_str(&quota)?));
            }
            Ok(out)
        })
        .await
    }

    /// Set (replace) `tenant`'s quota.
    pub async fn set_quota(
        &self,
        tenant: &TenantId,
        quota: &TenantQuota,
    ) -> Result<(), OrchestratorError> {
        let (tenant, quota) = (tenant.clone(), serde_json::to_string(quota)?);
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO quotas (tenant, quota) VALUES (?1, ?2)
                 ON CONFLICT(tenant) DO UPDATE SET quota = excluded.quota",
                params![tenant.as_str(), quota],
            )?;
            Ok(())
        })
        .await
    }

    /// How many functions `tenant` has, and the bytes their stored versions hold.
    pub async fn usage(&self, tenant: &TenantId) -> Result<(u64, u64), OrchestratorError> {
        let tenant = tenant.clone();
        self.with(move |conn| {
            Ok(conn.query_row(
                "SELECT (SELECT COUNT(*) FROM functions WHERE tenant = ?1),
                        (SELECT COALESCE(SUM(json_extract(v.spec, '$.stored_bytes')), 0)
                         FROM versions v JOIN functions f ON f.id = v.function_id
                         WHERE f.tenant = ?1)",
                [tenant.as_str()],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?)
        })
        .await
    }

    /// Set secret `name` of function `function_id` (sealed).
    pub async fn put_secret(
        &self,
        function_id: &str,
        name: &str,
        sealed: Vec<u8>,
    ) -> Result<(), OrchestratorError> {
        let (id, name) = (function_id.to_string(), name.to_string());
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO secrets (function_id, name, sealed) VALUES (?1, ?2, ?3)
                 ON CONFLICT(function_id, name) DO UPDATE SET sealed = excluded.sealed",
                params![id, name, sealed],
            )?;
            Ok(())
        })
        .await
    }

    /// Remove secret `name`; not found if it is not set.
    pub async fn delete_secret(
        &self,
        function_id: &str,
        name: &str,
    ) -> Result<(), OrchestratorError> {
        let (id, name) = (function_id.to_string(), name.to_string());
        self.with(move |conn| {
            match conn.execute(
                "DELETE FROM secrets WHERE function_id = ?1 AND name = ?2",
                params![id, name],
            )? {
                0 => Err(OrchestratorError::NotFound(format!("secret {name:?}"))),
                _ => Ok(()),
            }
        })
        .await
    }

    /// The sealed secrets of a function (every function's: `None`), by name.
    pub async fn secrets(
        &self,
        function_id: Option<&str>,
    ) -> Result<Vec<(String, String, Vec<u8>)>, OrchestratorError> {
        let id = function_id.map(str::to_string);
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT function_id, name, sealed FROM secrets
                 WHERE ?1 IS NULL OR function_id = ?1 ORDER BY function_id, name",
            )?;
            let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Replace every sealed secret at once (a node key rotation).
    pub async fn reseal_all(
        &self,
        resealed: Vec<(String, String, Vec<u8>)>,
    ) -> Result<(), OrchestratorError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            for (id, name, sealed) in resealed {
                tx.execute(
                    "UPDATE secrets SET sealed = ?3 WHERE function_id = ?1 AND name = ?2",
                    params![id, name, sealed],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Append to the audit log.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), OrchestratorError> {
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO audit (entry) VALUES (?1)",
                [serde_json::to_string(&entry)?],
            )?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` audit entries older than `before`, newest first.
    pub async fn audit_page(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, OrchestratorError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT seq, entry FROM audit WHERE seq < ?2 ORDER BY seq DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit as i64, before.unwrap_or(i64::MAX)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, entry) = row?;
                let mut entry: AuditEntry = serde_json::from_str(&entry)?;
                entry.seq = seq;
                out.push(entry);
            }
            Ok(out)
        })
        .await
    }

    /// (total, failed) invocation counts of a function since it was created.
    pub async fn counts(&self, function_id: &str) -> Result<(u64, u64), OrchestratorError> {
        self.settled().await;
        let id = function_id.to_string();
        self.with(move |conn| {
            Ok(conn.query_row(
                "SELECT invocations, failures FROM functions WHERE id = ?1",
                [&id],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?)
        })
        .await
    }

    /// Insert or replace a build of `tenant`'s function; a new one pushes
    /// the oldest out past [`KEEP_BUILDS`] per function and
    /// [`KEEP_TENANT_BUILDS`] per tenant.
    pub async fn put_build(
        &self,
        tenant: &TenantId,
        build: &BuildInfo,
    ) -> Result<(), OrchestratorError> {
        let tenant = tenant.clone();
        let build = build.clone();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let info = serde_json::to_string(&build)?;
            let updated = tx.execute(
                "UPDATE builds SET info = ?2 WHERE id = ?1",
                params![build.id, info],
            )?;
            if updated == 0 {
                tx.execute(
                    "INSERT INTO builds (id, tenant, name, seq, info) VALUES (?1, ?2, ?3,
                     (SELECT COALESCE(MAX(seq), 0) + 1 FROM builds), ?4)",
                    params![build.id, tenant.as_str(), build.function, info],
                )?;
                tx.execute(
                    "DELETE FROM builds WHERE tenant = ?1 AND name = ?2 AND seq <=
                     (SELECT seq FROM builds WHERE tenant = ?1 AND name = ?2
                      ORDER BY seq DESC LIMIT 1 OFFSET ?3)",
                    params![tenant.as_str(), build.function, KEEP_BUILDS],
                )?;
                tx.execute(
                    "DELETE FROM builds WHERE tenant = ?1 AND seq <=
                     (SELECT seq FROM builds WHERE tenant = ?1
                      ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                    params![tenant.as_str(), KEEP_TENANT_BUILDS],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The newest build of `tenant`'s function `name`.
    pub async fn latest_build(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<BuildInfo>, OrchestratorError> {
        let (tenant, name) = (tenant.clone(), name.to_string());
        self.with(move |conn| {
            let info: Option<String> = conn
                .query_row(
                    "SELECT info FROM builds WHERE tenant = ?1 AND name = ?2
                     ORDER BY seq DESC LIMIT 1",
                    params![tenant.as_str(), name],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(info.map(|i| serde_json::from_str(&i)).transpose()?)
        })
        .await
    }

    /// Forget the builds of `tenant`'s function `name` (it was deleted).
    pub async fn delete_builds(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<(), OrchestratorError> {
        let (tenant, name) = (tenant.clone(), name.to_string());
        self.with(move |conn| {
            conn.execute(
                "DELETE FROM builds WHERE tenant = ?1 AND name = ?2",
                params![tenant.as_str(), name],
            )?;
            Ok(())
        })
        .await
    }

    /// Mark every build still `building` failed with `why` (the process that
    /// ran them is gone); returns how many.
    pub async fn interrupt_builds(&self, why: &str, at: &str) -> Result<usize, OrchestratorError> {
        let (why, at) = (why.to_string(), at.to_string());
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let mut open = Vec::new();
            {
                let mut stmt = tx.prepare(
                    "SELECT id, info FROM builds WHERE json_extract(info, '$.state') = 'building'",
                )?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                for row in rows {
                    open.push(row?);
                }
            }
            for (id, info) in &open {
                let mut build: BuildInfo = serde_json::from_str(info)?;
                build.state = BuildState::Failed;
                build.error = Some(why.clone());
                build.finished_at = Some(at.clone());
                tx.execute(
                    "UPDATE builds SET info = ?2 WHERE id = ?1",
                    params![id, serde_json::to_string(&build)?],
                )?;
            }
            tx.commit()?;
            Ok(open.len())
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_waits_for_earlier_writes_only() {
        let pending = Arc::new(Pending::default());
        let first = PendingWrite::new(&pending);
        let target = pending.target();
        let later = PendingWrite::new(&pending);
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
        let reader = {
            let pending = pending.clone();
            tokio::spawn(async move {
                pending.reached(target, soon).await;
                tokio::time::Instant::now()
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !reader.is_finished(),
            "the earlier write is still in flight"
        );
        drop(first);
        let done_at = reader.await.unwrap();
        assert!(done_at < soon, "a later write must not hold the reader");
        assert_eq!(pending.tickets.lock().unwrap().low, 1);
        drop(later);
        assert_eq!(pending.tickets.lock().unwrap().low, 2);
        assert!(pending.tickets.lock().unwrap().done.is_empty());
    }
    use faas_common::api::Outcome;

    fn default() -> TenantId {
        TenantId::default_tenant()
    }

    /// A version record as the release before schema versions wrote it.
    const PREVIOUS_RELEASE_SPEC: &str = r#"{"id":"fn-0123456789ab","name":"hello","version":1,
        "language":"python","handler":"main.handler","memory_mb":128,"timeout_sec":30,
        "code_sha256":"aa11","dependencies":["six==1.16.0"],"env":{"K":"v"},"sandbox":"native",
        "created_at":"2026-11-01T00:00:00Z","deps_sha256":"bb22"}"#;

    /// A version of function `f` in the default tenant.
    pub(crate) fn version_of(id: &str, version: u32, code: &str) -> FunctionVersion {
        FunctionVersion {
            id: id.into(),
            tenant: default(),
            name: "f".into(),
            version,
            language: Language::Shell,
            handler: "run.sh".into(),
            memory_mb: 64,
            ephemeral_mb: 64,
            timeout_sec: 5,
            dependencies: vec![],
            env: BTreeMap::new(),
            sandbox: SandboxKind::Native,
            attestation: None,
            egress: vec![],
            created_at: "now".into(),
            code_sha256: code.into(),
            deps_sha256: None,
            stored_bytes: 0,
            scaling: Scaling::default(),
            max_retries: None,
        }
    }

    fn record(n: usize) -> InvocationRecord {
        InvocationRecord {
            request_id: format!("r{n}"),
            version: 1,
            started_at: "now".into(),
            duration_ms: 1.0,
            outcome: if n.is_multiple_of(2) {
                Outcome::Success
            } else {
                Outcome::Error
            },
            cold_start: false,
            error: None,
            logs: String::new(),
        }
    }

    #[tokio::test]
    async fn opens_a_data_dir_of_the_previous_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            // The previous release's schema, without a version.
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute(
                "INSERT INTO functions (id, name, created_at) VALUES ('fn-0123456789ab', 'hello', 'then')",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO versions (function_id, version, spec) VALUES ('fn-0123456789ab', 1, ?1)",
                [PREVIOUS_RELEASE_SPEC],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let f = store.latest(&default(), "hello").await.unwrap();
        assert_eq!(f.code_sha256, "aa11");
        assert_eq!(f.deps_sha256.as_deref(), Some("bb22"));
        assert_eq!(f.info().sandbox, SandboxKind::Native);
        // Written before functions had ephemeral storage: the default.
        assert_eq!(f.ephemeral_mb, faas_common::validate::DEFAULT_EPHEMERAL_MB);
        let conn = Connection::open(&path).unwrap();
        let v: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as u32);
        // Opening again migrates nothing and loses nothing.
        drop(store);
        assert_eq!(
            Store::open(&path)
                .unwrap()
                .latest(&default(), "hello")
                .await
                .unwrap(),
            f
        );
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Store::open(&path).err().expect("refused");
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[tokio::test]
    async fn versions_and_records_are_bounded_and_paged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let mut id = String::new();
        for n in 1..=7 {
            let v = store
                .add_version(
                    default(),
                    "f".into(),
                    false,
                    FunctionSettings::default(),
                    move |id, version| version_of(id, version, &format!("code{n}")),
                )
                .await
                .unwrap();
            assert_eq!(v.version, n);
            id = v.id;
        }
        let (code, _) = store.referenced().await.unwrap();
        assert_eq!(code.len(), KEEP_VERSIONS as usize, "{code:?}");
        assert!(code.contains("code7") && !code.contains("code2"));
        for n in 0..(KEEP_INVOCATIONS as usize + 10) {
            store
                .record_all(vec![(id.clone(), record(n))])
                .await
                .unwrap();
        }
        let all = store.invocations(&id, 1000, None).await.unwrap();
        assert_eq!(all.len(), KEEP_INVOCATIONS as usize);
        let page = store.invocations(&id, 10, None).await.unwrap();
        let next = store
            .invocations(&id, 10, Some(page.last().unwrap().0))
            .await
            .unwrap();
        assert!(next[0].0 < page[9].0, "older records on the next page");
        let (total, failed) = store.counts(&id).await.unwrap();
        assert_eq!((total, failed), (210, 105));
        store.delete(&default(), "f").await.unwrap();
        assert!(matches!(
            store.latest(&default(), "f").await,
            Err(OrchestratorError::NotFound(_))
        ));
        assert!(store.referenced().await.unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn create_only_refuses_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let made = store
            .add_version(
                default(),
                "f".into(),
                true,
                FunctionSettings::default(),
                |id, v| version_of(id, v, "a"),
            )
            .await
            .unwrap();
        assert_eq!(made.version, 1);
        let again = store
            .add_version(
                default(),
                "f".into(),
                true,
                FunctionSettings::default(),
                |id, v| version_of(id, v, "b"),
            )
            .await;
        assert!(
            matches!(again, Err(OrchestratorError::Conflict(_))),
            "{again:?}"
        );
        let kept = store.latest(&default(), "f").await.unwrap();
        assert_eq!((kept.version, kept.code_sha256.as_str()), (1, "a"));
    }

    #[tokio::test]
    async fn names_are_per_tenant_and_the_audit_log_is_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let other = TenantId::try_from("other".to_string()).unwrap();
        let mine = store
            .add_version(
                default(),
                "f".into(),
                false,
                FunctionSettings::default(),
                |id, v| version_of(id, v, "a"),
            )
            .await
            .unwrap();
        let theirs = store
            .add_version(
                other.clone(),
                "f".into(),
                false,
                FunctionSettings::default(),
                move |id, v| FunctionVersion {
                    tenant: TenantId::try_from("other".to_string()).unwrap(),
                    ..version_of(id, v, "b")
                },
            )
            .await
            .unwrap();
        assert_ne!(mine.id, theirs.id);
        assert_eq!(
            theirs.version, 1,
            "a name of another tenant is a new function"
        );
        assert_eq!(store.latest(&other, "f").await.unwrap().code_sha256, "b");
        assert!(
            store.latest(&other, &mine.id).await.is_err(),
            "an id of another tenant is not found"
        );
        assert!(store.delete(&other, &mine.id).await.is_err());
        assert_eq!(store.list(Some(&other)).await.unwrap().len(), 1);
        assert_eq!(store.list(None).await.unwrap().len(), 2);
        store
            .audit(AuditEntry {
                seq: 0,
                at: "now".into(),
                tenant: Some("other".into()),
                key_id: None,
                source: None,
                action: "deploy".into(),
                target: Some("f".into()),
                detail: None,
            })
            .await
            .unwrap();
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        for refused in ["UPDATE audit SET entry = '{}'", "DELETE FROM audit"] {
            let err = conn.execute(refused, []).unwrap_err().to_string();
            assert!(err.contains("append-only"), "{refused}: {err}");
        }
        assert_eq!(store.audit_page(10, None).await.unwrap().len(), 1);
    }
}
