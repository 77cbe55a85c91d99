//! The Blueprint SDK's Custom FaaS Platform Spec v1.0 under `/api/functions`,
//! driven with raw HTTP as the spec writes it: every endpoint, every error.

use faas_tester::{client_with, executor_tests, require, Executor, TestServer};
use serde_json::{json, Value};

executor_tests!(spec_bootstrap_runs_in_the_sandbox);

/// A bootstrap in the spec's protocol: `{"job_id","args"}` on stdin, the
/// args back as `result`; special args ask for each way of failing.
const BOOTSTRAP: &str = r#"#!/bin/sh
in=$(cat)
bytes() { printf '%s' "$1" | od -An -tu1 | tr -s ' \n' ',' | sed 's/^,//; s/,$//'; }
case "$in" in
  *'"args":[102,97,105,108]'*) echo '{"success":false,"error":"asked to fail"}' ;;
  *'"args":[101,120,105,116]'*) echo "exiting on request" >&2; exit 3 ;;
  *'"args":[115,108,111,119]'*) sleep 30 ;;
  *'"args":[106,117,110,107]'*) echo 'not json' ;;
  *'"args":[101,110,118]'*) printf '{"result":[%s]}' "$(bytes "$GREETING")" ;;
  *) printf '%s' "$in" | sed 's/"args"/"result"/; s/}$/,"success":true}/' ;;
esac
"#;

/// A zip holding `files`, each with mode 0644: the platform must make
/// `bootstrap` executable itself, as the spec asks.
fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    faas_tester::zip(files)
}

fn config(v: Value) -> String {
    faas_tester::b64(v.to_string().as_bytes())
}

async fn put(s: &TestServer, id: &str, cfg: Option<String>, body: Vec<u8>) -> (u16, Value) {
    let mut req = s
        .http()
        .put(format!("{}/api/functions/{id}", s.url))
        .header("content-type", "application/zip")
        .body(body);
    if let Some(cfg) = cfg {
        req = req.header("X-Blueprint-Config", cfg);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn invoke_with(http: &reqwest::Client, url: &str, id: &str, body: Value) -> (u16, Value) {
    let resp = http
        .post(format!("{url}/api/functions/{id}/invoke"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn invoke(s: &TestServer, id: &str, args: &[u8]) -> (u16, Value) {
    invoke_with(&s.http(), &s.url, id, json!({"job_id": 4, "args": args})).await
}

async fn spec_bootstrap_runs_in_the_sandbox(executor: Executor) {
    if !require(executor, "spec_bootstrap_runs_in_the_sandbox") {
        return;
    }
    let s = TestServer::start(executor).await;
    let cfg = config(json!({"memory_mb": 128, "timeout_secs": 30, "env_vars": {"GREETING": "hi"}}));
    let (status, v) = put(
        &s,
        "job0",
        Some(cfg),
        zip_of(&[("bootstrap", BOOTSTRAP.as_bytes())]),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = invoke(&s, "job0", &[1, 2, 3]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["job_id"], 4);
    assert_eq!(v["result"], json!([1, 2, 3]));
    assert_eq!(v["success"], true);
    let (status, v) = invoke(&s, "job0", b"env").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], json!(b"hi"), "env_vars reach the bootstrap");
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_and_error_of_the_spec() {
    if !require(Executor::Native, "every_endpoint_and_error_of_the_spec") {
        return;
    }
    let s = TestServer::start(Executor::Native).await;
    let zip = zip_of(&[("bootstrap", BOOTSTRAP.as_bytes())]);

    // Deploy, with the config header; the answer is the spec's DeploymentInfo.
    let cfg = config(
        json!({"memory_mb": 128, "timeout_secs": 2, "max_concurrency": 2,
                            "env_vars": {"GREETING": "hello"}}),
    );
    let (status, v) = put(&s, "job0", Some(cfg.clone()), zip.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["function_id"], "job0");
    assert_eq!(v["status"], "deployed");
    assert_eq!(v["memory_mb"], 128);
    assert_eq!(v["timeout_secs"], 2);
    assert_eq!(v["max_concurrency"], 2);
    let host = s.url.trim_start_matches("http://");
    assert_eq!(
        v["endpoint"],
        format!("http://{host}/api/functions/job0/invoke")
    );
    assert!(v["deployed_at"].as_str().unwrap().ends_with('Z'), "{v}");
    assert_eq!(v["binary_size_bytes"], BOOTSTRAP.len());

    // It exists: 409, and the function keeps its version 1.
    let (status, v) = put(&s, "job0", Some(cfg), zip.clone()).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "CONFLICT");
    assert_eq!(v["function_id"], "job0");
    assert!(
        v["error"].as_str().unwrap().contains("already exists"),
        "{v}"
    );
    assert_eq!(s.get("/functions/job0").await.1["version"], 1);

    // Bad deploys: a clear 400 each, and nothing registered.
    let bad: Vec<(Option<String>, Vec<u8>, &str)> = vec![
        (Some("%%%".into()), zip.clone(), "base64"),
        (Some(config(json!(["no"]))), zip.clone(), "JSON"),
        (
            Some(config(json!({"memory_mb": 1}))),
            zip.clone(),
            "memory_mb",
        ),
        (
            Some(config(json!({"timeout_secs": 901}))),
            zip.clone(),
            "timeout_sec",
        ),
        (
            Some(config(json!({"max_concurrency": 0}))),
            zip.clone(),
            "max_concurrency",
        ),
        (None, BOOTSTRAP.as_bytes().to_vec(), "zip"),
        (None, zip_of(&[("main", b"x")]), "bootstrap"),
    ];
    for (cfg, body, says) in bad {
        let (status, v) = put(&s, "broken", cfg, body).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["code"], "INVALID_REQUEST", "{v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{says}: {v}");
        assert_eq!(s.get("/api/functions/broken").await.0, 404);
    }

    // Invoke: the bootstrap's answer, and each way of failing as 500 with
    // `success: false`, `result: []` and `error`.
    let (status, v) = invoke(&s, "job0", &[1, 2, 3]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], json!([1, 2, 3]));
    assert_eq!(v["success"], true);
    assert!(v["execution_ms"].is_u64(), "{v}");
    let (_, v) = invoke(&s, "job0", b"env").await;
    assert_eq!(v["result"], json!(b"hello"));
    for (args, says) in [
        (&b"fail"[..], "asked to fail"),
        (b"exit", "status 3"),
        (b"junk", "not the spec's JSON"),
        (b"slow", "timed out"),
    ] {
        let (status, v) = invoke(&s, "job0", args).await;
        assert_eq!(status, 500, "{v}");
        assert_eq!(v["success"], false);
        assert_eq!(v["result"], json!([]));
        assert_eq!(v["job_id"], 4);
        assert!(v["error"].as_str().unwrap().contains(says), "{says}: {v}");
    }
    let (_, v) = invoke(&s, "job0", b"exit").await;
    assert!(
        v["logs"].as_str().unwrap().contains("exiting on request"),
        "{v}"
    );
    // A malformed request, a function that does not exist.
    let (status, v) =
        invoke_with(&s.http(), &s.url, "job0", json!({"job_id": 1, "args": "x"})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("INVALID_REQUEST")),
        "{v}"
    );
    let (status, v) = invoke(&s, "nope", b"x").await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"], "Function not found");
    assert_eq!(v["function_id"], "nope");

    // Health and deployment info.
    let (status, v) = s.get("/api/functions/job0/health").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["function_id"], "job0");
    assert_eq!(v["total_invocations"], 7);
    assert!(v["last_invocation"].as_str().unwrap().ends_with('Z'), "{v}");
    let (status, v) = s.get("/api/functions/job0").await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["cold_start_ms"].is_u64(),
        "measured at the first start: {v}"
    );
    assert_eq!(v["binary_size_bytes"], BOOTSTRAP.len());
    assert_eq!(s.get("/api/functions/nope/health").await.0, 404);

    // The SDK's health check is a HEAD on the invoke endpoint.
    let head = |id: &str| {
        let (http, url) = (s.http(), format!("{}/api/functions/{id}/invoke", s.url));
        async move { http.head(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(head("job0").await, 200);
    assert_eq!(head("nope").await, 404);

    // Warm: up to its max_concurrency, which also caps what runs at once.
    let resp = s
        .http()
        .post(format!("{}/api/functions/job0/warm", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "warm");
    assert_eq!(v["instances_warmed"], 2, "{v}");
    assert_eq!(s.get("/functions/job0/status").await.1["warm_instances"], 2);
    let resp = s
        .http()
        .post(format!("{}/api/functions/job0/warm?instances=50", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["instances_warmed"], 2);

    // Auth: the spec's bearer header, tenant-scoped like every route.
    let anon = client_with(None);
    let (status, _) = invoke_with(&anon, &s.url, "job0", json!({"job_id": 0, "args": []})).await;
    assert_eq!(status, 401);
    let (status, v) = s
        .post_json(
            "/admin/keys",
            &json!({"tenant": "other", "scopes": ["deploy", "invoke", "read"]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let other_key = v["key"].as_str().unwrap().to_string();
    let other = client_with(Some(&other_key));
    let (status, v) = invoke_with(&other, &s.url, "job0", json!({"job_id": 0, "args": []})).await;
    assert_eq!(status, 404, "another tenant's function does not exist: {v}");
    for req in [
        other.get(format!("{}/api/functions/job0", s.url)),
        other.get(format!("{}/api/functions/job0/health", s.url)),
        other.post(format!("{}/api/functions/job0/warm", s.url)),
        other.delete(format!("{}/api/functions/job0", s.url)),
    ] {
        assert_eq!(req.send().await.unwrap().status(), 404);
    }
    // The same name is free in the other tenant.
    let resp = other
        .put(format!("{}/api/functions/job0", s.url))
        .body(zip.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["memory_mb"].as_u64(), v["timeout_secs"].as_u64()),
        (Some(512), Some(300)),
        "the spec's defaults"
    );

    // A client that cannot send headers: the key in the path.
    let key = s.admin_key.clone().unwrap();
    let (status, v) = invoke_with(
        &anon,
        &format!("{}/k/{key}", s.url),
        "job0",
        json!({"job_id": 9, "args": [7]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["job_id"].as_u64(), v["result"].clone()),
        (Some(9), json!([7]))
    );

    // Undeploy.
    let (status, v) = s.delete("/api/functions/job0").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"function_id": "job0", "status": "deleted"}));
    let (status, v) = s.delete("/api/functions/job0").await;
    assert_eq!((status, v["code"].as_str()), (404, Some("NOT_FOUND")));
    assert_eq!(s.get("/api/functions/job0").await.0, 404);
    assert_eq!(invoke(&s, "job0", b"x").await.0, 404);
    let resp = other
        .delete(format!("{}/api/functions/job0", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the other tenant's own job0");
    s.stop_and_check_clean().await;
}
