//! Tenancy through the real router and orchestrator, over a sandbox of fake
//! agents that echo their input (no root needed): keys, scopes, revocation,
//! per-tenant names and 404s on every route, quotas under load, secrets
//! never shown back, the audit trail, and HTTPS with a certificate made here.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use faas_executor::testing::FakeSandbox;
use faas_orchestrator::{Orchestrator, OrchestratorConfig, Sandboxes};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// The Blueprint SDK's job request for job 5 with arguments `hi`.
const JOB5: &[u8] = br#"{"job_id": 5, "args": [104, 105]}"#;

struct Node {
    app: axum::Router,
    admin: String,
    data: tempfile::TempDir,
}

async fn node() -> Node {
    let data = tempfile::tempdir().unwrap();
    let config = OrchestratorConfig {
        data_dir: data.path().to_path_buf(),
        ..OrchestratorConfig::default()
    };
    assert!(config.auth, "authentication is on by default");
    let orchestrator = Orchestrator::new(config, Sandboxes::new(Arc::new(FakeSandbox::default())))
        .await
        .unwrap();
    let admin = orchestrator
        .bootstrap_admin_key()
        .await
        .unwrap()
        .expect("an empty data directory gets an admin key");
    let on_disk = std::fs::read_to_string(data.path().join("admin.key")).unwrap();
    assert_eq!(on_disk.trim(), admin);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.path().join("admin.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        orchestrator.bootstrap_admin_key().await.unwrap(),
        None,
        "the admin key is made once"
    );
    let app = faas_gateway::router(
        Arc::new(orchestrator),
        faas_gateway::GatewayConfig::default(),
    );
    Node { app, admin, data }
}

/// Only the status of [`call`].
async fn status_of(
    app: &axum::Router,
    key: Option<&str>,
    method: &str,
    uri: &str,
    body: &[u8],
) -> StatusCode {
    call(app, key, method, uri, body).await.status
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(
    app: &axum::Router,
    key: Option<&str>,
    method: &str,
    uri: &str,
    body: &[u8],
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_vec())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

async fn make_key(
    node: &Node,
    tenant: &str,
    scopes: &[&str],
    functions: Option<&[&str]>,
) -> (String, String) {
    let mut req = json!({"tenant": tenant, "scopes": scopes});
    if let Some(f) = functions {
        req["functions"] = json!(f);
    }
    let a = call(
        &node.app,
        Some(&node.admin),
        "POST",
        "/admin/keys",
        req.to_string().as_bytes(),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["tenant"], tenant);
    (
        a.body["id"].as_str().unwrap().to_string(),
        a.body["key"].as_str().unwrap().to_string(),
    )
}

fn hello(tenant_note: &str) -> Vec<u8> {
    json!({"name": "hello", "language": "shell", "handler": "run.sh",
           "files": {"run.sh": format!("# {tenant_note}\ncat")}})
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn keys_scopes_and_revocation() {
    let node = node().await;
    let app = &node.app;

    // Only /healthz is public; it says that auth is on.
    let h = call(app, None, "GET", "/healthz", b"").await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.body["auth"], "on", "{}", h.body);
    for (method, uri) in [
        ("GET", "/functions"),
        ("POST", "/functions"),
        ("GET", "/metrics"),
        ("GET", "/jobs"),
        ("POST", "/job/1"),
        ("GET", "/admin/keys"),
        ("POST", "/execute"),
        ("GET", "/no/such/route"),
    ] {
        let a = call(app, None, method, uri, b"{}").await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri}: {}",
            a.body
        );
        assert!(a.body["error"].is_string());
        assert!(a.headers.contains_key("www-authenticate"));
        let bad = call(app, Some("faas_nope_nope"), method, uri, b"{}").await;
        assert_eq!(bad.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }

    // Keys: the secret once, lists without it.
    let (reader_id, reader) = make_key(&node, "acme", &["read"], None).await;
    let (_, deployer) = make_key(&node, "acme", &["deploy", "invoke", "read"], None).await;
    let list = call(app, Some(&node.admin), "GET", "/admin/keys", b"").await;
    assert_eq!(list.status, StatusCode::OK);
    let text = list.body.to_string();
    assert!(!text.contains(&reader) && !text.contains(&deployer) && !text.contains(&node.admin));
    assert!(list.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k.get("key").is_none()));

    // Scopes: 403 inside the own tenant.
    let a = call(app, Some(&reader), "POST", "/functions", &hello("acme")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let a = call(app, Some(&deployer), "POST", "/functions", &hello("acme")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let a = call(app, Some(&reader), "GET", "/functions/hello", b"").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = call(app, Some(&reader), "POST", "/functions/hello/invoke", b"x").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    for (method, uri) in [
        ("GET", "/admin/keys"),
        ("GET", "/admin/audit"),
        ("GET", "/metrics"),
        ("PUT", "/admin/tenants/acme/quota"),
        ("POST", "/admin/rotate-key"),
    ] {
        let a = call(app, Some(&deployer), method, uri, b"{}").await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            a.body
        );
    }

    // A key limited to one function does not see the others.
    let other = json!({"name": "other", "language": "shell", "handler": "run.sh",
                       "files": {"run.sh": "cat"}});
    let a = call(
        app,
        Some(&deployer),
        "POST",
        "/functions",
        other.to_string().as_bytes(),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let (_, narrow) = make_key(&node, "acme", &["invoke", "read"], Some(&["hello"])).await;
    assert_eq!(
        status_of(app, Some(&narrow), "POST", "/functions/hello/invoke", b"x").await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(app, Some(&narrow), "POST", "/functions/other/invoke", b"x").await,
        StatusCode::NOT_FOUND
    );
    let listed = call(app, Some(&narrow), "GET", "/functions", b"").await;
    let names: Vec<&str> = listed.body["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello"]);
    let m = call(app, Some(&node.admin), "GET", "/metrics", b"").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(
        m.body.as_str().unwrap().contains("tenant=\"acme\""),
        "metrics carry the tenant"
    );

    // Revocation takes effect at once.
    let a = call(
        app,
        Some(&node.admin),
        "DELETE",
        &format!("/admin/keys/{reader_id}"),
        b"",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = call(app, Some(&reader), "GET", "/functions/hello", b"").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = call(
        app,
        Some(&node.admin),
        "DELETE",
        &format!("/admin/keys/{reader_id}"),
        b"",
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // Bad key requests are 400s.
    for bad in [
        json!({"tenant": "acme", "scopes": ["root"]}),
        json!({"tenant": "", "scopes": ["read"]}),
        json!({"tenant": "a b", "scopes": ["read"]}),
        json!({"tenant": "acme", "scopes": []}),
    ] {
        let a = call(
            app,
            Some(&node.admin),
            "POST",
            "/admin/keys",
            bad.to_string().as_bytes(),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {}", a.body);
    }
}

#[tokio::test]
async fn tenants_share_names_and_never_see_each_other() {
    let node = node().await;
    let app = &node.app;
    let (_, alice) = make_key(&node, "alice", &["deploy", "invoke", "read"], None).await;
    let (_, bob) = make_key(&node, "bob", &["deploy", "invoke", "read"], None).await;

    let a = call(app, Some(&alice), "POST", "/functions", &hello("alice")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let alice_id = a.body["id"].as_str().unwrap().to_string();
    let b = call(app, Some(&bob), "POST", "/functions", &hello("bob")).await;
    assert_eq!(
        b.status,
        StatusCode::CREATED,
        "two tenants may both have hello: {}",
        b.body
    );
    assert_eq!(
        b.body["version"], 1,
        "bob's hello is not a new version of alice's"
    );
    let bob_id = b.body["id"].as_str().unwrap().to_string();
    assert_ne!(alice_id, bob_id);

    let r = call(
        app,
        Some(&alice),
        "POST",
        "/functions/hello/invoke",
        b"from alice",
    )
    .await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::OK, json!("from alice"))
    );
    let a = call(
        app,
        Some(&alice),
        "PUT",
        "/functions/hello/secrets/TOKEN",
        b"alice-secret-value",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = call(
        app,
        Some(&alice),
        "PUT",
        "/jobs/5",
        json!({"function": "hello"}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // Every route that names alice's function, by name or id, is a 404 to
    // bob: the same answer as a function that does not exist.
    for target in [alice_id.as_str(), "nosuch"] {
        for (method, uri, body) in [
            ("GET", format!("/functions/{target}"), &b""[..]),
            ("GET", format!("/functions/{target}/status"), b""),
            ("GET", format!("/functions/{target}/build"), b""),
            ("GET", format!("/functions/{target}/logs"), b""),
            ("POST", format!("/functions/{target}/invoke"), b"x"),
            ("GET", format!("/functions/{target}/secrets"), b""),
            ("PUT", format!("/functions/{target}/secrets/TOKEN"), b"v"),
            ("DELETE", format!("/functions/{target}/secrets/TOKEN"), b""),
            ("PUT", format!("/functions/{target}/scaling"), b"{}"),
            ("POST", format!("/functions/{target}/async-invoke"), b"x"),
            ("GET", format!("/functions/{target}/results/r-1"), b""),
            ("GET", format!("/functions/{target}/dead-letters"), b""),
            ("GET", format!("/functions/{target}/schedules"), b""),
            (
                "POST",
                format!("/functions/{target}/schedules"),
                br#"{"cron":"* * * * *"}"#,
            ),
            (
                "DELETE",
                format!("/functions/{target}/schedules/sch-1"),
                b"",
            ),
            ("DELETE", format!("/functions/{target}"), b""),
            // The Custom FaaS Platform Spec's routes.
            ("GET", format!("/api/functions/{target}"), b""),
            ("GET", format!("/api/functions/{target}/health"), b""),
            (
                "POST",
                format!("/api/functions/{target}/invoke"),
                br#"{"job_id":0,"args":[]}"#,
            ),
            ("HEAD", format!("/api/functions/{target}/invoke"), b""),
            ("POST", format!("/api/functions/{target}/warm"), b""),
            ("DELETE", format!("/api/functions/{target}"), b""),
        ] {
            let a = call(app, Some(&bob), method, &uri, body).await;
            assert_eq!(
                a.status,
                StatusCode::NOT_FOUND,
                "{method} {uri}: {}",
                a.body
            );
            assert!(!a.body.to_string().contains("alice"), "{}", a.body);
        }
        let bind = json!({"function": target}).to_string();
        let a = call(app, Some(&bob), "PUT", "/jobs/6", bind.as_bytes()).await;
        assert_eq!(
            a.status,
            StatusCode::NOT_FOUND,
            "bind to {target}: {}",
            a.body
        );
    }
    // Job bindings are per tenant: job 5 is alice's, bob has none.
    let jobs = call(app, Some(&bob), "GET", "/jobs", b"").await;
    assert_eq!(jobs.body["jobs"], json!([]), "{}", jobs.body);
    let a = call(app, Some(&bob), "POST", "/job/5", JOB5).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    assert_eq!(
        status_of(app, Some(&bob), "HEAD", "/job/5", b"").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(app, None, "HEAD", &format!("/k/{bob}/job/5"), b"").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(app, None, "POST", &format!("/k/{bob}/job/5"), JOB5).await,
        StatusCode::NOT_FOUND
    );
    // ... and reach alice's through her own key, header or capability path.
    assert_eq!(
        status_of(app, Some(&alice), "HEAD", "/job/5", b"").await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(app, None, "HEAD", &format!("/k/{alice}/job/5"), b"").await,
        StatusCode::OK
    );
    let a = call(app, None, "POST", &format!("/k/{alice}/job/5"), JOB5).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["result"], json!([104, 105]), "{}", a.body);
    assert_eq!(
        status_of(app, None, "POST", "/k/faas_bad_key/job/5", JOB5).await,
        StatusCode::UNAUTHORIZED
    );

    // Bob's own hello is untouched by all this, and his list holds only it.
    let r = call(
        app,
        Some(&bob),
        "POST",
        "/functions/hello/invoke",
        b"from bob",
    )
    .await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::OK, json!("from bob"))
    );
    let list = call(app, Some(&bob), "GET", "/functions", b"").await;
    let ids: Vec<&str> = list.body["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bob_id.as_str()]);
    // Alice's function, secret and binding survived bob's attempts.
    let s = call(app, Some(&alice), "GET", "/functions/hello/secrets", b"").await;
    assert_eq!(s.body["secrets"], json!(["TOKEN"]));
    let r = call(
        app,
        Some(&alice),
        "POST",
        "/functions/hello/invoke",
        b"still",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // The admin sees its own tenant only on tenant routes as well.
    let a = call(
        app,
        Some(&node.admin),
        "GET",
        &format!("/functions/{alice_id}"),
        b"",
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn secrets_are_write_only_and_sealed_at_rest() {
    let node = node().await;
    let app = &node.app;
    let (_, key) = make_key(&node, "acme", &["deploy", "invoke", "read"], None).await;
    assert_eq!(
        status_of(app, Some(&key), "POST", "/functions", &hello("acme")).await,
        StatusCode::CREATED
    );
    let value = "s3cr3t-value-9f8e7d6c5b4a";
    let a = call(
        app,
        Some(&key),
        "PUT",
        "/functions/hello/secrets/API_TOKEN",
        value.as_bytes(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    for bad in ["1BAD", "A=B", "A-B"] {
        let a = call(
            app,
            Some(&key),
            "PUT",
            &format!("/functions/hello/secrets/{bad}"),
            b"v",
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {}", a.body);
    }
    let a = call(
        app,
        Some(&key),
        "PUT",
        "/functions/hello/secrets/BIG",
        &vec![b'a'; 40 * 1024],
    )
    .await;
    assert!(a.status.is_client_error(), "{}", a.status);

    // (A function's response body is its own: a secret it returns on
    // purpose is not the platform's to hide; its logs are scrubbed, which
    // the end-to-end tests show with real sandboxes.)
    let r = call(app, Some(&key), "POST", "/functions/hello/invoke", b"x").await;
    assert_eq!(r.status, StatusCode::OK);
    let mut answers = vec![r.body.to_string()];
    for uri in [
        "/functions/hello",
        "/functions/hello/secrets",
        "/functions/hello/logs",
        "/functions/hello/status",
        "/functions/hello/build",
        "/functions",
    ] {
        let a = call(app, Some(&key), "GET", uri, b"").await;
        assert_eq!(a.status, StatusCode::OK, "{uri}");
        answers.push(a.body.to_string());
    }
    for uri in ["/admin/audit", "/admin/keys", "/metrics"] {
        answers.push(
            call(app, Some(&node.admin), "GET", uri, b"")
                .await
                .body
                .to_string(),
        );
    }
    for a in &answers {
        assert!(!a.contains(value), "the value leaked: {a}");
    }
    let names = call(app, Some(&key), "GET", "/functions/hello/secrets", b"").await;
    assert_eq!(names.body["secrets"], json!(["API_TOKEN"]));
    assert!(
        answers.iter().any(|a| a.contains("API_TOKEN")),
        "the audit names the secret"
    );

    // Rotation re-seals; the database never holds the value in clear.
    let a = call(app, Some(&node.admin), "POST", "/admin/rotate-key", b"").await;
    assert_eq!(
        (a.status, a.body["resealed"].clone()),
        (StatusCode::OK, json!(1))
    );
    let r = call(
        app,
        Some(&key),
        "POST",
        "/functions/hello/invoke",
        b"after rotation",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_no_file_holds(node.data.path(), value.as_bytes());
    assert_no_file_holds(node.data.path(), key.as_bytes());

    let a = call(
        app,
        Some(&key),
        "DELETE",
        "/functions/hello/secrets/API_TOKEN",
        b"",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let names = call(app, Some(&key), "GET", "/functions/hello/secrets", b"").await;
    assert_eq!(names.body["secrets"], json!([]));
}

/// No file under `dir` but the admin key file holds `needle`.
fn assert_no_file_holds(dir: &std::path::Path, needle: &[u8]) {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() && e.file_name() != "admin.key" {
                let bytes = std::fs::read(e.path()).unwrap();
                seen += 1;
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds it in clear",
                    e.path().display()
                );
            }
        }
    }
    assert!(seen > 0, "the database is under {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_one_tenant_and_spare_the_other() {
    let node = node().await;
    let app = &node.app;
    let (_, busy) = make_key(&node, "busy", &["deploy", "invoke", "read"], None).await;
    let (_, calm) = make_key(&node, "calm", &["deploy", "invoke", "read"], None).await;
    for key in [&busy, &calm] {
        assert_eq!(
            status_of(app, Some(key), "POST", "/functions", &hello("t")).await,
            StatusCode::CREATED
        );
    }
    let quota =
        json!({"invocations_per_sec": 2.0, "burst": 2, "max_functions": 2, "max_storage_mb": 1});
    let a = call(
        app,
        Some(&node.admin),
        "PUT",
        "/admin/tenants/busy/quota",
        quota.to_string().as_bytes(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["invocations_per_sec"], 2.0);
    let a = call(
        app,
        Some(&node.admin),
        "GET",
        "/admin/tenants/busy/quota",
        b"",
    )
    .await;
    assert_eq!(a.body["max_functions"], 2);
    let a = call(
        app,
        Some(&node.admin),
        "PUT",
        "/admin/tenants/busy/quota",
        br#"{"nonsense": 1}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    // Load: both tenants at once, 40 calls each.
    let load = |key: String| {
        let app = app.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut retry_after = BTreeSet::new();
            for _ in 0..40 {
                let a = call(&app, Some(&key), "POST", "/functions/hello/invoke", b"x").await;
                if let Some(v) = a.headers.get("retry-after") {
                    retry_after.insert(v.to_str().unwrap().to_string());
                }
                statuses.push(a.status);
            }
            (statuses, retry_after)
        })
    };
    let (busy_run, calm_run) = tokio::join!(load(busy.clone()), load(calm.clone()));
    let (busy_statuses, busy_retry) = busy_run.unwrap();
    let (calm_statuses, _) = calm_run.unwrap();
    assert!(
        calm_statuses.iter().all(|s| *s == StatusCode::OK),
        "the other tenant is unaffected: {calm_statuses:?}"
    );
    let limited = busy_statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    let served = busy_statuses
        .iter()
        .filter(|s| **s == StatusCode::OK)
        .count();
    assert_eq!(limited + served, 40, "{busy_statuses:?}");
    assert!(
        served >= 2 && limited >= 20,
        "served {served}, limited {limited}"
    );
    assert!(
        !busy_retry.is_empty() && busy_retry.iter().all(|v| v.parse::<u64>().unwrap() >= 1),
        "{busy_retry:?}"
    );

    // Function count: 409; stored bytes: 413.
    let second = json!({"name": "second", "language": "shell", "handler": "run.sh", "files": {"run.sh": "cat"}});
    assert_eq!(
        status_of(
            app,
            Some(&busy),
            "POST",
            "/functions",
            second.to_string().as_bytes()
        )
        .await,
        StatusCode::CREATED
    );
    let third = json!({"name": "third", "language": "shell", "handler": "run.sh", "files": {"run.sh": "cat"}});
    let a = call(
        app,
        Some(&busy),
        "POST",
        "/functions",
        third.to_string().as_bytes(),
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    let big = "#".repeat(600 * 1024);
    for name in ["hello", "second"] {
        let v2 = json!({"name": name, "language": "shell", "handler": "run.sh",
                        "files": {"run.sh": "cat", "pad1": big, "pad2": big}});
        let a = call(
            app,
            Some(&busy),
            "POST",
            "/functions",
            v2.to_string().as_bytes(),
        )
        .await;
        assert_eq!(
            a.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{name}: {}",
            a.body
        );
    }
    // The other tenant deploys as before.
    let a = call(
        app,
        Some(&calm),
        "POST",
        "/functions",
        third.to_string().as_bytes(),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);

    // Lifting the quota lifts the limit.
    let a = call(
        app,
        Some(&node.admin),
        "PUT",
        "/admin/tenants/busy/quota",
        b"{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..10 {
        assert_eq!(
            status_of(app, Some(&busy), "POST", "/functions/hello/invoke", b"x").await,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn the_audit_log_records_who_did_what_and_is_admin_only() {
    let node = node().await;
    let app = &node.app;
    let (key_id, key) = make_key(&node, "acme", &["deploy", "read"], None).await;
    assert_eq!(
        status_of(app, Some(&key), "POST", "/functions", &hello("acme")).await,
        StatusCode::CREATED
    );
    assert_eq!(
        status_of(app, Some(&key), "PUT", "/functions/hello/secrets/K", b"v1").await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(app, Some(&key), "POST", "/functions/hello/invoke", b"x").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status_of(app, Some("faas_aaaa_bbbb"), "GET", "/functions", b"").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(app, Some(&key), "DELETE", "/functions/hello", b"").await,
        StatusCode::OK
    );
    let q = json!({"max_functions": 3}).to_string();
    assert_eq!(
        status_of(
            app,
            Some(&node.admin),
            "PUT",
            "/admin/tenants/acme/quota",
            q.as_bytes()
        )
        .await,
        StatusCode::OK
    );

    let log = call(app, Some(&node.admin), "GET", "/admin/audit?limit=100", b"").await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.body);
    let entries = log.body["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in [
        "key.create",
        "deploy",
        "secret.set",
        "denied",
        "auth.failed",
        "delete",
        "quota.set",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let deploy = entries.iter().find(|e| e["action"] == "deploy").unwrap();
    assert_eq!(deploy["tenant"], "acme");
    assert_eq!(deploy["key_id"], key_id.as_str());
    assert!(deploy["at"].as_str().unwrap().contains('T'));
    let text = log.body.to_string();
    assert!(
        !text.contains(&key) && !text.contains(&node.admin) && !text.contains("v1\""),
        "{text}"
    );
    // Newest first, paged by `before`.
    let page = call(app, Some(&node.admin), "GET", "/admin/audit?limit=2", b"").await;
    assert_eq!(page.body["entries"].as_array().unwrap().len(), 2);
    let next = page.body["next"].as_str().unwrap();
    let older = call(
        app,
        Some(&node.admin),
        "GET",
        &format!("/admin/audit?limit=2&before={next}"),
        b"",
    )
    .await;
    assert!(older.body["entries"][0]["seq"].as_i64() < page.body["entries"][1]["seq"].as_i64());
    assert_eq!(
        status_of(app, Some(&key), "GET", "/admin/audit", b"").await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn https_with_a_certificate_made_here() {
    let node = node().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
    let tls = faas_gateway::serve::tls_acceptor(
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
    )
    .unwrap();
    // The wrong key for the certificate, a missing file: clear errors.
    let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
    std::fs::write(
        dir.path().join("other.pem"),
        other.signing_key.serialize_pem(),
    )
    .unwrap();
    let err = faas_gateway::serve::tls_acceptor(
        &dir.path().join("cert.pem"),
        &dir.path().join("other.pem"),
    )
    .err()
    .unwrap();
    assert!(!err.to_string().is_empty());
    let err = faas_gateway::serve::tls_acceptor(
        &dir.path().join("none.pem"),
        &dir.path().join("key.pem"),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("none.pem"), "{err}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(faas_gateway::serve::serve(
        listener,
        node.app.clone(),
        Some(tls),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let h = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let r = client
        .post(format!("{base}/functions"))
        .bearer_auth(&node.admin)
        .body(hello("tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .post(format!("{base}/functions/hello/invoke"))
        .bearer_auth(&node.admin)
        .body("over tls")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "over tls");
    // The audit log has the peer's address from the TLS connection.
    let log: Value = client
        .get(format!("{base}/admin/audit"))
        .bearer_auth(&node.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deploy = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "deploy")
        .unwrap()
        .clone();
    assert_eq!(deploy["source"], "127.0.0.1", "{deploy}");
    // Plain HTTP to the TLS port, and a client that does not trust the
    // certificate, both fail.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
