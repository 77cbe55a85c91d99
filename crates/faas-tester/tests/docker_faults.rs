//! Docker faults, against a private `dockerd` so that stopping it or removing
//! images cannot disturb other tests: a container killed mid-invocation, a
//! missing image, a dead daemon. Each gives that invocation a clear 5xx, leaves
//! no container behind, and the next invocation succeeds on a fresh instance.

use std::time::Duration;

use faas_tester::{docker_cli, require, DockerDaemon, Executor, TestServer};
use serde_json::json;

const SLOW: &str = "import time\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return 'ok'\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_faults_give_clean_errors_and_recover() {
    if !require(
        Executor::Docker,
        "docker_faults_give_clean_errors_and_recover",
    ) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("faas-dockerd-")
        .tempdir()
        .unwrap();
    let mut daemon = DockerDaemon::start(dir.path());
    let s = TestServer::start_on(Executor::Docker, Some(daemon.host.clone()), &[]).await;
    s.deploy("slow", "python", "m.handler", &[("m.py", SLOW)], json!({}))
        .await;
    assert_eq!(s.invoke_json("slow", json!({})).await, json!("ok"));

    // 1. The container is killed mid-invocation.
    let owner = s.docker_owner();
    let slow = {
        let url = format!("{}/functions/slow/invoke", s.url);
        let http = s.http();
        tokio::spawn(async move { http.post(url).body(r#"{"sleep": 5}"#).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ids = faas_tester::docker::containers_of(&daemon.host, &owner);
    assert_eq!(ids.len(), 1, "one warm container: {ids:?}");
    docker_cli(&daemon.host, &["kill", &ids[0]]);
    let r = slow.await.unwrap();
    assert_eq!(r.status().as_u16(), 500);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("crashed"), "{v}");
    let r = s.invoke("slow", b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.cold_start, "a fresh container serves the next call");
    wait_until_only(&daemon.host, &owner, 1).await;

    // 2. The runtime image disappears: a clear 5xx, then it is re-imported.
    s.deploy(
        "slow",
        "python",
        "m.handler",
        &[("m.py", SLOW)],
        json!({"timeout_sec": 20}),
    )
    .await;
    let images = docker_cli(
        &daemon.host,
        &["images", "-q", "--filter", "reference=faas-runtime-python"],
    );
    for image in images.lines() {
        docker_cli(&daemon.host, &["rmi", "-f", image]);
    }
    let r = s.invoke("slow", b"{}").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("missing"), "{}", r.text());
    let r = s.invoke("slow", b"{}").await;
    assert_eq!(r.status, 200, "re-imported for the next call: {}", r.text());

    // 3. The daemon dies: a clear 5xx; once it is back the next call succeeds.
    daemon.stop();
    let r = s.invoke("slow", b"{}").await;
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    assert!(r.json()["error"].is_string(), "{}", r.text());
    let r = s.invoke("slow", b"{}").await;
    assert!(
        r.status >= 500,
        "daemon still down: {} {}",
        r.status,
        r.text()
    );
    assert!(
        r.text().contains("docker"),
        "the error names the daemon: {}",
        r.text()
    );
    daemon.restart();
    let r = s.invoke("slow", b"{}").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    s.stop_and_check_clean().await;

    // 4. A crashed server's containers are removed at its next start.
    let mut s = TestServer::start_on(Executor::Docker, Some(daemon.host.clone()), &[]).await;
    s.deploy("slow", "python", "m.handler", &[("m.py", SLOW)], json!({}))
        .await;
    s.invoke_json("slow", json!({})).await;
    s.kill_hard();
    assert_eq!(
        faas_tester::docker::containers_of(&daemon.host, &s.docker_owner()).len(),
        1
    );
    s.restart().await;
    assert!(s.leftovers().is_empty(), "{:?}", s.leftovers());
    s.stop_and_check_clean().await;
}

async fn wait_until_only(host: &str, owner: &str, n: usize) {
    for _ in 0..100 {
        if faas_tester::docker::containers_of(host, owner).len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "expected {n} container(s) of ours, found {:?}",
        faas_tester::docker::containers_of(host, owner)
    );
}
