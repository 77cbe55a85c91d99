//! The API's status codes and error bodies, through the real router and
//! orchestrator over a sandbox of fake agents (no root needed).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use faas_executor::testing::FakeSandbox;
use faas_orchestrator::{Orchestrator, OrchestratorConfig, Sandboxes};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

async fn app(data: &std::path::Path) -> axum::Router {
    let config = OrchestratorConfig {
        data_dir: data.to_path_buf(),
        max_payload_bytes: 1024,
        default_timeout_sec: 1,
        // Status codes, not keys: tests/tenancy.rs covers authentication.
        auth: false,
        ..OrchestratorConfig::default()
    };
    let orchestrator = Orchestrator::new(config, Sandboxes::new(Arc::new(FakeSandbox::default())))
        .await
        .unwrap();
    faas_gateway::router(
        Arc::new(orchestrator),
        faas_gateway::GatewayConfig::default(),
    )
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: &[u8]) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_outcome_has_its_status_and_a_json_error() {
    let data = tempfile::tempdir().unwrap();
    let app = app(data.path()).await;
    let deploy = json!({"name": "echo", "language": "shell", "handler": "run.sh",
                        "files": {"run.sh": "cat"}});
    let (status, body) = call(&app, "POST", "/functions", deploy.to_string().as_bytes()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        body.get("code_sha256").is_none(),
        "no host layout in the API"
    );

    let (status, _) = call(&app, "POST", "/functions/echo/invoke", b"hi").await;
    assert_eq!(status, StatusCode::OK);
    for (payload, want) in [
        (&b"fail"[..], StatusCode::INTERNAL_SERVER_ERROR),
        (b"oom", StatusCode::INTERNAL_SERVER_ERROR),
        (b"crash", StatusCode::INTERNAL_SERVER_ERROR),
        (b"hang", StatusCode::GATEWAY_TIMEOUT),
    ] {
        let (status, body) = call(&app, "POST", "/functions/echo/invoke", payload).await;
        assert_eq!(status, want, "{}: {body}", String::from_utf8_lossy(payload));
        assert!(body["error"].is_string(), "{body}");
        assert!(body["request_id"].is_string(), "{body}");
    }
    let (_, logs) = call(&app, "GET", "/functions/echo/logs?limit=10", b"").await;
    let outcomes: Vec<&str> = logs["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["timeout", "crash", "oom", "error", "success"]);

    for (method, uri, body, want) in [
        (
            "POST",
            "/functions/nope/invoke",
            &b"x"[..],
            StatusCode::NOT_FOUND,
        ),
        ("GET", "/functions/nope", b"", StatusCode::NOT_FOUND),
        ("POST", "/functions", b"{not json", StatusCode::BAD_REQUEST),
        (
            "POST",
            "/functions/echo/invoke",
            &[b'x'; 2048],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "GET",
            "/functions/echo/logs?before=abc",
            b"",
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/no/such/route", b"", StatusCode::NOT_FOUND),
        ("PUT", "/functions", b"", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let (status, body) = call(&app, method, uri, body).await;
        assert_eq!(status, want, "{method} {uri}: {body}");
        assert!(body["error"].is_string(), "{method} {uri}: {body}");
    }
    let bad = json!({"name": "x", "language": "python", "handler": "m.h",
                     "files": {"m.py": "h = 1"}, "dependencies": ["git+https://x/y"]});
    let (status, body) = call(&app, "POST", "/functions", bad.to_string().as_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = call(&app, "DELETE", "/functions/echo", b"").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&app, "POST", "/functions/echo/invoke", b"hi").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
