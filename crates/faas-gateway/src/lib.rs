//! The HTTP API (see `docs/api.md`).
//!
//! Thin on purpose: parse and bound the request, call the
//! [`Orchestrator`], map its typed errors to a status and a JSON `{"error": ...}`.

#![forbid(unsafe_code)]

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use faas_common::api::{
    BindJob, ErrorBody, FaasJobRequest, FaasJobResponse, FunctionList, InvocationList, JobList,
};
use faas_common::{ExecuteFunctionArgs, FunctionDefinition};
use faas_orchestrator::{FailureKind, Orchestrator, OrchestratorError};
use serde::Deserialize;
use serde_json::json;

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
    /// Function version that ran.
    pub const VERSION: &str = "x-faas-version";
    /// For attested functions: `<kind>; simulated=<bool>; evidence=/attestation`.
    pub const ATTESTATION: &str = "x-faas-attestation";
    /// For attested functions: the worker key's signature over the result.
    pub const SIGNATURE: &str = faas_attest::RESULT_SIGNATURE_HEADER;
}

/// The API's routes over `orchestrator`.
pub fn router(orchestrator: Arc<Orchestrator>) -> Router {
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
        .route("/functions/{id}/logs", get(logs))
        .route(
            "/functions/{id}/invoke",
            post(invoke).layer(DefaultBodyLimit::max(payload_limit)),
        )
        .route(
            "/execute",
            post(execute).layer(DefaultBodyLimit::max(execute_limit)),
        )
        .route("/jobs", get(list_jobs))
        .route("/jobs/{job_id}", put(bind_job).delete(unbind_job))
        .route(
            "/job/{job_id}",
            post(run_job)
                .layer(DefaultBodyLimit::max(job_limit))
                .head(job_health),
        )
        .route("/attestation", get(attestation))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(orchestrator)
}

type Orch = State<Arc<Orchestrator>>;

/// An error response.
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
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
        }
    }
}

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
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!("{e}");
        }
        let mut err = ApiError::new(status, e.to_string());
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

async fn deploy(State(o): Orch, read: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let def: FunctionDefinition = parse_json(&body(read)?)?;
    let info = o.deploy(def).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list(State(o): Orch) -> Result<Json<FunctionList>, ApiError> {
    Ok(Json(FunctionList {
        functions: o.list().await?,
    }))
}

async fn get_function(State(o): Orch, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(o.get(&id).await?).into_response())
}

async fn delete_function(State(o): Orch, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (id, name) = o.delete(&id).await?;
    Ok(Json(json!({"deleted": id, "name": name})).into_response())
}

async fn status(State(o): Orch, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(o.status(&id).await?).into_response())
}

#[derive(Deserialize)]
struct LogsQuery {
    limit: Option<usize>,
    before: Option<String>,
}

async fn logs(
    State(o): Orch,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<InvocationList>, ApiError> {
    Ok(Json(
        o.logs(&id, q.limit.unwrap_or(20), q.before.as_deref())
            .await?,
    ))
}

async fn invoke(
    State(o): Orch,
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
    let inv = o.invoke(&id, payload.to_vec()).await?;
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

async fn execute(
    State(o): Orch,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let args: ExecuteFunctionArgs = parse_json(&body(read)?)?;
    Ok(Json(o.execute(args).await?).into_response())
}

async fn list_jobs(State(o): Orch) -> Result<Json<JobList>, ApiError> {
    Ok(Json(JobList {
        jobs: o.jobs().await?,
    }))
}

async fn bind_job(
    State(o): Orch,
    Path(job_id): Path<u32>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: BindJob = parse_json(&body(read)?)?;
    Ok(Json(o.bind_job(job_id, &req.function).await?).into_response())
}

async fn unbind_job(State(o): Orch, Path(job_id): Path<u32>) -> Result<Response, ApiError> {
    o.unbind_job(job_id).await?;
    Ok(Json(json!({"unbound": job_id})).into_response())
}

/// The Blueprint SDK's HTTP FaaS protocol: the bound function gets the raw
/// job arguments and returns the raw result.
async fn run_job(
    State(o): Orch,
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
    let inv = o.invoke_job(job_id, req.args).await?;
    let mut resp = Json(FaasJobResponse { result: inv.body }).into_response();
    if let Ok(id) = HeaderValue::from_str(&inv.request_id) {
        resp.headers_mut().insert(headers::REQUEST_ID, id);
    }
    Ok(resp)
}

/// `HEAD /job/{job_id}`: 200 when a function is bound, 404 otherwise.
async fn job_health(State(o): Orch, Path(job_id): Path<u32>) -> StatusCode {
    match o.job(job_id).await {
        Ok(Some(_)) => StatusCode::OK,
        Ok(None) => StatusCode::NOT_FOUND,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Deserialize)]
struct AttestationQuery {
    /// 64 hex digits: fresh evidence over the caller's own nonce.
    nonce: Option<String>,
}

/// The node's evidence and verdict; with `?nonce=`, fresh evidence bound to it.
async fn attestation(
    State(o): Orch,
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

async fn healthz(State(o): Orch) -> Result<Response, ApiError> {
    let functions = o.list().await?.len();
    let sandboxes = o.sandbox_kinds();
    Ok(Json(json!({
        "status": "ok",
        "executor": sandboxes[0],
        "sandboxes": sandboxes,
        "functions": functions,
    }))
    .into_response())
}

async fn metrics(State(o): Orch) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        o.render_metrics(),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
