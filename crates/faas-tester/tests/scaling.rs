//! Per-function scaling and backpressure, end to end: provisioned instances
//! after deploy, after a restart and after a crash; a full queue answered with
//! 429 and `Retry-After` at once; a burst of ten times capacity served or
//! turned away, never crashing the node; scaling changed without a redeploy.

use std::time::{Duration, Instant};

use faas_tester::{require, Executor, TestServer};
use serde_json::{json, Value};

const SLEEPY: &str = "import time\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return {'ok': True}\n";

/// Poll the function's status until `done` holds (or panic after `secs`).
async fn status_until(
    s: &TestServer,
    name: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let (code, v) = s.get(&format!("/functions/{name}/status")).await;
        assert_eq!(code, 200, "{v}");
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < until,
            "status never got there: {v}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn warm(v: &Value) -> u64 {
    v["warm_instances"].as_u64().unwrap() + v["busy_instances"].as_u64().unwrap()
}

/// The native instances (runc containers) of this server.
fn containers(s: &TestServer) -> Vec<String> {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(s.layout().runc_state())
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_instances_survive_restart_and_crash() {
    if !require(
        Executor::Native,
        "provisioned_instances_survive_restart_and_crash",
    ) {
        return;
    }
    let mut s = TestServer::start_with(Executor::Native, &["--heartbeat-sec", "1"]).await;
    s.deploy(
        "kept",
        "python",
        "main.handler",
        &[("main.py", SLEEPY)],
        json!({"scaling": {"min_instances": 2, "max_instances": 3, "idle_timeout_sec": 1}}),
    )
    .await;
    let v = status_until(&s, "kept", 30, |v| warm(v) == 2).await;
    assert_eq!(v["effective_scaling"]["min_instances"], 2, "{v}");
    assert_eq!(v["effective_scaling"]["max_instances"], 3, "{v}");
    // Started ahead: the first call is warm.
    let r = s.invoke("kept", b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !r.cold_start,
        "the first call after deploy found a provisioned instance"
    );
    // Idle for longer than idle_timeout_sec: still two (min_instances never expire).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(warm(&s.get("/functions/kept/status").await.1), 2);

    // A crash: the instance is killed; the heartbeat finds it and another starts.
    let before = containers(&s);
    assert_eq!(before.len(), 2, "{before:?}");
    let killed = std::process::Command::new("runc")
        .arg("--root")
        .arg(s.layout().runc_state())
        .args(["kill", &before[0], "KILL"])
        .status()
        .unwrap();
    assert!(killed.success());
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let now = containers(&s);
        if now.len() == 2 && !now.contains(&before[0]) {
            break;
        }
        assert!(Instant::now() < until, "not replaced: {now:?}\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A restart: provisioned again before any call.
    s.restart().await;
    status_until(&s, "kept", 30, |v| warm(v) == 2).await;

    // Lowered without a redeploy: the extra instance goes when idle.
    let out = s
        .cli(
            &[
                "scale",
                "kept",
                "--min-instances",
                "1",
                "--idle-timeout-sec",
                "1",
            ],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = status_until(&s, "kept", 30, |v| warm(v) == 1).await;
    assert_eq!(v["version"], 1, "no redeploy");
    let out = s.cli(&["status", "kept"], None).await;
    assert!(out.stdout.contains("scaling: min 1 max"), "{out:?}");
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_429_and_a_burst_leaves_the_node_serving() {
    if !require(
        Executor::Native,
        "a_full_queue_is_429_and_a_burst_leaves_the_node_serving",
    ) {
        return;
    }
    let s = TestServer::start(Executor::Native).await;
    s.deploy(
        "narrow",
        "python",
        "main.handler",
        &[("main.py", SLEEPY)],
        json!({"scaling": {"max_instances": 2, "max_queue": 2}, "timeout_sec": 30}),
    )
    .await;
    // Warm both instances, so the burst measures queueing, not cold starts.
    let resp = s
        .http()
        .post(format!("{}/api/functions/narrow/warm", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["instances_warmed"], 2);
    let both = burst(&s, 2, 0.0).await;
    assert!(both.iter().all(|(c, _, _)| *c == 200), "{both:?}");
    let rss_before = s.server_rss_kb();

    // Ten times capacity (2 running + 2 queued) at once, each call 1 s long.
    let results = burst(&s, 40, 1.0).await;
    let ok = results.iter().filter(|(c, _, _)| *c == 200).count();
    let busy: Vec<_> = results.iter().filter(|(c, _, _)| *c == 429).collect();
    assert_eq!(ok + busy.len(), 40, "only results and 429s: {results:?}");
    assert!(
        ok >= 4,
        "the running and the queued calls get their results: {results:?}"
    );
    assert!(busy.len() >= 30, "the rest are turned away: {results:?}");
    for (_, retry_after, took) in &busy {
        assert_eq!(retry_after.as_deref(), Some("1"), "429 says when to retry");
        assert!(
            *took < Duration::from_millis(900),
            "refused at once, not after waiting: {took:?}"
        );
    }
    // Served normally right after, and the node's memory stayed bounded.
    let r = s.invoke("narrow", b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = s.get("/functions/narrow/status").await.1;
    assert_eq!(v["queued"], 0, "{v}");
    assert!(warm(&v) <= 2, "never more than max_instances: {v}");
    let metrics = s.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("faas_rejections_total{reason=\"queue_full\"}"))
        .unwrap_or_else(|| panic!("no queue_full rejections in:\n{metrics}"));
    let counted: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(counted as usize, busy.len(), "{line}");
    assert!(metrics.contains("faas_queued_invocations 0"), "{metrics}");
    assert!(
        metrics.contains("faas_instance_start_seconds_count{kind=\"ahead\",from=\"full\"}"),
        "{metrics}"
    );
    let rss_after = s.server_rss_kb();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "server memory grew from {rss_before} to {rss_after} KiB"
    );
    s.stop_and_check_clean().await;
}

/// `n` concurrent invocations of `narrow` sleeping `sleep` seconds each:
/// (status, Retry-After, time to answer).
async fn burst(s: &TestServer, n: usize, sleep: f64) -> Vec<(u16, Option<String>, Duration)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (http, url) = (s.http(), format!("{}/functions/narrow/invoke", s.url));
            tokio::spawn(async move {
                let started = Instant::now();
                let r = http
                    .post(url)
                    .json(&json!({"sleep": sleep}))
                    .send()
                    .await
                    .unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                (r.status().as_u16(), retry, started.elapsed())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
