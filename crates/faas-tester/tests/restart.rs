//! State survives restarts; a crashed server's sandboxes are reaped at the next start.

use faas_tester::{executor_tests, require, Executor, TestServer};
use serde_json::json;

executor_tests!(
    restart_keeps_every_function,
    crash_leftovers_are_reaped,
    delete_stops_instances
);

async fn restart_keeps_every_function(executor: Executor) {
    if !require(executor, "restart_keeps_every_function") {
        return;
    }
    let mut s = TestServer::start(executor).await;
    s.deploy(
        "py",
        "python",
        "m.handler",
        &[("m.py", "def handler(e, c):\n    return 'py'\n")],
        json!({}),
    )
    .await;
    s.deploy(
        "js",
        "node",
        "i.handler",
        &[("i.js", "exports.handler = () => 'js';\n")],
        json!({}),
    )
    .await;
    s.deploy("sh", "shell", "s.sh", &[("s.sh", "printf sh\n")], json!({}))
        .await;
    s.deploy(
        "py",
        "python",
        "m.handler",
        &[("m.py", "def handler(e, c):\n    return 'py2'\n")],
        json!({}),
    )
    .await;
    assert_eq!(s.invoke_json("py", json!(null)).await, json!("py2"));
    s.restart().await;
    let (_, list) = s.get("/functions").await;
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["js", "py", "sh"]);
    assert_eq!(s.invoke_json("py", json!(null)).await, json!("py2"));
    assert_eq!(s.invoke_json("js", json!(null)).await, json!("js"));
    assert_eq!(s.invoke("sh", b"").await.text(), "sh");
    let (_, py) = s.get("/functions/py").await;
    assert_eq!(py["version"], 2);
    let (_, logs) = s.get("/functions/py/logs").await;
    assert_eq!(
        logs["invocations"].as_array().unwrap().len(),
        2,
        "records survive too"
    );
    s.stop_and_check_clean().await;
}

async fn crash_leftovers_are_reaped(executor: Executor) {
    if !require(executor, "crash_leftovers_are_reaped") {
        return;
    }
    let mut s = TestServer::start(executor).await;
    s.deploy(
        "warm",
        "python",
        "m.handler",
        &[("m.py", "def handler(e, c):\n    return 1\n")],
        json!({}),
    )
    .await;
    s.invoke_json("warm", json!(null)).await;
    s.kill_hard();
    assert!(
        !s.leftovers().is_empty(),
        "a SIGKILLed server leaves its warm instance"
    );
    s.restart().await;
    assert!(
        s.leftovers().is_empty(),
        "the next start reaps it: {:?}",
        s.leftovers()
    );
    assert_eq!(s.invoke_json("warm", json!(null)).await, json!(1));
    s.stop_and_check_clean().await;
}

async fn delete_stops_instances(executor: Executor) {
    if !require(executor, "delete_stops_instances") {
        return;
    }
    let s = TestServer::start(executor).await;
    s.deploy(
        "gone",
        "python",
        "m.handler",
        &[("m.py", "def handler(e, c):\n    return 1\n")],
        json!({}),
    )
    .await;
    s.invoke_json("gone", json!(null)).await;
    let (_, st) = s.get("/functions/gone/status").await;
    assert_eq!(st["warm_instances"], 1, "{st}");
    let (status, v) = s.delete("/functions/gone").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["name"], "gone");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s.leftovers().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "instances outlive delete: {:?}",
            s.leftovers()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(s.invoke("gone", b"").await.status, 404);
    s.stop_and_check_clean().await;
}
