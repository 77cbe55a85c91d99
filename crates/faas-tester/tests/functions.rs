//! Deploy and invoke Python, Node.js and shell functions over HTTP and the CLI.

use faas_tester::{b64, executor_tests, require, Executor, TestServer};
use serde_json::{json, Value};

executor_tests!(
    python_takes_and_returns_json,
    node_takes_and_returns_json,
    shell_transforms_stdin,
    new_version_replaces_old,
    execute_runs_a_command_in_an_image,
    metrics_count_invocations,
    cli_deploys_invokes_lists_and_removes,
);

async fn python_takes_and_returns_json(executor: Executor) {
    if !require(executor, "python_takes_and_returns_json") {
        return;
    }
    let s = TestServer::start(executor).await;
    let code = r#"
import os
def handler(event, context):
    print("log line for", event["name"])
    return {"greeting": "hello " + event["name"], "request_id": context.request_id,
            "function": context.function_name, "version": context.function_version,
            "remaining_ok": 0 < context.get_remaining_time_in_millis() <= 30000,
            "env": os.environ.get("GREETING")}
"#;
    s.deploy(
        "greet",
        "python",
        "main.handler",
        &[("main.py", code)],
        json!({"env": {"GREETING": "hi"}}),
    )
    .await;
    let first = s.invoke("greet", br#"{"name": "ada"}"#).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.cold_start, "first invocation must be a cold start");
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    let v = first.json();
    assert_eq!(v["greeting"], "hello ada");
    assert_eq!(v["request_id"].as_str(), first.request_id.as_deref());
    assert_eq!(v["function"], "greet");
    assert_eq!(v["version"], "1");
    assert_eq!(v["remaining_ok"], true);
    assert_eq!(v["env"], "hi");
    assert!(
        !first.text().contains("log line"),
        "prints must not reach the response"
    );

    let second = s.invoke("greet", br#"{"name": "bob"}"#).await;
    assert_eq!(second.status, 200);
    assert!(
        !second.cold_start,
        "second invocation must reuse the warm instance"
    );

    // Raw bytes and an empty body reach the handler as bytes and None.
    s.deploy(
        "kind",
        "python",
        "main.handler",
        &[(
            "main.py",
            "def handler(event):\n    return type(event).__name__\n",
        )],
        json!({}),
    )
    .await;
    assert_eq!(s.invoke("kind", b"not json").await.json(), json!("bytes"));
    assert_eq!(s.invoke("kind", b"").await.json(), json!("NoneType"));

    let (status, logs) = s.get("/functions/greet/logs").await;
    assert_eq!(status, 200);
    let records = logs["invocations"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert!(records[0]["logs"]
        .as_str()
        .unwrap()
        .contains("log line for bob"));
    assert!(records[1]["logs"]
        .as_str()
        .unwrap()
        .contains("log line for ada"));
    assert_eq!(records[1]["cold_start"], true);
    s.stop_and_check_clean().await;
}

async fn node_takes_and_returns_json(executor: Executor) {
    if !require(executor, "node_takes_and_returns_json") {
        return;
    }
    let s = TestServer::start(executor).await;
    let code = r#"
exports.handler = async (event, context) => {
  console.log("adding", event.a, event.b);
  await new Promise((r) => setTimeout(r, 5));
  return { sum: event.a + event.b, requestId: context.requestId, left: context.getRemainingTimeInMillis() > 0 };
};
exports.sync = (event) => ({ upper: String(event.word).toUpperCase() });
"#;
    s.deploy(
        "adder",
        "node",
        "index.handler",
        &[("index.js", code)],
        json!({}),
    )
    .await;
    let r = s.invoke("adder", br#"{"a": 2, "b": 40}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["sum"], 42);
    assert_eq!(v["requestId"].as_str(), r.request_id.as_deref());
    assert_eq!(v["left"], true);
    s.deploy(
        "upper",
        "node",
        "index.sync",
        &[("index.js", code)],
        json!({}),
    )
    .await;
    assert_eq!(
        s.invoke_json("upper", json!({"word": "abc"})).await,
        json!({"upper": "ABC"})
    );
    let (_, logs) = s.get("/functions/adder/logs").await;
    assert!(logs["invocations"][0]["logs"]
        .as_str()
        .unwrap()
        .contains("adding 2 40"));
    s.stop_and_check_clean().await;
}

async fn shell_transforms_stdin(executor: Executor) {
    if !require(executor, "shell_transforms_stdin") {
        return;
    }
    let s = TestServer::start(executor).await;
    let script = "#!/bin/sh\necho \"working on $FAAS_REQUEST_ID\" >&2\ntr 'a-z' 'A-Z' | rev\n";
    s.deploy(
        "shout",
        "shell",
        "handler.sh",
        &[("handler.sh", script)],
        json!({}),
    )
    .await;
    let r = s.invoke("shout", b"hello world\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "DLROW OLLEH\n");
    // A failing script is a 500 with its stderr as logs.
    s.deploy(
        "fails",
        "shell",
        "f.sh",
        &[("f.sh", "echo broken >&2\nexit 3\n")],
        json!({}),
    )
    .await;
    let r = s.invoke("fails", b"").await;
    assert_eq!(r.status, 500);
    let v = r.json();
    assert!(v["error"].as_str().unwrap().contains("status 3"), "{v}");
    assert!(v["logs"].as_str().unwrap().contains("broken"), "{v}");
    assert!(v["request_id"].is_string());
    s.stop_and_check_clean().await;
}

async fn new_version_replaces_old(executor: Executor) {
    if !require(executor, "new_version_replaces_old") {
        return;
    }
    let s = TestServer::start(executor).await;
    let v1 = s
        .deploy(
            "ver",
            "python",
            "m.handler",
            &[("m.py", "def handler(e, c):\n    return 1\n")],
            json!({}),
        )
        .await;
    assert_eq!(s.invoke_json("ver", json!(null)).await, json!(1));
    let v2 = s
        .deploy(
            "ver",
            "python",
            "m.handler",
            &[("m.py", "def handler(e, c):\n    return 2\n")],
            json!({}),
        )
        .await;
    assert_eq!(v1["id"], v2["id"], "a new version keeps the function id");
    assert_eq!(v2["version"], 2);
    assert_eq!(s.invoke_json("ver", json!(null)).await, json!(2));
    assert_eq!(
        s.invoke_json(v2["id"].as_str().unwrap(), json!(null)).await,
        json!(2)
    );
    s.stop_and_check_clean().await;
}

async fn execute_runs_a_command_in_an_image(executor: Executor) {
    if !require(executor, "execute_runs_a_command_in_an_image") {
        return;
    }
    let s = TestServer::start(executor).await;
    let (status, v) = s
        .post_json(
            "/execute",
            &json!({"image": "python", "command": ["python3", "-c", "import sys,os; print(sys.stdin.read().upper() + os.environ['X'])"],
                    "env_vars": ["X=!"], "payload": b64(b"abc")}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["response"], b64(b"ABC!\n"));
    assert_eq!(v["error"], Value::Null);
    let (status, v) = s
        .post_json("/execute", &json!({"image": "shell", "command": ["sh", "-c", "echo oops >&2; exit 4"], "payload": ""}))
        .await;
    assert_eq!(status, 200);
    assert!(v["error"].as_str().unwrap().contains("status 4"), "{v}");
    assert_eq!(v["logs"], "oops\n");
    let (status, v) = s
        .post_json("/execute", &json!({"image": "cobol", "command": ["x"]}))
        .await;
    assert_eq!(status, 400, "{v}");
    s.stop_and_check_clean().await;
}

async fn metrics_count_invocations(executor: Executor) {
    if !require(executor, "metrics_count_invocations") {
        return;
    }
    let s = TestServer::start(executor).await;
    s.deploy(
        "m1",
        "python",
        "m.handler",
        &[("m.py", "def handler(e, c):\n    return e\n")],
        json!({}),
    )
    .await;
    for _ in 0..3 {
        s.invoke_json("m1", json!({"x": 1})).await;
    }
    let text = s.metrics().await;
    assert!(
        text.contains(
            r#"faas_invocations_total{tenant="default",function="m1",outcome="success"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"faas_cold_starts_total{tenant="default",function="m1"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("faas_invocation_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("faas_live_instances 1"), "{text}");
    s.stop_and_check_clean().await;
}

async fn cli_deploys_invokes_lists_and_removes(executor: Executor) {
    if !require(executor, "cli_deploys_invokes_lists_and_removes") {
        return;
    }
    let s = TestServer::start(executor).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lib")).unwrap();
    std::fs::write(
        dir.path().join("lib/util.py"),
        "def twice(x):\n    return x * 2\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("app.py"),
        "from lib.util import twice\ndef handler(event, context):\n    print('twice', event['n'])\n    return {'n': twice(event['n'])}\n",
    )
    .unwrap();
    let path = dir.path().to_str().unwrap();
    let out = s
        .cli(
            &[
                "deploy",
                path,
                "--name",
                "twice",
                "--language",
                "python",
                "--handler",
                "app.handler",
            ],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("deployed twice version 1"), "{out:?}");

    let out = s
        .cli(&["invoke", "twice", "--data", r#"{"n": 21}"#], None)
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        json!({"n": 42})
    );

    let out = s
        .cli(
            &["invoke", "twice", "--data-file", "-", "--json"],
            Some(br#"{"n": 5}"#),
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["response"], json!({"n": 10}));
    assert_eq!(v["cold_start"], false);

    let script = dir.path().join("rev.sh");
    std::fs::write(&script, "rev\n").unwrap();
    let out = s.cli(&["deploy", script.to_str().unwrap()], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = s.cli(&["invoke", "rev", "--data", "abc"], None).await;
    assert_eq!(out.stdout, "cba\n", "{out:?}");

    let out = s.cli(&["ls"], None).await;
    assert!(
        out.stdout.contains("twice") && out.stdout.contains("rev"),
        "{out:?}"
    );
    let out = s.cli(&["ls", "--json"], None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let out = s.cli(&["logs", "twice"], None).await;
    assert!(
        out.stdout.contains("twice 21") && out.stdout.contains("twice 5"),
        "{out:?}"
    );

    // Failures: one line, non-zero exit.
    let out = s.cli(&["invoke", "nope"], None).await;
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    let out = s.cli(&["deploy", "/definitely/not/here.py"], None).await;
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");

    let out = s.cli(&["rm", "twice"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    let (status, _) = s.get("/functions/twice").await;
    assert_eq!(status, 404);
    s.stop_and_check_clean().await;
}
