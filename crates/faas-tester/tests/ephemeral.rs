//! Per-function ephemeral storage (`ephemeral_mb`): a `/tmp` of the asked
//! size in every sandbox kind, on disk above 64 MiB, kept across the calls of
//! a warm instance, never shared between instances, bounded (ENOSPC, a
//! handler error), refused at deploy past the node's limit, and gone with
//! the instance.

use faas_tester::{executor_tests, require, Executor, TestServer};
use serde_json::{json, Value};

executor_tests!(tmp_is_sized_kept_warm_and_bounded);

const TMP: &str = r#"
import os, subprocess, time

def write(path, mb):
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(b"\1" * 1048576)

def handler(event, context):
    op = event["op"]
    if op == "write":
        write("/tmp/f%d" % event["n"], event["mb"])
        return sorted(os.listdir("/tmp"))
    if op == "list":
        time.sleep(event.get("sleep", 0))
        return sorted(os.listdir("/tmp"))
    if op == "df":
        # Size and available 1K blocks, as df prints them.
        line = subprocess.run(["df", "-Pk", "/tmp"], capture_output=True, text=True,
                              check=True).stdout.splitlines()[1].split()
        return {"size_kb": int(line[1]), "avail_kb": int(line[3]),
                "mode": oct(os.stat("/tmp").st_mode & 0o7777)}
    if op == "fill":
        write("/tmp/fill", event["mb"])
        return "filled"
    if op == "rm":
        for name in os.listdir("/tmp"):
            os.remove(os.path.join("/tmp", name))
        return "removed"
    raise ValueError("unknown op " + op)
"#;

/// Loop devices backed by a file under `data`, a canonical path (`losetup -a`).
fn loop_devices_of(data: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .expect("losetup -a");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&*data.to_string_lossy()))
        .map(str::to_string)
        .collect()
}

async fn df(s: &TestServer, name: &str) -> Value {
    s.invoke_json(name, json!({"op": "df"})).await
}

async fn tmp_is_sized_kept_warm_and_bounded(executor: Executor) {
    if !require(executor, "tmp_is_sized_kept_warm_and_bounded") {
        return;
    }
    let s = TestServer::start_with(executor, &["--max-ephemeral-mb", "300"]).await;

    // Past the node's limit, or nothing at all: refused before anything is stored.
    for (mb, says) in [(301, "at most 300"), (0, "at least 1")] {
        let (status, body) = s
            .try_deploy(
                "too-big",
                "python",
                "main.handler",
                &[("main.py", TMP)],
                json!({"ephemeral_mb": mb}),
            )
            .await;
        assert_eq!(status, 400, "ephemeral_mb {mb}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("ephemeral_mb") && error.contains(says),
            "{body}"
        );
    }
    let (status, _) = s.get("/functions/too-big").await;
    assert_eq!(status, 404);

    let info = s
        .deploy(
            "big",
            "python",
            "main.handler",
            &[("main.py", TMP)],
            json!({"ephemeral_mb": 200}),
        )
        .await;
    assert_eq!(info["ephemeral_mb"], 200, "{info}");
    let (_, status) = s.get("/functions/big/status").await;
    assert_eq!(status["ephemeral_mb"], 200, "{status}");

    // 20 MB a call: the fifth call holds 100 MB, past the old 64 MiB tmpfs,
    // and every call sees what the earlier ones of this warm instance wrote.
    for n in 1..=5u64 {
        let files = s
            .invoke_json("big", json!({"op": "write", "n": n, "mb": 20}))
            .await;
        let want: Vec<String> = (1..=n).map(|i| format!("f{i}")).collect();
        assert_eq!(files, json!(want), "call {n}\n{}", s.log());
    }
    let size = df(&s, "big").await;
    let size_kb = size["size_kb"].as_u64().unwrap();
    assert!(
        (190 * 1024..=200 * 1024).contains(&size_kb),
        "df /tmp: {size}"
    );
    assert_eq!(size["mode"], "0o1777", "{size}");
    if !executor.is_vm() {
        // On the host: a loop device of the instance's own disk (beside the
        // code view's).
        let devices = loop_devices_of(s.layout().root());
        let disks = devices.iter().filter(|d| d.contains("/run/ephemeral/"));
        assert_eq!(disks.count(), 1, "{devices:?}");
    }

    // Two calls at once: the warm instance has the files, a new instance
    // (a microVM restored from the saved state among them) an empty /tmp.
    let (a, b) = tokio::join!(
        s.invoke_json("big", json!({"op": "list", "sleep": 2})),
        s.invoke_json("big", json!({"op": "list", "sleep": 2}))
    );
    let mut seen = [a, b];
    seen.sort_by_key(|v| v.as_array().map_or(0, Vec::len));
    assert_eq!(seen[0], json!([]), "another instance shares /tmp: {seen:?}");
    assert_eq!(seen[1].as_array().map(Vec::len), Some(5), "{seen:?}");
    if executor == Executor::Microvm {
        // The second VM was loaded from the first one's saved state (with
        // its saved /tmp disk), not booted.
        assert!(s.log().contains("microVM restored"), "{}", s.log());
    }

    // Bounded: 150 MB into 100 MiB is ENOSPC, the handler's error; the
    // instance and the platform carry on. Deployed with the CLI.
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("main.py");
    std::fs::write(&main, TMP).unwrap();
    let out = s
        .cli(
            &[
                "deploy",
                main.to_str().unwrap(),
                "--name",
                "small",
                "--ephemeral-mb",
                "100",
            ],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("100 MB /tmp"), "{out:?}");
    let out = s.cli(&["status", "small"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("ephemeral storage: 100 MB /tmp"),
        "{out:?}"
    );
    let size = df(&s, "small").await;
    let size_kb = size["size_kb"].as_u64().unwrap();
    assert!(
        (95 * 1024..=100 * 1024).contains(&size_kb),
        "df /tmp: {size}"
    );
    let full = s.invoke("small", br#"{"op": "fill", "mb": 150}"#).await;
    assert_eq!(full.status, 500, "{}", full.text());
    assert!(
        full.text().contains("No space left on device"),
        "{}",
        full.text()
    );
    // The instance is still there (a handler error keeps it), full.
    let left = df(&s, "small").await;
    assert!(left["avail_kb"].as_u64().unwrap() < 1024, "{left}");
    assert_eq!(s.invoke_json("small", json!({"op": "rm"})).await, "removed");
    let (status, health) = s.get("/healthz").await;
    assert_eq!(status, 200, "{health}");

    // Small sizes stay a tmpfs of exactly that size.
    s.deploy(
        "tiny",
        "python",
        "main.handler",
        &[("main.py", TMP)],
        json!({"ephemeral_mb": 32}),
    )
    .await;
    let size = df(&s, "tiny").await;
    assert_eq!(size["size_kb"], 32 * 1024, "df /tmp: {size}");

    let data = s.layout().root().to_path_buf();
    let ephemeral = data.join("run/ephemeral");
    s.stop_and_check_clean().await;
    assert_eq!(loop_devices_of(&data), Vec::<String>::new());
    let files: Vec<_> = std::fs::read_dir(&ephemeral)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "left behind: {files:?}");
}
