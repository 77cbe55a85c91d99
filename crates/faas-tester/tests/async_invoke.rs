//! Asynchronous invocations end to end: durable before the 202, results and
//! logs, retries with backoff then the dead-letter list, callbacks (retried,
//! and refused to private addresses unless the node allows them), and
//! pending work surviving a crash of the server.

use std::time::{Duration, Instant};

use faas_tester::{require, Executor, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ECHO: &str =
    "def handler(event, context):\n    print('working on', event)\n    return {'got': event}\n";
const FAILS: &str = "def handler(event, context):\n    print('about to fail')\n    raise ValueError('always fails')\n";
const SLOW: &str =
    "import time\ndef handler(event, context):\n    time.sleep(1)\n    return {'done': event}\n";

async fn accept(s: &TestServer, name: &str, payload: Value, callback: Option<&str>) -> String {
    let mut req = s
        .http()
        .post(format!("{}/functions/{name}/async-invoke", s.url))
        .json(&payload);
    if let Some(url) = callback {
        req = req.header("X-Callback-Url", url);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "queued");
    let id = v["request_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/functions/{name}/results/{id}"));
    id
}

/// Poll a result until `done` holds.
async fn result_until(
    s: &TestServer,
    name: &str,
    id: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let (code, v) = s.get(&format!("/functions/{name}/results/{id}")).await;
        assert_eq!(code, 200, "{v}");
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < until, "never got there: {v}\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn body_of(v: &Value) -> Value {
    use faas_common::base64::Engine;
    let bytes = faas_common::base64::engine::general_purpose::STANDARD
        .decode(v["body_base64"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_retries_and_dead_letters() {
    if !require(Executor::Native, "results_retries_and_dead_letters") {
        return;
    }
    let s = TestServer::start(Executor::Native).await;
    s.deploy(
        "echo",
        "python",
        "main.handler",
        &[("main.py", ECHO)],
        json!({}),
    )
    .await;
    s.deploy(
        "fails",
        "python",
        "main.handler",
        &[("main.py", FAILS)],
        json!({"max_retries": 2}),
    )
    .await;

    let id = accept(&s, "echo", json!({"n": 1}), None).await;
    let v = result_until(&s, "echo", &id, 60, |v| v["status"] == "succeeded").await;
    assert_eq!(body_of(&v), json!({"got": {"n": 1}}));
    assert_eq!(
        (v["attempts"].as_u64(), v["status_code"].as_u64()),
        (Some(1), Some(200))
    );
    assert!(v["logs"].as_str().unwrap().contains("working on"), "{v}");
    assert!(v["finished_at"].as_str().is_some(), "{v}");
    // The attempt is an ordinary invocation, under the same request id.
    let logs = s.get("/functions/echo/logs").await.1;
    assert!(
        logs["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["request_id"] == id.as_str()),
        "{logs}"
    );

    // Fails every time: 1 + max_retries attempts, 1 s then 2 s apart, then dead.
    let started = Instant::now();
    let id = accept(&s, "fails", json!({}), None).await;
    let v = result_until(&s, "fails", &id, 60, |v| v["attempts"] == 1).await;
    assert_eq!(v["status"], "queued", "waiting for its retry: {v}");
    assert!(v["next_attempt_at"].as_str().is_some(), "{v}");
    let v = result_until(&s, "fails", &id, 60, |v| v["status"] == "dead").await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "backoff 1 s + 2 s: {:?}",
        started.elapsed()
    );
    assert_eq!(v["attempts"], 3);
    assert_eq!(v["status_code"], 500);
    assert!(v["error"].as_str().unwrap().contains("always fails"), "{v}");
    assert!(v["logs"].as_str().unwrap().contains("about to fail"), "{v}");
    let dead = s.get("/functions/fails/dead-letters").await.1;
    let dead = dead["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["request_id"], id.as_str());
    assert!(
        s.get("/functions/echo/dead-letters").await.1["dead_letters"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let metrics = s.metrics().await;
    assert!(metrics.contains("faas_async_retries_total 2"), "{metrics}");
    assert!(
        metrics.contains("faas_async_dead_letters_total 1"),
        "{metrics}"
    );
    // The failed attempts' log lines name their request.
    assert!(s.log().contains(&format!("request_id={id}")), "{}", s.log());

    // Bad requests: a clear error, nothing queued.
    let resp = s
        .http()
        .post(format!("{}/functions/echo/async-invoke", s.url))
        .header("X-Callback-Url", "ftp://example.com/x")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("http or https"));
    assert_eq!(s.get("/functions/echo/results/no-such-id").await.0, 404);
    let resp = s
        .http()
        .post(format!("{}/functions/nosuch/async-invoke", s.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The CLI: --async prints the id, `faas result --wait` the response.
    let out = s
        .cli(
            &["invoke", "echo", "--async", "-d", r#"{"cli": true}"#],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.stdout.trim().to_string();
    let out = s.cli(&["result", "echo", &id, "--wait", "60"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        serde_json::from_str::<Value>(out.stdout.trim()).unwrap(),
        json!({"got": {"cli": true}})
    );
    s.stop_and_check_clean().await;
}

/// A one-route HTTP server on loopback: answers the first `fail_first`
/// requests 500, the rest 200; hands every request's body to the test.
async fn hook(
    fail_first: usize,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, Value)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hook?token=s3cret",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut served = 0;
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = conn.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    let mut body = buf[end + 4..].to_vec();
                    while body.len() < len {
                        let n = conn.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        body.extend_from_slice(&chunk[..n]);
                    }
                    break (head, body);
                }
            };
            served += 1;
            let status = if served <= fail_first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = conn
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            let first = head.lines().next().unwrap_or_default().to_string();
            let _ = tx.send((first, serde_json::from_slice(&body).unwrap_or(Value::Null)));
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_posted_retried_and_fenced() {
    if !require(Executor::Native, "callbacks_are_posted_retried_and_fenced") {
        return;
    }
    let s = TestServer::start_with(Executor::Native, &["--callbacks-allow-private"]).await;
    s.deploy(
        "echo",
        "python",
        "main.handler",
        &[("main.py", ECHO)],
        json!({}),
    )
    .await;
    let (url, mut posted) = hook(1).await;
    let id = accept(&s, "echo", json!({"cb": 1}), Some(&url)).await;
    // The first delivery gets a 500; the retry a second later gets through.
    for attempt in 1..=2 {
        let (line, body) = tokio::time::timeout(Duration::from_secs(30), posted.recv())
            .await
            .expect("a callback")
            .unwrap();
        assert!(line.starts_with("POST /hook?token=s3cret "), "{line}");
        assert_eq!(body["request_id"], id.as_str(), "attempt {attempt}: {body}");
        assert_eq!(body["status"], "succeeded");
        assert_eq!(body_of(&body), json!({"got": {"cb": 1}}));
    }
    let v = result_until(&s, "echo", &id, 30, |v| {
        v["callback"]["state"] == "delivered"
    })
    .await;
    assert_eq!(v["callback"]["attempts"], 2, "{v}");
    s.stop_and_check_clean().await;

    // A node without --callbacks-allow-private never posts to loopback.
    let s = TestServer::start(Executor::Native).await;
    s.deploy(
        "echo",
        "python",
        "main.handler",
        &[("main.py", ECHO)],
        json!({}),
    )
    .await;
    let (url, mut posted) = hook(0).await;
    let id = accept(&s, "echo", json!({}), Some(&url)).await;
    let v = result_until(&s, "echo", &id, 60, |v| v["callback"]["state"] == "failed").await;
    assert!(
        v["callback"]["error"]
            .as_str()
            .unwrap()
            .contains("may not reach"),
        "{v}"
    );
    assert_eq!(v["status"], "succeeded", "the result itself is kept: {v}");
    assert!(
        posted.try_recv().is_err(),
        "nothing reached the loopback hook"
    );
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_work_survives_a_crash_of_the_server() {
    if !require(
        Executor::Native,
        "pending_work_survives_a_crash_of_the_server",
    ) {
        return;
    }
    let mut s = TestServer::start(Executor::Native).await;
    s.deploy(
        "slow",
        "python",
        "main.handler",
        &[("main.py", SLOW)],
        json!({"scaling": {"max_instances": 1}}),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(accept(&s, "slow", json!(n), None).await);
    }
    // Killed while the first runs and the others wait: nothing is lost.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.kill_hard();
    s.restart().await;
    for (n, id) in ids.iter().enumerate() {
        let v = result_until(&s, "slow", id, 90, |v| v["status"] == "succeeded").await;
        assert_eq!(body_of(&v), json!({"done": n}));
    }
    assert!(
        s.log()
            .contains("interrupted by the last stop queued again"),
        "the running one was put back: {}",
        s.log()
    );
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_queue_without_bound() {
    if !require(Executor::Native, "a_tenant_cannot_queue_without_bound") {
        return;
    }
    let s = TestServer::start_with(Executor::Native, &["--max-async-pending", "2"]).await;
    s.deploy(
        "slow",
        "python",
        "main.handler",
        &[("main.py", SLOW)],
        json!({"scaling": {"max_instances": 1}}),
    )
    .await;
    let first = accept(&s, "slow", json!(1), None).await;
    accept(&s, "slow", json!(2), None).await;
    let resp = s
        .http()
        .post(format!("{}/functions/slow/async-invoke", s.url))
        .body("3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("2 asynchronous invocations waiting"));
    // Room again once one is done.
    result_until(&s, "slow", &first, 60, |v| v["status"] == "succeeded").await;
    accept(&s, "slow", json!(4), None).await;
    s.stop_and_check_clean().await;
}
