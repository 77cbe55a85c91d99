//! Pre-started instances (native sandbox): a cold start takes one and
//! specialises it. What it then is must be exactly what a fresh start gives
//! the function (environment, working directory, code, nothing of the host's
//! layout); functions that would differ start fresh; the pool refills in the
//! background and never holds more than configured; and nothing of a spare
//! outlives it, a crash of the server included. `sandbox.rs` proves the
//! sandbox guarantees (uid, namespaces, seccomp, limits) on specialised
//! instances.

use std::path::Path;
use std::time::Duration;

use faas_tester::{require, Executor, TestServer};
use serde_json::{json, Value};

/// Three runtimes (Python, Node.js, shell), one spare each.
const SPARES: u64 = 3;

const PY: &str = r#"
import os, sys

def handler(event, context):
    return {
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "path0": sys.path[:2],
        "mounts": open("/proc/self/mountinfo").read(),
        "function": context.function_name,
        "memory": context.memory_limit_in_mb,
    }
"#;

const NODE: &str = r#"
const helper = require('./lib/helper');
exports.handler = async (event, context) => ({
  env: process.env,
  cwd: process.cwd(),
  helper: helper.name,
  function: context.functionName,
});
"#;

/// Mount points under `dir` in the test's (the host's) mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .map(str::to_string)
        .collect()
}

async fn ready(s: &TestServer) {
    assert!(
        s.wait_for_spares(SPARES, Duration::from_secs(60)).await,
        "the pre-started pool did not fill\n{}",
        s.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specialised_instances_are_what_a_fresh_start_gives() {
    if !require(
        Executor::Native,
        "specialised_instances_are_what_a_fresh_start_gives",
    ) {
        return;
    }
    let s = TestServer::start_with(Executor::Native, &["--prestart", "1"]).await;
    ready(&s).await;
    let data = s.data_dir().canonicalize().unwrap();
    let slots = s.layout().spare_slots("native");
    // One tmpfs of slots per spare, nothing bound in them yet.
    assert_eq!(mounts_under(&slots).len(), SPARES as usize);

    let env = json!({"GREETING": "hello", "API_TOKEN": "t0ken"});
    s.deploy(
        "py",
        "python",
        "main.handler",
        &[("main.py", PY)],
        json!({"env": env, "memory_mb": 96}),
    )
    .await;
    let r = s.invoke("py", b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.cold_start && r.prestarted, "took a spare: {}", r.text());
    let v: Value = r.json();
    let got = v["env"].as_object().unwrap();
    assert_eq!(got["GREETING"], "hello");
    assert_eq!(got["API_TOKEN"], "t0ken");
    assert_eq!(got["FAAS_FUNCTION_NAME"], "py");
    assert_eq!(got["FAAS_MEMORY_MB"], "96");
    assert_eq!(got["HOME"], "/tmp");
    assert_eq!(v["cwd"], "/var/task");
    assert_eq!(v["path0"][0], "/var/task", "{v}");
    assert_eq!(v["function"], "py");
    assert_eq!(v["memory"], 96);
    // Exactly the variables a fresh start sets: the spare had none of its own.
    let fresh_names = [
        "GREETING",
        "API_TOKEN",
        "PATH",
        "HOME",
        "LANG",
        "TMPDIR",
        "FAAS_FUNCTION_NAME",
        "FAAS_FUNCTION_VERSION",
        "FAAS_MEMORY_MB",
        "FAAS_CODE_DIR",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "LC_CTYPE",
    ];
    for name in got.keys() {
        assert!(
            fresh_names.contains(&name.as_str()),
            "unexpected {name}: {v}"
        );
    }
    // The sandbox sees its views and the slots' own tmpfs, no host path.
    let mounts = v["mounts"].as_str().unwrap();
    assert!(
        !mounts.contains(&*data.to_string_lossy()) && !mounts.contains("/spares/"),
        "a host path shows inside:\n{mounts}"
    );
    let task = mounts
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/var/task"))
        .expect("a mount at /var/task");
    let options = task.split_whitespace().nth(5).unwrap();
    for flag in ["ro", "nosuid", "nodev"] {
        assert!(options.split(',').any(|o| o == flag), "{flag}: {task}");
    }

    // The same function with a variable the interpreter reads at its start
    // (TZ) does not fit a spare: it starts fresh, and works.
    s.deploy(
        "py-tz",
        "python",
        "main.handler",
        &[("main.py", PY)],
        json!({"env": {"TZ": "UTC"}}),
    )
    .await;
    ready(&s).await;
    let r = s.invoke("py-tz", b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.cold_start && !r.prestarted, "{}", r.text());
    assert_eq!(r.json()["env"]["TZ"], "UTC");

    // Node.js: its environment, directory and a relative require.
    s.deploy(
        "js",
        "node",
        "index.handler",
        &[
            ("index.js", NODE),
            ("lib/helper.js", "exports.name = 'helper';\n"),
        ],
        json!({"env": {"GREETING": "hi"}}),
    )
    .await;
    let r = s.invoke("js", b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.cold_start && r.prestarted, "{}", r.text());
    let v: Value = r.json();
    assert_eq!(v["env"]["GREETING"], "hi");
    assert_eq!(v["env"]["FAAS_FUNCTION_NAME"], "js");
    assert_eq!(v["cwd"], "/var/task");
    assert_eq!(v["helper"], "helper");
    assert_eq!(v["function"], "js");

    // A native executable takes the shell spare.
    s.deploy(
        "sh",
        "shell",
        "run.sh",
        &[("run.sh", "echo \"$GREETING from $(pwd)\"\n")],
        json!({"env": {"GREETING": "hey"}}),
    )
    .await;
    let r = s.invoke("sh", b"").await;
    assert!(r.cold_start && r.prestarted, "{}", r.text());
    assert_eq!(r.text(), "hey from /var/task\n");

    // A deleted function's instance goes, and its slots with it: what is
    // left under the slots directory is the spares' own tmpfs.
    for name in ["py", "py-tz", "js", "sh"] {
        let (status, _) = s.delete(&format!("/functions/{name}")).await;
        assert_eq!(status, 200);
    }
    ready(&s).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mounts_under(&slots).len() != SPARES as usize && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = mounts_under(&slots);
    assert_eq!(left.len(), SPARES as usize, "{left:?}");
    assert!(
        left.iter()
            .all(|p| Path::new(p).parent() == Some(slots.as_path())),
        "a view is still bound in a slot: {left:?}"
    );
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_refills_within_its_bound_and_survives_a_crash() {
    if !require(
        Executor::Native,
        "the_pool_refills_within_its_bound_and_survives_a_crash",
    ) {
        return;
    }
    let mut s = TestServer::start_with(Executor::Native, &["--prestart", "1"]).await;
    ready(&s).await;
    let slots = s.layout().spare_slots("native");
    let code = "def handler(event, context):\n    return 'ok'\n";
    for i in 0..4 {
        s.deploy(
            &format!("f{i}"),
            "python",
            "m.handler",
            &[("m.py", code)],
            json!({}),
        )
        .await;
    }
    // Four cold starts at once: one takes the spare, the others start
    // fresh; meanwhile the pool never holds more than its one per runtime.
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let url = format!("{}/functions/f{i}/invoke", s.url);
            let http = s.http();
            tokio::spawn(async move { http.post(url).body("{}").send().await })
        })
        .collect();
    let mut most = 0;
    for _ in 0..50 {
        most = most.max(s.spares_ready().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut prestarted = 0;
    for call in calls {
        let r = call.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        prestarted += usize::from(
            r.headers()
                .get("x-faas-prestarted")
                .is_some_and(|v| v == "true"),
        );
    }
    assert!(most <= SPARES, "the pool held {most} spares");
    assert!(prestarted >= 1, "no call took the spare");
    ready(&s).await;
    assert_eq!(s.spares_ready().await, SPARES);
    // Live: four instances of the functions, three spares.
    assert_eq!(s.instances(), 4 + SPARES as usize);

    // A crashed server's spares and slots are swept at the next start, and
    // the new server fills its pool again.
    s.kill_hard();
    s.restart().await;
    ready(&s).await;
    assert_eq!(s.instances(), SPARES as usize);
    assert_eq!(mounts_under(&slots).len(), SPARES as usize);
    let r = s.invoke("f0", b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.prestarted, "{}", r.text());
    s.stop_and_check_clean().await;
}
