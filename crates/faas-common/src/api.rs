//! JSON bodies of the HTTP API (see `docs/api.md`), shared by the gateway, the CLI
//! and the tests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Language, SandboxKind};

/// A deployed function at its newest version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// Stable id (`fn-` + 12 hex digits), the same for every version.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Newest version, starting at 1.
    pub version: u32,
    /// Runtime language.
    pub language: Language,
    /// Handler reference.
    pub handler: String,
    /// Memory limit in MiB.
    pub memory_mb: u32,
    /// Invocation time limit in seconds.
    pub timeout_sec: u32,
    /// Size of each instance's `/tmp` in MiB.
    #[serde(default = "crate::validate::default_ephemeral_mb")]
    pub ephemeral_mb: u32,
    /// Declared dependencies.
    pub dependencies: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Sandbox kind it runs in.
    pub sandbox: SandboxKind,
    /// Attested hardware it requires (`tdx`, `sev_snp`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// Destinations it may reach (none: no network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    /// Its scaling as set (absent fields: the node's defaults).
    #[serde(default)]
    pub scaling: crate::Scaling,
    /// Retries of a failed asynchronous invocation, if set (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Bytes of code (and installed dependencies) this version stores.
    #[serde(default)]
    pub stored_bytes: u64,
    /// When this version was deployed (RFC 3339).
    pub created_at: String,
}

/// `GET /functions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionList {
    /// Every function, by name.
    pub functions: Vec<FunctionInfo>,
}

/// `GET /functions/{fn}/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionStatus {
    /// Function id.
    pub id: String,
    /// Function name.
    pub name: String,
    /// Newest version.
    pub version: u32,
    /// Instances ready for the next invocation.
    pub warm_instances: usize,
    /// Instances running an invocation now.
    pub busy_instances: usize,
    /// Instances being started now.
    #[serde(default)]
    pub starting_instances: usize,
    /// Invocations waiting for an instance now.
    #[serde(default)]
    pub queued: usize,
    /// The scaling in force: the function's, with the node's defaults filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_scaling: Option<crate::Scaling>,
    /// Size of each instance's `/tmp` in MiB (the newest version's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_mb: Option<u32>,
    /// Invocations recorded for this function.
    pub invocations: u64,
    /// Of which failed (handler error, timeout, crash).
    pub failures: u64,
    /// When the newest recorded invocation started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_invocation: Option<String>,
    /// How the newest recorded invocation ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<Outcome>,
    /// How long the newest instance of this function took to start, in
    /// milliseconds (since this server started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cold_start_ms: Option<f64>,
    /// Its newest deploy's build (without the log): `building` while
    /// dependencies install, then `ready` or `failed` (the previous
    /// version, if any, serves meanwhile and after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildInfo>,
}

/// Where a deploy's build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    /// Dependencies are installing.
    Building,
    /// The version is deployed.
    Ready,
    /// Nothing was deployed: see `error` and the log.
    Failed,
}

impl BuildState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Building => "building",
            BuildState::Ready => "ready",
            BuildState::Failed => "failed",
        }
    }
}

/// A deploy's build (`GET /functions/{fn}/build`; the body of a `202` from
/// `POST /functions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// Build id (`b-` + 16 hex digits).
    pub id: String,
    /// The function's name.
    pub function: String,
    /// Where it is.
    pub state: BuildState,
    /// When the deploy arrived (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The version it deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The installer's output (its last 256 KiB); left out of status views.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
}

/// One past invocation (`GET /functions/{fn}/logs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationRecord {
    /// Request id.
    pub request_id: String,
    /// Function version that ran.
    pub version: u32,
    /// Start time (RFC 3339).
    pub started_at: String,
    /// Wall time in milliseconds, queueing and cold start included.
    pub duration_ms: f64,
    /// How it ended.
    pub outcome: Outcome,
    /// Whether a new instance was started for it.
    pub cold_start: bool,
    /// Error message, if any.
    pub error: Option<String>,
    /// What the function printed.
    pub logs: String,
}

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The handler returned.
    Success,
    /// The handler raised, exited non-zero, or failed to load.
    Error,
    /// It ran past its timeout.
    Timeout,
    /// It exceeded its memory limit.
    Oom,
    /// The sandbox or the runtime in it died.
    Crash,
    /// No capacity (or the server was stopping).
    Unavailable,
}

impl Outcome {
    /// The name in records, metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Oom => "oom",
            Outcome::Crash => "crash",
            Outcome::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// `GET /functions/{fn}/logs`: one page of records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationList {
    /// Newest first.
    pub invocations: Vec<InvocationRecord>,
    /// Cursor of the next (older) page, as `?before=`; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
    /// Request id, for invocation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The function's output, for invocation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
}

/// A Blueprint job id bound to a function (`PUT /jobs/{job_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobBinding {
    /// Blueprint job id.
    pub job_id: u32,
    /// Function name.
    pub function: String,
    /// Function id.
    pub function_id: String,
}

/// `GET /jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobList {
    /// Every binding, by job id.
    pub jobs: Vec<JobBinding>,
}

/// Body of `PUT /jobs/{job_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindJob {
    /// Function name or id.
    pub function: String,
}

/// The Blueprint SDK's HTTP FaaS request (`POST /job/{job_id}`): ABI-encoded job
/// arguments as a JSON array of byte values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaasJobRequest {
    /// Job id; must match the path.
    pub job_id: u32,
    /// Raw job arguments.
    pub args: Vec<u8>,
}

/// The Blueprint SDK's HTTP FaaS response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaasJobResponse {
    /// Raw job result.
    pub result: Vec<u8>,
}

/// `POST /admin/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateKey {
    /// The tenant the key acts in.
    pub tenant: String,
    /// `deploy`, `invoke`, `read`; `admin`: the `/admin` routes (keys,
    /// quotas, audit for every tenant) and every scope in its own tenant.
    pub scopes: Vec<String>,
    /// The only functions the key may touch, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<String>>,
}

/// A key as the API shows it: never its secret, except in the answer to its
/// creation (`key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Public id.
    pub id: String,
    /// The key itself: only in the answer to `POST /admin/keys`, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its tenant.
    pub tenant: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// The functions it is limited to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<String>>,
    /// When it was made.
    pub created_at: String,
}

/// `GET /admin/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyList {
    /// Every live key.
    pub keys: Vec<KeyInfo>,
}

/// A tenant's limits (`PUT /admin/tenants/{tenant}/quota`); each absent
/// field is unlimited (within the node's own limits).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    /// Invocations per second, on average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocations_per_sec: Option<f64>,
    /// Invocations in a burst (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Instances alive at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// `memory_mb` of its live instances together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
    /// Functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_functions: Option<u32>,
    /// Stored code and dependencies, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_storage_mb: Option<u64>,
}

/// `GET /functions/{fn}/secrets`: names only, never values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretList {
    /// Secret names.
    pub secrets: Vec<String>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log (set when read back).
    #[serde(default)]
    pub seq: i64,
    /// When (RFC 3339).
    pub at: String,
    /// Whose action (the tenant of the key; unknown for failed logins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Which key acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Where the request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What was done: `deploy`, `delete`, `key.create`, `key.revoke`,
    /// `quota.set`, `secret.set`, `secret.delete`, `auth.failed`, `denied`, ...
    pub action: String,
    /// On what (a function, a key id, a tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A short note (never a secret or a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET /admin/audit`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditList {
    /// Entries, newest first.
    pub entries: Vec<AuditEntry>,
    /// Cursor of the next (older) page, as `?before=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Where an asynchronous invocation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AsyncState {
    /// Waiting to run (first time, or for its next retry).
    Queued,
    /// Running now.
    Running,
    /// The function returned a result.
    Succeeded,
    /// Every attempt failed: it is in the dead-letter list.
    Dead,
}

impl AsyncState {
    /// Its name in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            AsyncState::Queued => "queued",
            AsyncState::Running => "running",
            AsyncState::Succeeded => "succeeded",
            AsyncState::Dead => "dead",
        }
    }

    /// Whether it will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, AsyncState::Succeeded | AsyncState::Dead)
    }
}

/// `POST /functions/{fn}/async-invoke`: 202, once the request is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncAccepted {
    /// Its id, for `GET /functions/{fn}/results/{request_id}`.
    pub request_id: String,
    /// Its state (`queued`).
    pub status: AsyncState,
}

/// What became of a result's callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackStatus {
    /// The URL the result is posted to.
    pub url: String,
    /// `pending`, `delivered` or `failed` (after its retries).
    pub state: String,
    /// Deliveries tried.
    pub attempts: u32,
    /// Why the last one failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /functions/{fn}/results/{request_id}`, a dead letter, and the body
/// posted to a callback URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsyncResult {
    /// Its id.
    pub request_id: String,
    /// The function's name.
    pub function: String,
    /// Where it is.
    pub status: AsyncState,
    /// Runs so far.
    pub attempts: u32,
    /// Retries allowed after the first run.
    pub max_retries: u32,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
    /// When it succeeded or died (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// When the next attempt is due, while it waits for a retry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The HTTP status the synchronous invoke would have answered (last attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// The response body, base64 (when it succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Its MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the last attempt printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    /// The callback, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackStatus>,
    /// For a scheduled invocation: its schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// For a scheduled invocation: the tick it is for (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<String>,
}

/// A function's schedule (`/functions/{fn}/schedules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    /// Its id.
    pub id: String,
    /// The cron expression (UTC).
    pub cron: String,
    /// The payload of each invocation.
    pub payload: serde_json::Value,
    /// When it was added (RFC 3339).
    pub created_at: String,
    /// The last tick that fired (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_at: Option<String>,
    /// The next tick (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire_at: Option<String>,
}

/// `GET /functions/{fn}/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleList {
    /// The function's schedules, oldest first.
    pub schedules: Vec<ScheduleInfo>,
}

impl AsyncResult {
    /// A request just accepted: queued, not yet attempted, nothing else known.
    pub fn queued(
        request_id: String,
        function: String,
        max_retries: u32,
        created_at: String,
    ) -> Self {
        AsyncResult {
            request_id,
            function,
            status: AsyncState::Queued,
            attempts: 0,
            max_retries,
            created_at,
            finished_at: None,
            next_attempt_at: None,
            status_code: None,
            body_base64: None,
            content_type: None,
            error: None,
            logs: None,
            callback: None,
            schedule_id: None,
            scheduled_for: None,
        }
    }
}

/// `GET /functions/{fn}/dead-letters`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterList {
    /// Invocations that exhausted their retries.
    pub dead_letters: Vec<AsyncResult>,
}
