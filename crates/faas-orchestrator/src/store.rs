//! Durable state in SQLite (WAL): functions, their versions, recent invocations.
//!
//! One connection behind a mutex, used from `spawn_blocking`: SQLite serialises
//! writers anyway, and the statements here take microseconds.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use faas_common::api::{FunctionInfo, InvocationRecord, JobBinding};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::OrchestratorError;

/// How many invocation records are kept per function.
const KEEP_INVOCATIONS: i64 = 200;
/// How many versions are kept per function (the newest); older ones, and the
/// code and dependency layers only they used, go.
const KEEP_VERSIONS: i64 = 5;

/// One version of a function as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionVersion {
    /// Everything the API shows.
    #[serde(flatten)]
    pub info: FunctionInfo,
    /// SHA-256 key of the stored code tree (never shown by the API: it names
    /// a host directory).
    pub code_sha256: String,
    /// SHA-256 key of the installed dependency layer, if any.
    pub deps_sha256: Option<String>,
}

/// (id, name) of the function whose id or name is `key`.
fn resolve(conn: &Connection, key: &str) -> Result<(String, String), OrchestratorError> {
    conn.query_row(
        "SELECT id, name FROM functions WHERE id = ?1 OR name = ?1",
        [key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?
    .ok_or_else(|| OrchestratorError::NotFound(format!("function {key:?}")))
}

/// Handle to the database.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Open (or create) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, OrchestratorError> {
        let conn = Connection::open(path)?;
        // Function definitions (their environment included) are nobody else's
        // business; SQLite gives its WAL files the same mode.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| OrchestratorError::Internal(format!("chmod {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
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
        )?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
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

    /// Add a version of `name` (creating the function if needed), atomically.
    /// `make` gets the function id and the new version number and returns the record.
    pub async fn add_version(
        &self,
        name: String,
        make: impl FnOnce(&str, u32) -> FunctionVersion + Send + 'static,
    ) -> Result<FunctionVersion, OrchestratorError> {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let existing: Option<String> = tx
                .query_row("SELECT id FROM functions WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?;
            let id = match existing {
                Some(id) => id,
                None => {
                    let id = format!("fn-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
                    tx.execute(
                        "INSERT INTO functions (id, name, created_at) VALUES (?1, ?2, ?3)",
                        params![id, name, crate::now_rfc3339()],
                    )?;
                    id
                }
            };
            let version: u32 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE function_id = ?1",
                [&id],
                |r| r.get(0),
            )?;
            let record = make(&id, version);
            tx.execute(
                "INSERT INTO versions (function_id, version, spec) VALUES (?1, ?2, ?3)",
                params![id, version, serde_json::to_string(&record)?],
            )?;
            tx.execute(
                "DELETE FROM versions WHERE function_id = ?1 AND version <= ?2",
                params![id, i64::from(version) - KEEP_VERSIONS],
            )?;
            tx.commit()?;
            Ok(record)
        })
        .await
    }

    /// The newest version of the function with this id or name.
    pub async fn latest(&self, id_or_name: &str) -> Result<FunctionVersion, OrchestratorError> {
        let key = id_or_name.to_string();
        self.with(move |conn| {
            let spec: Option<String> = conn
                .query_row(
                    "SELECT v.spec FROM versions v JOIN functions f ON f.id = v.function_id
                     WHERE f.id = ?1 OR f.name = ?1 ORDER BY v.version DESC LIMIT 1",
                    [&key],
                    |r| r.get(0),
                )
                .optional()?;
            match spec {
                Some(s) => Ok(serde_json::from_str(&s)?),
                None => Err(OrchestratorError::NotFound(format!("function {key:?}"))),
            }
        })
        .await
    }

    /// The newest version of every function, by name.
    pub async fn list(&self) -> Result<Vec<FunctionVersion>, OrchestratorError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT v.spec FROM versions v JOIN functions f ON f.id = v.function_id
                 WHERE v.version = (SELECT MAX(version) FROM versions WHERE function_id = f.id)
                 ORDER BY f.name",
            )?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_str(&row?)?);
            }
            Ok(out)
        })
        .await
    }

    /// Delete a function with all its versions and records; returns (id, name).
    pub async fn delete(&self, id_or_name: &str) -> Result<(String, String), OrchestratorError> {
        let key = id_or_name.to_string();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let (id, name) = resolve(&tx, &key)?;
            tx.execute("DELETE FROM functions WHERE id = ?1", [&id])?;
            tx.commit()?;
            Ok((id, name))
        })
        .await
    }

    /// Bind `job_id` to the function with this id or name (replacing any binding).
    pub async fn bind_job(
        &self,
        job_id: u32,
        function: &str,
    ) -> Result<JobBinding, OrchestratorError> {
        let key = function.to_string();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let (function_id, name) = resolve(&tx, &key)?;
            tx.execute(
                "INSERT INTO jobs (job_id, function_id) VALUES (?1, ?2)
                 ON CONFLICT(job_id) DO UPDATE SET function_id = excluded.function_id",
                params![job_id, function_id],
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

    /// Remove the binding of `job_id`.
    pub async fn unbind_job(&self, job_id: u32) -> Result<(), OrchestratorError> {
        self.with(move |conn| {
            match conn.execute("DELETE FROM jobs WHERE job_id = ?1", [job_id])? {
                0 => Err(OrchestratorError::NotFound(format!(
                    "binding of job {job_id}"
                ))),
                _ => Ok(()),
            }
        })
        .await
    }

    /// The binding of `job_id`, if any.
    pub async fn job(&self, job_id: u32) -> Result<Option<JobBinding>, OrchestratorError> {
        Ok(self.jobs_where(Some(job_id)).await?.into_iter().next())
    }

    /// Every binding, by job id.
    pub async fn jobs(&self) -> Result<Vec<JobBinding>, OrchestratorError> {
        self.jobs_where(None).await
    }

    async fn jobs_where(&self, job_id: Option<u32>) -> Result<Vec<JobBinding>, OrchestratorError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT j.job_id, f.name, f.id FROM jobs j JOIN functions f ON f.id = j.function_id
                 WHERE ?1 IS NULL OR j.job_id = ?1 ORDER BY j.job_id",
            )?;
            let rows = stmt.query_map([job_id], |r| {
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

    /// Record an invocation, keeping only the newest records per function.
    pub async fn record(
        &self,
        function_id: String,
        record: InvocationRecord,
    ) -> Result<(), OrchestratorError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            // The function may have been deleted meanwhile; then there is nothing to keep.
            let failed = i64::from(record.outcome != "success");
            let exists = tx.execute(
                "UPDATE functions SET invocations = invocations + 1, failures = failures + ?2
                 WHERE id = ?1",
                params![function_id, failed],
            )? == 1;
            if exists {
                tx.execute(
                    "INSERT INTO invocations (request_id, function_id, record) VALUES (?1, ?2, ?3)",
                    params![
                        record.request_id,
                        function_id,
                        serde_json::to_string(&record)?
                    ],
                )?;
                tx.execute(
                    "DELETE FROM invocations WHERE function_id = ?1 AND seq <=
                     (SELECT seq FROM invocations WHERE function_id = ?1
                      ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                    params![function_id, KEEP_INVOCATIONS],
                )?;
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

    /// (total, failed) invocation counts of a function since it was created.
    pub async fn counts(&self, function_id: &str) -> Result<(u64, u64), OrchestratorError> {
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
}
