//! MicroVM faults through the HTTP API: the VMM killed mid-invocation gives that
//! invocation a clean 5xx, leaves no VM behind, and the next invocation succeeds
//! on a fresh VM; a guest that hangs while idle is found by the heartbeat and
//! replaced before anyone calls it. Runs on QEMU (TCG here) and, when
//! `FAAS_FC_BINARY_PATH` names one, on Firecracker.

use std::time::{Duration, Instant};

use faas_tester::{require, vmm_pids, Executor, TestServer};
use serde_json::json;

const SLOW: &str =
    "import time\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return 'ok'\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_killed_mid_invocation() {
    killed_vmm_mid_invocation(Executor::Microvm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_killed_mid_invocation() {
    killed_vmm_mid_invocation(Executor::Firecracker).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_hung_while_idle() {
    hung_guest_is_replaced(Executor::Microvm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firecracker_hung_while_idle() {
    hung_guest_is_replaced(Executor::Firecracker).await
}

async fn killed_vmm_mid_invocation(executor: Executor) {
    if !require(executor, "killed_vmm_mid_invocation") {
        return;
    }
    let s = TestServer::start(executor).await;
    s.deploy("slow", "python", "m.handler", &[("m.py", SLOW)], json!({}))
        .await;
    assert_eq!(s.invoke_json("slow", json!({})).await, json!("ok"));
    let vmms = vmm_pids(s.data_dir());
    assert_eq!(vmms.len(), 1, "one warm VM: {vmms:?}");

    let slow = {
        let url = format!("{}/functions/slow/invoke", s.url);
        let http = s.http();
        tokio::spawn(async move {
            http.post(url)
                .body(r#"{"sleep": 20}"#)
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    // SAFETY: kill(2) of a VMM this test's server started.
    unsafe { libc::kill(vmms[0], libc::SIGKILL) };
    let r = slow.await.unwrap();
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "the dead VMM was noticed promptly, not at the deadline"
    );
    assert_eq!(r.status().as_u16(), 500);
    let v: serde_json::Value = r.json().await.unwrap();
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("VMM exited"), "{v}");
    assert!(v["request_id"].is_string(), "{v}");

    let r = s.invoke("slow", b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.cold_start, "a fresh VM serves the next call");
    let vmms = vmm_pids(s.data_dir());
    assert_eq!(vmms.len(), 1, "the dead VM is gone, one new one: {vmms:?}");
    s.stop_and_check_clean().await;
}

/// SIGSTOP freezes the VMM, as a hung guest would look: the process is there,
/// nothing answers. The heartbeat (every 2 s here, 5 s to answer) replaces it.
async fn hung_guest_is_replaced(executor: Executor) {
    if !require(executor, "hung_guest_is_replaced") {
        return;
    }
    let s = TestServer::start_with(executor, &["--heartbeat-sec", "2"]).await;
    s.deploy("idle", "python", "m.handler", &[("m.py", SLOW)], json!({}))
        .await;
    assert_eq!(s.invoke_json("idle", json!({})).await, json!("ok"));
    let vmms = vmm_pids(s.data_dir());
    assert_eq!(vmms.len(), 1, "one warm VM: {vmms:?}");
    // SAFETY: kill(2) of a VMM this test's server started.
    unsafe { libc::kill(vmms[0], libc::SIGSTOP) };

    let deadline = Instant::now() + Duration::from_secs(30);
    while vmm_pids(s.data_dir()).contains(&vmms[0]) {
        assert!(
            Instant::now() < deadline,
            "the hung VM was not replaced within 30 s:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        s.log().contains("failed its heartbeat"),
        "the server says why:\n{}",
        s.log()
    );
    let (_, st) = s.get("/functions/idle/status").await;
    assert_eq!(st["warm_instances"], 0, "{st}");
    let r = s.invoke("idle", b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.cold_start, "a fresh VM serves the next call");
    s.stop_and_check_clean().await;
}
