//! The Blueprint SDK's "Custom FaaS Platform Spec v1.0" under `/api/functions`
//! (see `docs/api.md`): any Blueprint's `HttpFaasExecutor` can use this node
//! as its FaaS provider, beside Lambda, Cloud Functions and Azure.
//!
//! A spec function is an ordinary native function of the caller's tenant
//! (handler `bootstrap`, the zip's executable), so it runs in the same
//! sandboxes, under the same limits, keys and quotas as every other one, and
//! `/functions/{id}` shows it too. What the spec adds is the envelope: the
//! bootstrap reads `{"job_id", "args"}` on stdin and prints `{"job_id",
//! "result", "success"}` on stdout; errors carry `code` and `function_id`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Extension, Json, Router};
use faas_auth::Caller;
use faas_common::api::{FaasJobRequest, FunctionInfo, FunctionStatus, Outcome};
use faas_common::base64::{self, Engine};
use faas_common::{FunctionDefinition, Scaling};
use faas_orchestrator::{Orchestrator, OrchestratorError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{body, headers, GatewayConfig, Refusal};

/// The executable every spec upload holds at its root.
pub const BOOTSTRAP: &str = "bootstrap";

/// The configuration header of a deploy: base64 of [`SpecConfig`]'s JSON.
pub const CONFIG_HEADER: &str = "x-blueprint-config";

/// Largest `X-Blueprint-Config` header (before decoding).
const MAX_CONFIG_HEADER: usize = 48 * 1024;

/// Largest zip a deploy takes: what `POST /functions` takes once base64 is
/// decoded, so both doors admit the same code.
pub const MAX_ZIP_BYTES: usize = crate::MAX_DEPLOY_BYTES / 4 * 3;

/// `X-Blueprint-Config`, decoded. Absent fields take the spec's defaults;
/// unknown ones are ignored, as newer SDKs may send more.
#[derive(Debug, Deserialize)]
struct SpecConfig {
    #[serde(default = "default_memory_mb")]
    memory_mb: u32,
    #[serde(default = "default_timeout_secs")]
    timeout_secs: u32,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    env_vars: std::collections::BTreeMap<String, String>,
}

fn default_memory_mb() -> u32 {
    512
}

fn default_timeout_secs() -> u32 {
    300
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig {
            memory_mb: default_memory_mb(),
            timeout_secs: default_timeout_secs(),
            max_concurrency: None,
            env_vars: Default::default(),
        }
    }
}

/// The spec's `DeploymentInfo`.
#[derive(Debug, Serialize)]
struct DeploymentInfo {
    function_id: String,
    endpoint: String,
    status: &'static str,
    /// The newest instance's start time; `null` before the first one.
    cold_start_ms: Option<u64>,
    memory_mb: u32,
    timeout_secs: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: Option<u32>,
    deployed_at: String,
    binary_size_bytes: u64,
}

/// What a bootstrap prints. `success` defaults to true, as in the SDK's
/// reference server; `result` must be bytes (numbers 0-255).
#[derive(Debug, Deserialize)]
struct BootstrapOutput {
    #[serde(default)]
    job_id: Option<u32>,
    #[serde(default)]
    result: Vec<u8>,
    #[serde(default = "yes")]
    success: bool,
    #[serde(default)]
    error: Option<String>,
}

fn yes() -> bool {
    true
}

/// The spec's invoke answer, success or failure.
#[derive(Debug, Serialize)]
struct InvokeResponse {
    job_id: u32,
    result: Vec<u8>,
    success: bool,
    execution_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logs: Option<String>,
}

/// An error in the spec's format: `{"error", "code", "function_id"}`.
#[derive(Debug)]
pub struct SpecError {
    status: StatusCode,
    error: String,
    code: &'static str,
    function_id: Option<String>,
    retry_after: Option<u64>,
    refusal: bool,
}

impl SpecError {
    fn new(status: StatusCode, code: &'static str, error: impl Into<String>) -> Self {
        SpecError {
            status,
            error: error.into(),
            code,
            function_id: None,
            retry_after: None,
            refusal: false,
        }
    }

    fn bad(error: impl Into<String>) -> Self {
        SpecError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", error)
    }

    fn of(mut self, function_id: &str) -> Self {
        self.function_id = Some(function_id.to_string());
        self
    }
}

impl From<OrchestratorError> for SpecError {
    fn from(e: OrchestratorError) -> Self {
        let code = match &e {
            OrchestratorError::Invalid(_) => "INVALID_REQUEST",
            OrchestratorError::NotFound(_) => "NOT_FOUND",
            OrchestratorError::TooLarge(_) | OrchestratorError::StorageQuota(_) => {
                "PAYLOAD_TOO_LARGE"
            }
            OrchestratorError::Conflict(_) => "CONFLICT",
            OrchestratorError::Invocation { .. } => "EXECUTION_ERROR",
            OrchestratorError::NotAttested(_) => "NOT_ATTESTED",
            OrchestratorError::Overloaded(_) => "UNAVAILABLE",
            OrchestratorError::Unauthorized(_) => "UNAUTHORIZED",
            OrchestratorError::Forbidden(_) => "FORBIDDEN",
            OrchestratorError::RateLimited { .. } => "RATE_LIMITED",
            OrchestratorError::Busy { .. } => "BUSY",
            OrchestratorError::QuotaExceeded(_) => "QUOTA_EXCEEDED",
            OrchestratorError::Internal(_) => "INTERNAL_ERROR",
        };
        let api = crate::ApiError::from(e);
        SpecError {
            status: api.status,
            error: if matches!(code, "NOT_FOUND") {
                "Function not found".to_string()
            } else {
                api.body.error
            },
            code,
            function_id: None,
            retry_after: api.retry_after,
            refusal: api.refusal,
        }
    }
}

impl IntoResponse for SpecError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.error, "code": self.code});
        if let Some(id) = &self.function_id {
            body["function_id"] = json!(id);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.refusal {
            resp.extensions_mut().insert(Refusal(self.error));
        }
        resp
    }
}

type Orch = State<Arc<Orchestrator>>;
type Who = Extension<Caller>;

/// The spec's routes, also under `/k/{key}` for clients that cannot send an
/// `Authorization` header (the SDK's `HttpFaasExecutor` sends none).
pub(crate) fn routes(invoke_limit: usize) -> Router<Arc<Orchestrator>> {
    let deploy_limit = DefaultBodyLimit::max(MAX_ZIP_BYTES);
    let invoke_limit = DefaultBodyLimit::max(invoke_limit);
    Router::new()
        .route(
            "/api/functions/{id}",
            put(deploy)
                .layer(deploy_limit)
                .get(deployment)
                .delete(undeploy),
        )
        .route(
            "/api/functions/{id}/invoke",
            post(invoke).layer(invoke_limit).head(reachable),
        )
        .route(
            "/k/{key}/api/functions/{id}/invoke",
            post(invoke_by_capability)
                .layer(invoke_limit)
                .head(reachable_by_capability),
        )
        .route("/api/functions/{id}/health", axum::routing::get(health))
        .route("/api/functions/{id}/warm", post(warm))
}

/// `http(s)://<host>/api/functions/{id}/invoke`, from the request's `Host`
/// (only if it is a plain host name or address, with a port).
fn endpoint(headers: &HeaderMap, config: &GatewayConfig, id: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if config.tls { "https" } else { "http" };
    format!("{scheme}://{host}/api/functions/{id}/invoke")
}

/// The request body, or the reason it could not be read in the spec's form.
fn spec_body(read: Result<Bytes, BytesRejection>, id: &str) -> Result<Bytes, SpecError> {
    body(read).map_err(|e| {
        let code = if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            "PAYLOAD_TOO_LARGE"
        } else {
            "INVALID_REQUEST"
        };
        SpecError::new(e.status, code, e.body.error).of(id)
    })
}

/// The spec's config header, or its defaults when absent.
fn config_of(headers: &HeaderMap) -> Result<SpecConfig, SpecError> {
    let Some(raw) = headers.get(CONFIG_HEADER) else {
        return Ok(SpecConfig::default());
    };
    if raw.len() > MAX_CONFIG_HEADER {
        return Err(SpecError::bad(format!(
            "X-Blueprint-Config is larger than {MAX_CONFIG_HEADER} bytes"
        )));
    }
    let text = raw
        .to_str()
        .map_err(|_| SpecError::bad("X-Blueprint-Config is not ASCII base64"))?;
    let json = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| SpecError::bad(format!("X-Blueprint-Config is not valid base64: {e}")))?;
    let not_spec =
        |e: String| SpecError::bad(format!("X-Blueprint-Config is not the spec's JSON: {e}"));
    // An object only: serde would also take a struct's fields as an array.
    match serde_json::from_slice::<serde_json::Value>(&json) {
        Ok(v) if v.is_object() => serde_json::from_value(v).map_err(|e| not_spec(e.to_string())),
        Ok(_) => Err(not_spec("expected an object".into())),
        Err(e) => Err(not_spec(e.to_string())),
    }
}

fn deployment_info(
    headers: &HeaderMap,
    config: &GatewayConfig,
    info: &FunctionInfo,
    status: Option<&FunctionStatus>,
) -> DeploymentInfo {
    DeploymentInfo {
        function_id: info.name.clone(),
        endpoint: endpoint(headers, config, &info.name),
        status: "deployed",
        cold_start_ms: status
            .and_then(|s| s.last_cold_start_ms)
            .map(|ms| ms.round() as u64),
        memory_mb: info.memory_mb,
        timeout_secs: info.timeout_sec,
        max_concurrency: info.scaling.max_instances,
        deployed_at: info.created_at.clone(),
        binary_size_bytes: info.stored_bytes,
    }
}

/// `PUT /api/functions/{id}`: a zip holding an executable `bootstrap`.
async fn deploy(
    State(o): Orch,
    Extension(caller): Who,
    Extension(config): Extension<GatewayConfig>,
    Path(id): Path<String>,
    headers: HeaderMap,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, SpecError> {
    let zip = spec_body(read, &id)?;
    let spec = config_of(&headers).map_err(|e| e.of(&id))?;
    if !zip.starts_with(b"PK\x03\x04") {
        return Err(SpecError::bad(format!(
            "the body must be a zip archive holding an executable {BOOTSTRAP:?} at its root"
        ))
        .of(&id));
    }
    // The spec's name for the function's `scaling.max_instances`.
    let range = faas_common::validate::MAX_INSTANCES_RANGE;
    if spec.max_concurrency.is_some_and(|c| !range.contains(&c)) {
        return Err(SpecError::bad(format!(
            "max_concurrency must be between {} and {}",
            range.start(),
            range.end()
        ))
        .of(&id));
    }
    let def = FunctionDefinition {
        name: id.clone(),
        language: "native".into(),
        handler: BOOTSTRAP.into(),
        code_base64: Some(base64::engine::general_purpose::STANDARD.encode(&zip)),
        memory_mb: Some(spec.memory_mb),
        timeout_sec: Some(spec.timeout_secs),
        env: spec.env_vars,
        scaling: spec.max_concurrency.map(|max| Scaling {
            max_instances: Some(max),
            ..Scaling::default()
        }),
        ..FunctionDefinition::default()
    };
    let info = o
        .create(&caller, def)
        .await
        .map_err(|e| SpecError::from(e).of(&id))?;
    Ok(Json(deployment_info(&headers, &config, &info, None)).into_response())
}

/// `GET /api/functions/{id}`.
async fn deployment(
    State(o): Orch,
    Extension(caller): Who,
    Extension(config): Extension<GatewayConfig>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, SpecError> {
    let not_found = |e: OrchestratorError| SpecError::from(e).of(&id);
    let info = o.get(&caller, &id).await.map_err(not_found)?;
    let status = o.status(&caller, &id).await.map_err(not_found)?;
    Ok(Json(deployment_info(&headers, &config, &info, Some(&status))).into_response())
}

/// `DELETE /api/functions/{id}`.
async fn undeploy(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
) -> Result<Response, SpecError> {
    o.delete(&caller, &id)
        .await
        .map_err(|e| SpecError::from(e).of(&id))?;
    Ok(Json(json!({"function_id": id, "status": "deleted"})).into_response())
}

/// `GET /api/functions/{id}/health`: 503 `unhealthy` when the newest
/// invocation ended with the sandbox or runtime dying (a handler's own error
/// or timeout is the function's answer, not ill health).
async fn health(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
) -> Result<Response, SpecError> {
    let s = o
        .status(&caller, &id)
        .await
        .map_err(|e| SpecError::from(e).of(&id))?;
    let crashed = matches!(s.last_outcome, Some(Outcome::Crash));
    let mut body = json!({
        "function_id": id,
        "status": if crashed { "unhealthy" } else { "healthy" },
        "last_invocation": s.last_invocation,
        "total_invocations": s.invocations,
        "warm_instances": s.warm_instances,
        "busy_instances": s.busy_instances,
    });
    let status = if crashed {
        body["error"] = json!("the newest invocation ended with the function's sandbox crashing");
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}

#[derive(Deserialize)]
struct WarmQuery {
    /// How many instances to have warm; default its `max_concurrency`, or 1.
    instances: Option<usize>,
}

/// `POST /api/functions/{id}/warm`: start instances now, say how many are warm.
async fn warm(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
    Query(q): Query<WarmQuery>,
) -> Result<Response, SpecError> {
    let wanted = match q.instances {
        Some(n) => n,
        None => o
            .get(&caller, &id)
            .await
            .map_err(|e| SpecError::from(e).of(&id))?
            .scaling
            .max_instances
            .map_or(1, |m| m as usize),
    };
    let warmed = o
        .warm(&caller, &id, wanted)
        .await
        .map_err(|e| SpecError::from(e).of(&id))?;
    Ok(
        Json(json!({"function_id": id, "status": "warm", "instances_warmed": warmed}))
            .into_response(),
    )
}

/// `HEAD .../invoke`: 200 when the function exists (the SDK's health check).
async fn reachable(State(o): Orch, Extension(caller): Who, Path(id): Path<String>) -> StatusCode {
    match o.get(&caller, &id).await {
        Ok(_) => StatusCode::OK,
        Err(e) => SpecError::from(e).status,
    }
}

async fn reachable_by_capability(
    state: Orch,
    caller: Who,
    Path((_key, id)): Path<(String, String)>,
) -> StatusCode {
    reachable(state, caller, Path(id)).await
}

async fn invoke_by_capability(
    state: Orch,
    caller: Who,
    Path((_key, id)): Path<(String, String)>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, SpecError> {
    invoke(state, caller, Path(id), read).await
}

/// `POST /api/functions/{id}/invoke` `{job_id, args}`: the bootstrap gets
/// that JSON on stdin; its stdout JSON is the answer. A failed run (handler
/// error, timeout, crash, output not the spec's) is 500 with `success: false`.
async fn invoke(
    State(o): Orch,
    Extension(caller): Who,
    Path(id): Path<String>,
    read: Result<Bytes, BytesRejection>,
) -> Result<Response, SpecError> {
    let raw = spec_body(read, &id)?;
    let req: FaasJobRequest = serde_json::from_slice(&raw)
        .map_err(|e| SpecError::bad(format!("malformed invoke request: {e}")).of(&id))?;
    let input = serde_json::to_vec(&req).map_err(|e| {
        SpecError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            e.to_string(),
        )
    })?;
    let failed = |error: String, ms: u64, request_id: Option<String>, logs: Option<String>| {
        let mut resp = (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(InvokeResponse {
                job_id: req.job_id,
                result: Vec::new(),
                success: false,
                execution_ms: ms,
                error: Some(error),
                request_id: request_id.clone(),
                logs,
            }),
        )
            .into_response();
        if let Some(v) = request_id.and_then(|r| HeaderValue::from_str(&r).ok()) {
            resp.headers_mut().insert(headers::REQUEST_ID, v);
        }
        resp
    };
    let started = std::time::Instant::now();
    let inv = match o.invoke(&caller, &id, input).await {
        Ok(inv) => inv,
        Err(OrchestratorError::Invocation {
            request_id,
            message,
            logs,
            ..
        }) => {
            let ms = started.elapsed().as_millis() as u64;
            return Ok(failed(message, ms, Some(request_id), Some(logs)));
        }
        Err(e) => return Err(SpecError::from(e).of(&id)),
    };
    let ms = inv.duration.as_millis() as u64;
    let out: BootstrapOutput = match serde_json::from_slice(&inv.body) {
        Ok(out) => out,
        Err(e) => {
            return Ok(failed(
                format!("the bootstrap's output is not the spec's JSON: {e}"),
                ms,
                Some(inv.request_id),
                None,
            ))
        }
    };
    if !out.success {
        let error = out
            .error
            .unwrap_or_else(|| "the function reported failure".into());
        return Ok(failed(error, ms, Some(inv.request_id), None));
    }
    let mut resp = Json(InvokeResponse {
        job_id: out.job_id.unwrap_or(req.job_id),
        result: out.result,
        success: true,
        execution_ms: ms,
        error: None,
        request_id: None,
        logs: None,
    })
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&inv.request_id) {
        resp.headers_mut().insert(headers::REQUEST_ID, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_header_defaults_decodes_and_refuses_garbage() {
        let mut h = HeaderMap::new();
        let c = config_of(&h).unwrap();
        assert_eq!((c.memory_mb, c.timeout_secs), (512, 300));
        let json = br#"{"memory_mb":256,"timeout_secs":60,"max_concurrency":4,"env_vars":{"A":"b"},"future":1}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        h.insert(CONFIG_HEADER, b64.parse().unwrap());
        let c = config_of(&h).unwrap();
        assert_eq!((c.memory_mb, c.timeout_secs), (256, 60));
        assert_eq!(c.max_concurrency, Some(4));
        assert_eq!(c.env_vars["A"], "b");
        h.insert(CONFIG_HEADER, "not base64!".parse().unwrap());
        assert!(config_of(&h).unwrap_err().error.contains("base64"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"[1]");
        h.insert(CONFIG_HEADER, b64.parse().unwrap());
        assert!(config_of(&h).unwrap_err().error.contains("JSON"));
    }

    #[test]
    fn endpoint_takes_only_a_plain_host() {
        let config = GatewayConfig::default();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "node.example:8080".parse().unwrap());
        assert_eq!(
            endpoint(&h, &config, "job0"),
            "http://node.example:8080/api/functions/job0/invoke"
        );
        h.insert(header::HOST, "evil/path?x".parse().unwrap());
        assert_eq!(
            endpoint(
                &h,
                &GatewayConfig {
                    tls: true,
                    ..config
                },
                "job0"
            ),
            "https://localhost/api/functions/job0/invoke"
        );
    }

    #[test]
    fn bootstrap_output_needs_bytes() {
        let ok: BootstrapOutput = serde_json::from_str(r#"{"job_id":1,"result":[1,255]}"#).unwrap();
        assert!(ok.success);
        assert_eq!(ok.result, vec![1, 255]);
        assert!(serde_json::from_str::<BootstrapOutput>(r#"{"result":[256]}"#).is_err());
    }
}
