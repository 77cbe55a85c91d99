//! Asynchronous invocations: accept (durable before the 202), run in the
//! background with retries and exponential backoff, dead-letter what exhausts
//! them, post the final result to a callback URL, keep results for the
//! retention time. The queue is [`crate::queue::InvocationQueue`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use faas_auth::{Caller, Scope};
use faas_common::api::{AsyncAccepted, AsyncResult, AsyncState, CallbackStatus, DeadLetterList};
use faas_common::base64::{self, Engine};

use crate::error::FailureKind;
use crate::queue::QueuedInvocation;
use crate::store::FunctionVersion;
use crate::{now_rfc3339, Orchestrator, OrchestratorError};

/// Longest callback URL.
pub const MAX_CALLBACK_URL: usize = 2048;
/// How often the worker looks for due requests when nothing woke it.
const POLL: Duration = Duration::from_millis(500);
/// How often expired results are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Callback deliveries tried before it is given up (`failed`).
const CALLBACK_ATTEMPTS: u32 = 4;
/// One callback delivery's time limit.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

use crate::unix_ms as now_ms;

/// `ms` since the Unix epoch as RFC 3339.
pub(crate) fn rfc3339_at(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Wait before attempt `n + 1` after `n` failed ones: 1 s, 2 s, 4 s, ... up
/// to [`MAX_BACKOFF`].
pub(crate) fn backoff(failed: u32) -> Duration {
    let secs = 1u64 << failed.saturating_sub(1).min(16);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// The record of a request of `f` just accepted.
pub(crate) fn queued_record(f: &FunctionVersion, request_id: &str) -> AsyncResult {
    AsyncResult::queued(
        request_id.to_string(),
        f.name.clone(),
        f.max_retries
            .unwrap_or(faas_common::validate::DEFAULT_MAX_RETRIES),
        now_rfc3339(),
    )
}

/// A callback URL's shape: http(s), a host, no credentials, bounded.
fn check_callback(url: &str) -> Result<reqwest::Url, OrchestratorError> {
    let bad = |why: &str| OrchestratorError::Invalid(format!("X-Callback-Url {why}"));
    if url.len() > MAX_CALLBACK_URL {
        return Err(bad(&format!("is longer than {MAX_CALLBACK_URL} bytes")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must be http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(parsed)
}

/// Whether the node may post to `ip` without `callbacks_allow_private`: not
/// loopback, private, link-local (cloud metadata), unspecified or multicast.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg & 0xfe00) == 0xfc00
                || (seg & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| !is_public(IpAddr::V4(v4))))
        }
    }
}

/// The HTTP status `POST /functions/{fn}/invoke` answers for `e`.
fn status_of(e: &OrchestratorError) -> u16 {
    match e {
        OrchestratorError::Invocation {
            kind: FailureKind::Timeout,
            ..
        } => 504,
        OrchestratorError::Overloaded(_) => 503,
        OrchestratorError::Busy { .. } | OrchestratorError::RateLimited { .. } => 429,
        OrchestratorError::NotAttested(_) => 412,
        OrchestratorError::NotFound(_) => 404,
        OrchestratorError::Invalid(_) => 400,
        OrchestratorError::TooLarge(_) => 413,
        _ => 500,
    }
}

/// Whether another attempt could succeed where this one failed.
fn retryable(e: &OrchestratorError) -> bool {
    matches!(
        e,
        OrchestratorError::Invocation { .. }
            | OrchestratorError::Overloaded(_)
            | OrchestratorError::Busy { .. }
            | OrchestratorError::RateLimited { .. }
            | OrchestratorError::Internal(_)
    )
}

impl Orchestrator {
    /// Accept an invocation to run in the background; returns once it is
    /// durable.
    pub async fn invoke_async(
        &self,
        caller: &Caller,
        id_or_name: &str,
        payload: Vec<u8>,
        callback_url: Option<String>,
    ) -> Result<AsyncAccepted, OrchestratorError> {
        if payload.len() > self.config.max_payload_bytes {
            return Err(OrchestratorError::TooLarge(format!(
                "payload of {} bytes exceeds the {} byte limit",
                payload.len(),
                self.config.max_payload_bytes
            )));
        }
        if let Some(url) = &callback_url {
            check_callback(url)?;
        }
        let f = self.function(caller, Scope::Invoke, id_or_name).await?;
        // Each waiting request holds its payload on disk: a tenant may not
        // queue without bound.
        let pending = self.queue.pending_of(&caller.tenant).await?;
        if pending >= self.config.max_async_pending {
            self.metrics.reject("async_backlog");
            return Err(OrchestratorError::Busy {
                message: format!(
                    "tenant {} already has {pending} asynchronous invocations waiting, the most it may have; retry later",
                    caller.tenant
                ),
                retry_after: 5,
            });
        }
        // Counted against the tenant's rate when accepted, as a call is.
        self.tenancy
            .admit_invocation(&caller.tenant)
            .inspect_err(|_| self.metrics.reject("rate_limited"))?;
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut record = queued_record(&f, &request_id);
        record.callback = callback_url.as_ref().map(|url| CallbackStatus {
            url: url.clone(),
            state: "pending".into(),
            attempts: 0,
            error: None,
        });
        self.queue
            .enqueue(QueuedInvocation {
                id: request_id.clone(),
                tenant: caller.tenant.clone(),
                function_id: f.id.clone(),
                payload,
                callback_url,
                record,
            })
            .await?;
        self.async_wake.notify_one();
        tracing::info!(tenant = %caller.tenant, function = %f.name, %request_id, "async invocation accepted");
        Ok(AsyncAccepted {
            request_id,
            status: AsyncState::Queued,
        })
    }

    /// An asynchronous invocation of the caller's function.
    pub async fn async_result(
        &self,
        caller: &Caller,
        id_or_name: &str,
        request_id: &str,
    ) -> Result<AsyncResult, OrchestratorError> {
        let f = self.function(caller, Scope::Read, id_or_name).await?;
        self.queue
            .get(&caller.tenant, &f.id, request_id)
            .await?
            .ok_or_else(|| OrchestratorError::NotFound(format!("result {request_id:?}")))
    }

    /// The function's dead letters, newest first (at most `limit`, up to 100).
    pub async fn dead_letters(
        &self,
        caller: &Caller,
        id_or_name: &str,
        limit: usize,
    ) -> Result<DeadLetterList, OrchestratorError> {
        let f = self.function(caller, Scope::Read, id_or_name).await?;
        Ok(DeadLetterList {
            dead_letters: self
                .queue
                .dead_letters(&caller.tenant, &f.id, limit.clamp(1, 100))
                .await?,
        })
    }

    /// Requests accepted and not yet final, every tenant's.
    pub async fn async_backlog(&self) -> Result<usize, OrchestratorError> {
        self.queue.backlog().await
    }

    /// Run the queue until shutdown: put back what a dead server left
    /// running, redeliver cut-short callbacks, then run due requests (at most
    /// `async_workers` at once) and purge expired results.
    pub fn start_async_worker(self: &Arc<Self>) {
        let weak: Weak<Orchestrator> = Arc::downgrade(self);
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            if let Some(this) = weak.upgrade() {
                match this.queue.recover().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        "{n} asynchronous invocation(s) interrupted by the last stop queued again"
                    ),
                    Err(e) => tracing::warn!("cannot recover asynchronous invocations: {e}"),
                }
                match this.queue.pending_callbacks().await {
                    Ok(pending) => {
                        for (url, record) in pending {
                            this.deliver_later(url, record);
                        }
                    }
                    Err(e) => tracing::warn!("cannot list pending callbacks: {e}"),
                }
            }
            let slots = Arc::new(tokio::sync::Semaphore::new(
                weak.upgrade().map_or(1, |o| o.config.async_workers.max(1)),
            ));
            let mut last_purge = tokio::time::Instant::now() - PURGE_EVERY;
            loop {
                let Some(this) = weak.upgrade() else { return };
                if last_purge.elapsed() >= PURGE_EVERY {
                    last_purge = tokio::time::Instant::now();
                    if let Err(e) = this.queue.purge(now_ms()).await {
                        tracing::warn!("cannot purge expired results: {e}");
                    }
                }
                match this.queue.backlog().await {
                    Ok(n) => {
                        this.metrics.async_backlog.set(n as i64);
                    }
                    Err(e) => tracing::warn!("cannot count the async backlog: {e}"),
                }
                let free = slots.available_permits();
                if free > 0 {
                    match this.queue.claim_due(now_ms(), free).await {
                        Ok(jobs) => {
                            for job in jobs {
                                let Ok(permit) = slots.clone().try_acquire_owned() else {
                                    break;
                                };
                                let this = this.clone();
                                tokio::spawn(async move {
                                    this.attempt(job).await;
                                    drop(permit);
                                });
                            }
                        }
                        Err(e) => tracing::warn!("cannot read the async queue: {e}"),
                    }
                }
                let wake = this.async_wake.clone();
                drop(this);
                tokio::select! {
                    () = stopping.cancelled() => return,
                    () = wake.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        });
    }

    /// One attempt of `job`, and what follows: success, a retry later, or
    /// the dead-letter list.
    async fn attempt(self: Arc<Self>, job: QueuedInvocation) {
        let QueuedInvocation {
            id,
            tenant,
            function_id,
            payload,
            callback_url,
            mut record,
        } = job;
        let outcome = match self.store.latest(&tenant, &function_id).await {
            Ok(f) => {
                record.function = f.name.clone();
                let this = self.clone();
                let id = id.clone();
                // A task of its own, as a synchronous call runs.
                let span = crate::invocation_span(&f, &id);
                tokio::spawn(tracing::Instrument::instrument(
                    async move { this.run(f, payload, id).await },
                    span,
                ))
                .await
                .unwrap_or_else(|e| Err(OrchestratorError::Internal(format!("attempt task: {e}"))))
            }
            Err(e) => Err(e),
        };
        if self.stopping.is_cancelled() && outcome.is_err() {
            // Cut short by the shutdown: left running, it is queued again at
            // the next start instead of counting as a failed attempt.
            return;
        }
        record.attempts += 1;
        let now = now_ms();
        let (next_at, expires_at) = match outcome {
            Ok(inv) => {
                record.status = AsyncState::Succeeded;
                record.status_code = Some(200);
                record.body_base64 =
                    Some(base64::engine::general_purpose::STANDARD.encode(&inv.body));
                record.content_type = Some(inv.content_type);
                record.logs = Some(inv.logs);
                record.error = None;
                record.finished_at = Some(now_rfc3339());
                (now, Some(now + self.retention_ms()))
            }
            Err(e) => {
                record.status_code = Some(status_of(&e));
                record.error = Some(e.to_string());
                record.logs = match &e {
                    OrchestratorError::Invocation { logs, .. } => Some(logs.clone()),
                    _ => None,
                };
                if retryable(&e) && record.attempts <= record.max_retries {
                    self.metrics.async_retries.inc();
                    let at = now + backoff(record.attempts).as_millis() as i64;
                    record.status = AsyncState::Queued;
                    record.next_attempt_at = Some(rfc3339_at(at));
                    (at, None)
                } else {
                    self.metrics.async_dead_letters.inc();
                    record.status = AsyncState::Dead;
                    record.finished_at = Some(now_rfc3339());
                    tracing::warn!(%tenant, function = %record.function, request_id = %id, attempts = record.attempts, "async invocation dead-lettered: {e}");
                    (now, Some(now + self.retention_ms()))
                }
            }
        };
        if let Err(e) = self
            .queue
            .settle(&id, record.clone(), next_at, expires_at)
            .await
        {
            tracing::warn!(request_id = %id, "cannot store an async result: {e}");
            return;
        }
        if record.status == AsyncState::Queued {
            return;
        }
        if let Some(url) = callback_url {
            self.deliver(url, record).await;
        }
    }

    fn retention_ms(&self) -> i64 {
        self.config.async_retention.as_millis() as i64
    }

    fn deliver_later(self: &Arc<Self>, url: String, record: AsyncResult) {
        let this = self.clone();
        tokio::spawn(async move { this.deliver(url, record).await });
    }

    /// POST the final `record` to `url`, retrying with backoff; the outcome
    /// is stored with the record.
    async fn deliver(&self, url: String, mut record: AsyncResult) {
        let Some(mut callback) = record.callback.clone() else {
            return;
        };
        while callback.attempts < CALLBACK_ATTEMPTS {
            if callback.attempts > 0 {
                tokio::select! {
                    () = self.stopping.cancelled() => return,
                    () = tokio::time::sleep(backoff(callback.attempts)) => {}
                }
            }
            callback.attempts += 1;
            match self.post_result(&url, &record).await {
                Ok(()) => {
                    callback.state = "delivered".into();
                    callback.error = None;
                    break;
                }
                Err(why) => {
                    tracing::warn!(request_id = %record.request_id, attempt = callback.attempts, "callback failed: {why}");
                    callback.error = Some(why);
                    if callback.attempts == CALLBACK_ATTEMPTS {
                        callback.state = "failed".into();
                    }
                }
            }
        }
        record.callback = Some(callback);
        let expires = now_ms() + self.retention_ms();
        if let Err(e) = self
            .queue
            .settle(&record.request_id.clone(), record, now_ms(), Some(expires))
            .await
        {
            tracing::warn!("cannot store a callback's outcome: {e}");
        }
    }

    /// One delivery: resolve the host once, refuse addresses the node must
    /// not reach, and connect to exactly the address checked (no rebinding,
    /// no redirects).
    async fn post_result(&self, url: &str, record: &AsyncResult) -> Result<(), String> {
        let parsed = check_callback(url).map_err(|e| e.to_string())?;
        let host = parsed.host_str().unwrap_or_default().to_string();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let lookup = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let addrs: Vec<SocketAddr> = tokio::time::timeout(
            CALLBACK_TIMEOUT,
            tokio::net::lookup_host((lookup.as_str(), port)),
        )
        .await
        .map_err(|_| format!("resolving {host} timed out"))?
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
        let addr = addrs
            .first()
            .copied()
            .ok_or_else(|| format!("{host} has no address"))?;
        if !self.config.callbacks_allow_private {
            if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                return Err(format!(
                    "{host} resolves to {}, which callbacks may not reach on this node",
                    bad.ip()
                ));
            }
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(CALLBACK_TIMEOUT)
            .resolve(&lookup, addr)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let resp = client
            .post(parsed)
            .header("x-faas-request-id", &record.request_id)
            .json(record)
            .send()
            .await
            .map_err(|e| format!("POST {}: {e}", redact_query(url)))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "POST {}: HTTP {}",
                redact_query(url),
                resp.status()
            ))
        }
    }
}

/// A URL without its query (which may carry a token) for the log.
fn redact_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let secs: Vec<u64> = (1..=4).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8]);
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn callbacks_are_checked() {
        assert!(check_callback("https://hooks.example/x?t=1").is_ok());
        for bad in [
            "ftp://x/",
            "http://user:pw@x/",
            "not a url",
            "file:///etc/passwd",
        ] {
            assert!(check_callback(bad).is_err(), "{bad}");
        }
        assert!(check_callback(&format!("http://x/{}", "a".repeat(3000))).is_err());
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "192.168.1.1",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        assert!(is_public("93.184.216.34".parse().unwrap()));
        assert_eq!(redact_query("https://h/p?token=s"), "https://h/p");
    }
}
