//! The HTTP API (see `docs/api.md`).
//!
//! Thin on purpose: authenticate the caller ([`auth`]), parse and bound the
//! request, call the [`Orchestrator`] as that caller, map its typed errors to
//! a status and a JSON `{"error": ...}`. [`serve`] runs it over HTTP or HTTPS.

#![forbid(unsafe_code)]

pub mod auth;
pub mod custom_faas;
pub mod serve;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json};
use faas_auth::Caller;
use faas_common::api::{
    AuditList, BindJob, BuildInfo, CreateKey, ErrorBody, FaasJobRequest, FaasJobResponse,
    FunctionList, InvocationList, JobList, KeyList, SecretList, TenantQuota,
};
use faas_common::{ExecuteFunctionArgs, FunctionDefinition};
use faas_orchestrator::{Deployed, FailureKind, Orchestrator, OrchestratorError};
use serde::Deserialize;
use serde_json::json;

pub use auth::redact;
pub use axum::Router;

/// Largest deploy request body (base64 code included).
pub const MAX_DEPLOY_BYTES: usize = 64 * 1024 * 1024;

/// Response headers of an invocation.
pub mod headers {
    /// Request id of the invocation.
    pub const REQUEST_ID: &str = "x-faas-request-id";
    /// Wall time in milliseconds.
    pub const DURATION_MS: &str = "x-faas-duration-ms";
    /// `true` when a new instance was started.
    pub const COLD_START: &str = "x-faas-cold-start";
    /// On a cold start: `true` when it took a pre-started instance.
    pub const PRESTARTED: &str = "x-faas-prestarted";
    /// Function version that ran.
    pub const VERSION: &str = "x-faas-version";
    /// For attested functions: `<kind>; simulated=<bool>; evidence=/attestation`.
    pub const ATTESTATION: &str = "x-faas-attestation";
    /// For attested functions: the worker key's signature over the result.
    pub const SIGNATURE: &str = faas_attest::RESULT_SIGNATURE_HEADER;
}

/// Gateway settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatewayConfig {
    /// `/metrics` without a key (for a scraper on a trusted network).
    pub metrics_public: bool,
    /// Served over HTTPS: URLs the API hands out say `https`.
    pub tls: bool,
}

/// The API's routes over `orchestrator`, every one but `/healthz` (and
/// `/metrics` when public) behind [`auth::authenticate`].
pub fn router(orchestrator: Arc<Orchestrator>, config: GatewayConfig) -> Router {
    let payload_limit = orchestrator.config().max_payload_bytes;
    // base64 grows a payload by a third; bound `/execute`'s JSON accordingly.
    let execute_limit = payload_limit / 3 * 4 + 64 * 1024;
    // The SDK sends job arguments as a JSON array of numbers: up to 4 bytes each.
    let job_limit = payload_limit * 4 + 64 * 1024;
    Router::new()
        .route(
            "/functions",
            post(deploy)
                .layer(DefaultBodyLimit::max(MAX_DEPLOY_BYTES))
                .get(list),
        )
        .route("/functions/{id}", get(get_function).delete(delete_function))
        .route("/functions/{id}/status", get(status))
        .route("/functions/{id}/build", get(build_info))
        .route(
            "/functions/{id}/scaling",
            put(set_scaling).layer(DefaultBodyLimit::max(64 * 1024)),
        )
        .route("/functions/{id}/logs", get(logs))
        .route(
            "/functions/{id}/invoke",
            post(invoke).layer(DefaultBodyLimit::max(payload_limit)),
        )
        .route(
            "/functions/{id}/async-invoke",
            post(invoke_async).layer(DefaultBodyLimit::max(payload_limit)),
        )
        .route("/functions/{id}/results/{request_id}", get(async_result))
        .route("/functions/{id}/dead-letters", get(dead_letters))
        .route(
            "/functions/{id}/schedules",
            get(list_schedules)
                .post(add_schedule)
                .layer(DefaultBodyLimit::max(128 * 1024)),
        )
        .route(
            "/functions/{id}/schedules/{schedule_id}",
            delete(remove_schedule),
        )
        .route(
            "/execute",
            post(execute).layer(DefaultBodyLimit::max(execute_limit)),
        )
        .route("/functions/{id}/secrets", get(list_secrets))
        .route(
            "/functions/{id}/secrets/{name}",
            put(set_secret)
                .layer(DefaultBodyLimit::max(64 * 1024))
                .delete(delete_secret),
        )
        .route("/jobs", get(list_jobs))
        .route("/jobs/{job_id}", put(bind_job).delete(unbind_job))
        .route(
            "/job/{job_id}",
            post(run_job)
                .layer(DefaultBodyLimit::max(job_limit))
                .head(job_health),
        )
        // The same, for callers that cannot send a header: the key in the
        // path (the Blueprint SDK's `HttpFaasExecutor`).
        .route(
            "/k/{key}/job/{job_id}",
            post(run_job_by_capability)
                .layer(DefaultBodyLimit::max(job_limit))
                .head(job_health_by_capability),
        )
        .route("/admin/keys", post(create_key).get(list_keys))
        .route("/admin/keys/{id}", delete(revoke_key))
        .route(
            "/admin/tenants/{tenant}/quota",
            get(get_quota).put(set_quota),
        )
        .route("/admin/audit", get(audit))
        .route("/admin/rotate-key", post(rotate_key))
        .route("/attestation", get(attestation))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(custom_faas::routes(job_limit))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            (orchestrator.clone(), config),
            auth::authenticate,
        ))
        .with_state(orchestrator)
}

type Orch = State<Arc<Orchestrator>>;
/// The authenticated caller ([`auth::authenticate`] put it there).
type Who = Extension<Caller>;

/// An error response.
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Seconds, for `Retry-After`.
    retry_after: Option<u64>,
    /// A policy's refusal, which [`auth::authenticate`] audits.
    refusal: bool,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                request_id: None,
                logs: None,
            },
            retry_after: None,
            refusal: false,
        }
    }
}

/// Marks a response as a policy's refusal, with its reason, for the audit log.
#[derive(Debug, Clone)]
pub struct Refusal(pub String);

impl From<OrchestratorError> for ApiError {
    fn from(e: OrchestratorError) -> Self {
        let status = match &e {
            OrchestratorError::Invalid(_) => StatusCode::BAD_REQUEST,
            OrchestratorError::NotFound(_) => StatusCode::NOT_FOUND,
            OrchestratorError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            OrchestratorError::Invocation {
                kind: FailureKind::Timeout,
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            OrchestratorError::Invocation { .. } | OrchestratorError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            OrchestratorError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            OrchestratorError::NotAttested(_) => StatusCode::PRECONDITION_FAILED,
            OrchestratorError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            OrchestratorError::Forbidden(_) => StatusCode::FORBIDDEN,
            OrchestratorError::RateLimited { .. } | OrchestratorError::Busy { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            OrchestratorError::QuotaExceeded(_) | OrchestratorError::Conflict(_) => {
                StatusCode::CONFLICT
            }
            OrchestratorError::StorageQuota(_) => StatusCode::PAYLOAD_TOO_LARGE,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!("{e}");
        }
        let mut err = ApiError::new(status, e.to_string());
        err.refusal = e.is_refusal();
        if let OrchestratorError::RateLimited { retry_after, .. }
        | OrchestratorError::Busy { retry_after, .. } = &e
        {
            err.retry_after = Some(*retry_after);
        }
        if let OrchestratorError::Invocation {
            request_id, logs, ..
        } = e
        {
            err.body.request_id = Some(request_id);
            err.body.logs = Some(logs);
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(&self.body)).into_response();
        if let Some(id) = self
            .body
            .request_id
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            resp.headers_mut().insert(headers::REQUEST_ID, id);
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.refusal {
            resp.extensions_mut().insert(Refusal(self.body.error));
        }
        resp
    }
}

/// The body, or the reason it could not be read (413 past the route's limit).
fn body(read: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    read.map_err(|r| {
        let status = r.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than this endpoint accepts".to_string()
        } else {
            format!("cannot read request body: {}", r.body_text())
        };
        ApiError::new(status, msg)
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
}

#[derive(Deserialize)]
struct DeployQuery {
    /// Wait for the build instead of answering 202 while it installs.
    #[serde(default)]
    wait: bool,
}

/// `201` with the new version, or `202` with the build while dependencies
/// install (`?wait=true` waits for them).
async fn deploy(
    State(o): Orch,
    Extension(caller): Who,
    query: Result<Query<DeployQuery>, axum::extract::rejection::QueryRejection>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let def: FunctionDefinition = parse_json(&body(read)?)?;
    match o.deploy_with(&caller, def, q.wait).await? {
        Deployed::Ready(info) => Ok((StatusCode::CREATED, Json(info)).into_response()),
        Deployed::Building(build) => {
            let location = format!("/functions/{}/build", build.function);
            let mut resp = (StatusCode::ACCEPTED, Json(build)).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Ok(resp)
        }
    }
}

/// The newest build of a function, with the installer's output.
async fn build_info(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
) -> Result<Json<BuildInfo>, ApiError> {
    Ok(Json(o.build_info(&caller, &id).await?))
}

async fn list(State(o): Orch, Extension(caller): Who) -> Result<Json<FunctionList>, ApiError> {
    Ok(Json(FunctionList {
        functions: o.list(&caller).await?,
    }))
}

async fn get_function(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(o.get(&caller, &id).await?).into_response())
}

async fn delete_function(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (id, name) = o.delete(&caller, &id).await?;
    Ok(Json(json!({"deleted": id, "name": name})).into_response())
}

async fn status(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(o.status(&caller, &id).await?).into_response())
}

/// `PUT /functions/{fn}/scaling` `Scaling`: replaces it, in force at once.
async fn set_scaling(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let scaling: faas_common::Scaling = parse_json(&body(read)?)?;
    Ok(Json(o.set_scaling(&caller, &id, scaling).await?).into_response())
}

#[derive(Deserialize)]
struct LogsQuery {
    limit: Option<usize>,
    before: Option<String>,
}

async fn logs(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<InvocationList>, ApiError> {
    Ok(Json(
        o.logs(&caller, &id, q.limit.unwrap_or(20), q.before.as_deref())
            .await?,
    ))
}

async fn invoke(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let payload = body(read).map_err(|e| {
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                e.status,
                format!(
                    "payload exceeds the {} byte limit",
                    o.config().max_payload_bytes
                ),
            )
        } else {
            e
        }
    })?;
    let inv = o.invoke(&caller, &id, payload.to_vec()).await?;
    let mut resp = Response::new(Body::from(inv.body));
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set(h, headers::REQUEST_ID, inv.request_id);
    set(
        h,
        headers::DURATION_MS,
        format!("{:.3}", inv.duration.as_secs_f64() * 1000.0),
    );
    set(h, headers::COLD_START, inv.cold_start.to_string());
    if inv.cold_start {
        set(h, headers::PRESTARTED, inv.prestarted.to_string());
    }
    set(h, headers::VERSION, inv.version.to_string());
    if let Some(proof) = &inv.proof {
        let simulated = proof.kind == faas_attest::EvidenceKind::Simulated;
        set(
            h,
            headers::ATTESTATION,
            format!(
                "{}; simulated={simulated}; evidence=/attestation",
                proof.kind
            ),
        );
        set(h, headers::SIGNATURE, proof.signature.clone());
    }
    if let Ok(ct) = HeaderValue::from_str(&inv.content_type) {
        h.insert(header::CONTENT_TYPE, ct);
    }
    Ok(resp)
}

/// Where an asynchronous invocation's result goes when final.
pub const CALLBACK_HEADER: &str = "x-callback-url";

/// `POST /functions/{fn}/async-invoke`: 202 once the request is durable.
async fn invoke_async(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let payload = body(read)?;
    let callback = headers
        .get(CALLBACK_HEADER)
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "X-Callback-Url is not ASCII"))
        })
        .transpose()?;
    let accepted = o
        .invoke_async(&caller, &id, payload.to_vec(), callback)
        .await?;
    let mut resp = (StatusCode::ACCEPTED, Json(&accepted)).into_response();
    if let Ok(v) = HeaderValue::from_str(&accepted.request_id) {
        resp.headers_mut().insert(headers::REQUEST_ID, v);
    }
    if let Ok(v) =
        HeaderValue::from_str(&format!("/functions/{id}/results/{}", accepted.request_id))
    {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn async_result(
    State(o): Orch,
    Extension(caller): Who,
    Path((id, request_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(o.async_result(&caller, &id, &request_id).await?).into_response())
}

#[derive(Deserialize)]
struct DeadLettersQuery {
    limit: Option<usize>,
}

async fn dead_letters(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
    Query(q): Query<DeadLettersQuery>,
) -> Result<Response, ApiError> {
    Ok(Json(o.dead_letters(&caller, &id, q.limit.unwrap_or(20)).await?).into_response())
}

async fn list_schedules(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(o.schedules(&caller, &id).await?).into_response())
}

async fn add_schedule(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec: faas_common::ScheduleSpec = parse_json(&body(read)?)?;
    let made = o.add_schedule(&caller, &id, spec).await?;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

async fn remove_schedule(
    State(o): Orch,
    Extension(caller): Who,
    Path((id, schedule_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    o.remove_schedule(&caller, &id, &schedule_id).await?;
    Ok(Json(json!({"function": id, "removed": schedule_id})).into_response())
}

async fn execute(
    State(o): Orch,
    Extension(caller): Who,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let args: ExecuteFunctionArgs = parse_json(&body(read)?)?;
    Ok(Json(o.execute(&caller, args).await?).into_response())
}

async fn list_secrets(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
) -> Result<Json<SecretList>, ApiError> {
    Ok(Json(SecretList {
        secrets: o.secret_names(&caller, &id).await?,
    }))
}

/// The body is the value, as is (UTF-8, at most 32 KiB).
async fn set_secret(
    State(o): Orch,
    Extension(caller): Who,
    Path((id, name)): Path<(String, String)>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let value = body(read)?;
    o.set_secret(&caller, &id, &name, &value).await?;
    Ok(Json(json!({"function": id, "secret": name})).into_response())
}

async fn delete_secret(
    State(o): Orch,
    Extension(caller): Who,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    o.delete_secret(&caller, &id, &name).await?;
    Ok(Json(json!({"function": id, "deleted": name})).into_response())
}

async fn list_jobs(State(o): Orch, Extension(caller): Who) -> Result<Json<JobList>, ApiError> {
    Ok(Json(JobList {
        jobs: o.jobs(&caller).await?,
    }))
}

async fn bind_job(
    State(o): Orch,
    Extension(caller): Who,
    Path(job_id): Path<u32>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: BindJob = parse_json(&body(read)?)?;
    Ok(Json(o.bind_job(&caller, job_id, &req.function).await?).into_response())
}

async fn unbind_job(
    State(o): Orch,
    Extension(caller): Who,
    Path(job_id): Path<u32>,
) -> Result<Response, ApiError> {
    o.unbind_job(&caller, job_id).await?;
    Ok(Json(json!({"unbound": job_id})).into_response())
}

/// `/k/{key}/job/{job_id}`: the key was checked from the path.
async fn run_job_by_capability(
    state: Orch,
    caller: Who,
    Path((_key, job_id)): Path<(String, u32)>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    run_job(state, caller, Path(job_id), read).await
}

async fn job_health_by_capability(
    state: Orch,
    caller: Who,
    Path((_key, job_id)): Path<(String, u32)>,
) -> StatusCode {
    job_health(state, caller, Path(job_id)).await
}

/// The Blueprint SDK's HTTP FaaS protocol: the bound function gets the raw
/// job arguments and returns the raw result.
async fn run_job(
    State(o): Orch,
    Extension(caller): Who,
    Path(job_id): Path<u32>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: FaasJobRequest = parse_json(&body(read)?)?;
    if req.job_id != job_id {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "body job_id {} does not match the path's {job_id}",
                req.job_id
            ),
        ));
    }
    let inv = o.invoke_job(&caller, job_id, req.args).await?;
    let mut resp = Json(FaasJobResponse { result: inv.body }).into_response();
    if let Ok(id) = HeaderValue::from_str(&inv.request_id) {
        resp.headers_mut().insert(headers::REQUEST_ID, id);
    }
    Ok(resp)
}

/// `HEAD /job/{job_id}`: 200 when the caller's tenant bound a function, 404 otherwise.
async fn job_health(State(o): Orch, Extension(caller): Who, Path(job_id): Path<u32>) -> StatusCode {
    match o.job(&caller, job_id).await {
        Ok(Some(_)) => StatusCode::OK,
        Ok(None) => StatusCode::NOT_FOUND,
        Err(e) => ApiError::from(e).status,
    }
}

async fn create_key(
    State(o): Orch,
    Extension(caller): Who,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CreateKey = parse_json(&body(read)?)?;
    let info = o.create_key(&caller, req).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list_keys(State(o): Orch, Extension(caller): Who) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(KeyList {
        keys: o.keys(&caller)?,
    }))
}

async fn revoke_key(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    o.revoke_key(&caller, &id).await?;
    Ok(Json(json!({"revoked": id})).into_response())
}

async fn get_quota(
    State(o): Orch,
    Extension(caller): Who,
    Path(tenant): Path<String>,
) -> Result<Json<TenantQuota>, ApiError> {
    Ok(Json(o.quota(&caller, &tenant)?))
}

async fn set_quota(
    State(o): Orch,
    Extension(caller): Who,
    Path(tenant): Path<String>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Json<TenantQuota>, ApiError> {
    let quota: TenantQuota = parse_json(&body(read)?)?;
    o.set_quota(&caller, &tenant, quota).await?;
    Ok(Json(o.quota(&caller, &tenant)?))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
    before: Option<String>,
}

async fn audit(
    State(o): Orch,
    Extension(caller): Who,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    Ok(Json(
        o.audit_log(&caller, q.limit.unwrap_or(50), q.before.as_deref())
            .await?,
    ))
}

async fn rotate_key(State(o): Orch, Extension(caller): Who) -> Result<Response, ApiError> {
    let n = o.rotate_secrets_key(&caller).await?;
    Ok(Json(json!({"resealed": n})).into_response())
}

#[derive(Deserialize)]
struct AttestationQuery {
    /// 64 hex digits: fresh evidence over the caller's own nonce.
    nonce: Option<String>,
}

/// The node's evidence and verdict; with `?nonce=`, fresh evidence bound to
/// it (any valid key: a verifier needs no scope).
async fn attestation(
    State(o): Orch,
    Extension(_caller): Who,
    Query(q): Query<AttestationQuery>,
) -> Result<Response, ApiError> {
    let node = o.attestation().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "attestation is not enabled on this node",
        )
    })?;
    let attested = match q.nonce {
        Some(hex) => {
            let nonce = faas_attest::Nonce::from_hex(&hex)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("nonce: {e}")))?;
            node.evidence_for(nonce).await?
        }
        None => node.current().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node has no attestation evidence right now",
            )
        })?,
    };
    Ok(Json(json!({
        "simulated": attested.verdict.simulated,
        "hardware": attested.verdict.hardware,
        "evidence": attested.evidence,
        "verdict": attested.verdict,
        "collateral": attested.collateral,
    }))
    .into_response())
}

/// Public: liveness and what the node offers, never anything of a tenant.
/// Public: whether the node serves (its database answers), never how much it
/// holds for whom.
async fn healthz(State(o): Orch) -> Result<Response, ApiError> {
    o.function_count().await?;
    let sandboxes = o.sandbox_kinds();
    let mut body = json!({
        "status": "ok",
        "executor": sandboxes[0],
        "sandboxes": sandboxes,
        "auth": if o.auth_enabled() { "on" } else { "off" },
    });
    if !o.auth_enabled() {
        body["warning"] = json!(auth::NO_AUTH_WARNING);
    }
    Ok(Json(body).into_response())
}

/// Admin only, unless the gateway was told the metrics are public.
async fn metrics(
    State(o): Orch,
    caller: Option<Who>,
    Extension(config): Extension<GatewayConfig>,
) -> Result<Response, ApiError> {
    if !config.metrics_public {
        let Some(Extension(caller)) = caller else {
            return Err(
                OrchestratorError::Unauthorized("a valid API key is required".into()).into(),
            );
        };
        o.require_admin(&caller)?;
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        o.render_metrics(),
    )
        .into_response())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {}", redact(uri.path())),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", redact(uri.path())),
    )
}
