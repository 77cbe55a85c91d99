//! The durable queue of asynchronous invocations, behind [`InvocationQueue`]:
//! SQLite ([`SqliteQueue`], in the node's state database) is the embedded
//! default; a multi-node deployment implements the same trait on NATS
//! JetStream. The worker that drains it is `async_invoke.rs`.
//!
//! A request is durable before its 202; it is `queued` until due, `running`
//! while an attempt runs (back to `queued` if the server dies meanwhile, so
//! delivery is at least once), then `succeeded` or `dead`, kept until it
//! expires.

use std::future::Future;
use std::pin::Pin;

use faas_auth::TenantId;
use faas_common::api::{AsyncResult, AsyncState};
use rusqlite::{params, OptionalExtension};

use crate::store::Store;
use crate::OrchestratorError;

/// A boxed future, for a trait used as `dyn`.
pub type QueueFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, OrchestratorError>> + Send + 'a>>;

/// One asynchronous invocation as queued.
#[derive(Debug, Clone)]
pub struct QueuedInvocation {
    /// Request id.
    pub id: String,
    /// Its tenant.
    pub tenant: TenantId,
    /// The function's id.
    pub function_id: String,
    /// The payload, as it would reach `POST /functions/{fn}/invoke`.
    pub payload: Vec<u8>,
    /// Where the result is posted when final.
    pub callback_url: Option<String>,
    /// What the API shows of it.
    pub record: AsyncResult,
}

/// A durable queue of asynchronous invocations.
pub trait InvocationQueue: Send + Sync {
    /// Store a new request, due at once; returns once it is durable.
    fn enqueue(&self, job: QueuedInvocation) -> QueueFuture<'_, ()>;
    /// Mark up to `limit` due requests (`next_at <= now_ms`) `running` and
    /// hand them out, oldest first.
    fn claim_due(&self, now_ms: i64, limit: usize) -> QueueFuture<'_, Vec<QueuedInvocation>>;
    /// Store an attempt's outcome: `record.status` says which (`queued` with
    /// `next_at` for a retry; a final state with `expires_at`).
    fn settle(
        &self,
        id: &str,
        record: AsyncResult,
        next_at: i64,
        expires_at: Option<i64>,
    ) -> QueueFuture<'_, ()>;
    /// A request of `tenant`'s function, if it exists and has not expired.
    fn get(
        &self,
        tenant: &TenantId,
        function_id: &str,
        id: &str,
    ) -> QueueFuture<'_, Option<AsyncResult>>;
    /// The function's dead letters, newest first, at most `limit`.
    fn dead_letters(
        &self,
        tenant: &TenantId,
        function_id: &str,
        limit: usize,
    ) -> QueueFuture<'_, Vec<AsyncResult>>;
    /// At start: requests left `running` by a server that died go back to
    /// `queued`; returns how many.
    fn recover(&self) -> QueueFuture<'_, usize>;
    /// Final requests whose callback is still `pending` (a delivery cut short
    /// by a restart), with their URLs.
    fn pending_callbacks(&self) -> QueueFuture<'_, Vec<(String, AsyncResult)>>;
    /// Forget final requests that expired before `now_ms`; returns how many.
    fn purge(&self, now_ms: i64) -> QueueFuture<'_, usize>;
    /// Requests waiting (queued or running), every function's.
    fn backlog(&self) -> QueueFuture<'_, usize>;
    /// Requests of `tenant` waiting (queued or running).
    fn pending_of(&self, tenant: &TenantId) -> QueueFuture<'_, usize>;
}

/// [`InvocationQueue`] in the node's SQLite state database.
#[derive(Clone)]
pub struct SqliteQueue {
    store: Store,
}

impl SqliteQueue {
    /// The queue in `store`'s database.
    pub fn new(store: Store) -> Self {
        SqliteQueue { store }
    }
}

fn record_of(json: &str) -> Result<AsyncResult, OrchestratorError> {
    Ok(serde_json::from_str(json)?)
}

impl InvocationQueue for SqliteQueue {
    fn enqueue(&self, job: QueuedInvocation) -> QueueFuture<'_, ()> {
        Box::pin(self.store.with(move |conn| {
            conn.execute(
                "INSERT INTO async_invocations
                   (id, tenant, function_id, state, next_at, expires_at, payload, callback_url, record)
                 VALUES (?1, ?2, ?3, ?4, 0, NULL, ?5, ?6, ?7)",
                params![
                    job.id,
                    job.tenant.as_str(),
                    job.function_id,
                    AsyncState::Queued.as_str(),
                    job.payload,
                    job.callback_url,
                    serde_json::to_string(&job.record)?
                ],
            )?;
            Ok(())
        }))
    }

    fn claim_due(&self, now_ms: i64, limit: usize) -> QueueFuture<'_, Vec<QueuedInvocation>> {
        Box::pin(self.store.with(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut claimed = Vec::new();
            {
                let mut stmt = tx.prepare(
                    "SELECT id, tenant, function_id, payload, callback_url, record
                     FROM async_invocations WHERE state = 'queued' AND next_at <= ?1
                     ORDER BY next_at, rowid LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![now_ms, limit as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                })?;
                for row in rows {
                    let (id, tenant, function_id, payload, callback_url, record) = row?;
                    let mut record = record_of(&record)?;
                    record.status = AsyncState::Running;
                    record.next_attempt_at = None;
                    let tenant = TenantId::try_from(tenant)
                        .map_err(|e| OrchestratorError::Internal(format!("stored tenant: {e}")))?;
                    claimed.push(QueuedInvocation {
                        id,
                        tenant,
                        function_id,
                        payload,
                        callback_url,
                        record,
                    });
                }
            }
            for job in &claimed {
                tx.execute(
                    "UPDATE async_invocations SET state = 'running', record = ?2 WHERE id = ?1",
                    params![job.id, serde_json::to_string(&job.record)?],
                )?;
            }
            tx.commit()?;
            Ok(claimed)
        }))
    }

    fn settle(
        &self,
        id: &str,
        record: AsyncResult,
        next_at: i64,
        expires_at: Option<i64>,
    ) -> QueueFuture<'_, ()> {
        let id = id.to_string();
        Box::pin(self.store.with(move |conn| {
            conn.execute(
                "UPDATE async_invocations SET state = ?2, next_at = ?3, expires_at = ?4, record = ?5
                 WHERE id = ?1",
                params![
                    id,
                    record.status.as_str(),
                    next_at,
                    expires_at,
                    serde_json::to_string(&record)?
                ],
            )?;
            Ok(())
        }))
    }

    fn get(
        &self,
        tenant: &TenantId,
        function_id: &str,
        id: &str,
    ) -> QueueFuture<'_, Option<AsyncResult>> {
        let (tenant, function_id, id) = (tenant.clone(), function_id.to_string(), id.to_string());
        Box::pin(self.store.with(move |conn| {
            let record: Option<String> = conn
                .query_row(
                    "SELECT record FROM async_invocations
                     WHERE id = ?1 AND tenant = ?2 AND function_id = ?3",
                    params![id, tenant.as_str(), function_id],
                    |r| r.get(0),
                )
                .optional()?;
            record.map(|r| record_of(&r)).transpose()
        }))
    }

    fn dead_letters(
        &self,
        tenant: &TenantId,
        function_id: &str,
        limit: usize,
    ) -> QueueFuture<'_, Vec<AsyncResult>> {
        let (tenant, function_id) = (tenant.clone(), function_id.to_string());
        Box::pin(self.store.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT record FROM async_invocations
                 WHERE tenant = ?1 AND function_id = ?2 AND state = 'dead'
                 ORDER BY rowid DESC LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![tenant.as_str(), function_id, limit as i64], |r| {
                    r.get::<_, String>(0)
                })?;
            let mut out = Vec::new();
            for row in rows {
                out.push(record_of(&row?)?);
            }
            Ok(out)
        }))
    }

    fn recover(&self) -> QueueFuture<'_, usize> {
        Box::pin(self.store.with(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut running = Vec::new();
            {
                let mut stmt =
                    tx.prepare("SELECT id, record FROM async_invocations WHERE state = 'running'")?;
                let rows = stmt.query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?;
                for row in rows {
                    let (id, record) = row?;
                    let mut record = record_of(&record)?;
                    record.status = AsyncState::Queued;
                    running.push((id, record));
                }
            }
            for (id, record) in &running {
                tx.execute(
                    "UPDATE async_invocations SET state = 'queued', next_at = 0, record = ?2 WHERE id = ?1",
                    params![id, serde_json::to_string(record)?],
                )?;
            }
            tx.commit()?;
            Ok(running.len())
        }))
    }

    fn pending_callbacks(&self) -> QueueFuture<'_, Vec<(String, AsyncResult)>> {
        Box::pin(self.store.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT callback_url, record FROM async_invocations
                 WHERE state IN ('succeeded', 'dead') AND callback_url IS NOT NULL
                   AND json_extract(record, '$.callback.state') = 'pending'",
            )?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (url, record) = row?;
                out.push((url, record_of(&record)?));
            }
            Ok(out)
        }))
    }

    fn purge(&self, now_ms: i64) -> QueueFuture<'_, usize> {
        Box::pin(self.store.with(move |conn| {
            Ok(conn.execute(
                "DELETE FROM async_invocations WHERE expires_at IS NOT NULL AND expires_at < ?1",
                [now_ms],
            )?)
        }))
    }

    fn pending_of(&self, tenant: &TenantId) -> QueueFuture<'_, usize> {
        let tenant = tenant.clone();
        Box::pin(self.store.with(move |conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM async_invocations
                 WHERE tenant = ?1 AND state IN ('queued', 'running')",
                [tenant.as_str()],
                |r| r.get::<_, i64>(0),
            )? as usize)
        }))
    }

    fn backlog(&self) -> QueueFuture<'_, usize> {
        Box::pin(self.store.with(move |conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM async_invocations WHERE state IN ('queued', 'running')",
                [],
                |r| r.get::<_, i64>(0),
            )? as usize)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> AsyncResult {
        AsyncResult::queued(id.into(), "f".into(), 2, "now".into())
    }

    #[tokio::test]
    async fn claims_once_recovers_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let f = store
            .add_version(
                TenantId::default_tenant(),
                "f".into(),
                false,
                Default::default(),
                |id, v| crate::store::tests::version_of(id, v, "a"),
            )
            .await
            .unwrap();
        let q = SqliteQueue::new(store.clone());
        let tenant = TenantId::default_tenant();
        for id in ["a", "b"] {
            q.enqueue(QueuedInvocation {
                id: id.into(),
                tenant: tenant.clone(),
                function_id: f.id.clone(),
                payload: b"{}".to_vec(),
                callback_url: None,
                record: record(id),
            })
            .await
            .unwrap();
        }
        assert_eq!(q.backlog().await.unwrap(), 2);
        assert_eq!(q.pending_of(&tenant).await.unwrap(), 2);
        let other = TenantId::try_from("other".to_string()).unwrap();
        assert_eq!(q.pending_of(&other).await.unwrap(), 0);
        let first = q.claim_due(1, 1).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id, "a", "oldest first");
        let rest = q.claim_due(1, 10).await.unwrap();
        assert_eq!(rest.len(), 1, "a claimed request is not handed out twice");
        assert!(q.claim_due(1, 10).await.unwrap().is_empty());
        // The server dies: both go back to the queue.
        assert_eq!(q.recover().await.unwrap(), 2);
        assert_eq!(
            q.get(&tenant, &f.id, "a").await.unwrap().unwrap().status,
            AsyncState::Queued
        );
        // A retry is due later; a final result expires.
        let mut a = record("a");
        a.attempts = 1;
        q.settle("a", a, 5_000, None).await.unwrap();
        let due: Vec<String> = q
            .claim_due(1_000, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(due, ["b"]);
        let mut b = record("b");
        b.status = AsyncState::Dead;
        q.settle("b", b, 0, Some(2_000)).await.unwrap();
        assert_eq!(q.dead_letters(&tenant, &f.id, 10).await.unwrap().len(), 1);
        let other = TenantId::try_from("other".to_string()).unwrap();
        assert!(
            q.get(&other, &f.id, "b").await.unwrap().is_none(),
            "tenant-scoped"
        );
        assert_eq!(q.purge(3_000).await.unwrap(), 1);
        assert!(q.get(&tenant, &f.id, "b").await.unwrap().is_none());
        assert_eq!(q.backlog().await.unwrap(), 1, "a still waits for its retry");
    }
}
