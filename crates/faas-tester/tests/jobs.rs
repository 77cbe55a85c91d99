//! Native executables as functions, and the Blueprint SDK's HTTP FaaS protocol:
//! a job id bound to a function receives the raw job arguments.

use faas_tester::{b64, executor_tests, require, tar_gz, Executor, TestServer};
use serde_json::json;

executor_tests!(native_executable_serves_a_bound_job);

/// A real ELF program: reverses its input; exits 3 on "fail".
const PROGRAM: &str = r#"
#include <stdio.h>
#include <string.h>
int main(void) {
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf, stdin);
    if (n == 4 && memcmp(buf, "fail", 4) == 0) { fprintf(stderr, "asked to fail\n"); return 3; }
    fprintf(stderr, "reversing %zu bytes\n", n);
    for (size_t i = 0; i < n; i++) putchar(buf[n - 1 - i]);
    return 0;
}
"#;

fn build_program() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("rev.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let out = dir.path().join("rev");
    // Static, so it depends on nothing in the runtime image.
    let status = std::process::Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed");
    std::fs::read(out).unwrap()
}

async fn native_executable_serves_a_bound_job(executor: Executor) {
    if !require(executor, "native_executable_serves_a_bound_job") {
        return;
    }
    let s = TestServer::start(executor).await;
    let binary = build_program();
    let archive = tar_gz(&[("rev", tar::EntryType::Regular, &binary, None)]);
    // A single native file is stored executable.
    let (status, v) = s
        .post_json("/functions", &json!({"name": "rev", "language": "native", "handler": "rev", "code_base64": b64(&binary)}))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["language"], "native");
    let r = s.invoke("rev", b"abc").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"cba");
    let r = s.invoke("rev", b"fail").await;
    assert_eq!(r.status, 500);
    assert!(
        r.json()["error"].as_str().unwrap().contains("status 3"),
        "{}",
        r.text()
    );
    assert!(
        r.json()["logs"].as_str().unwrap().contains("asked to fail"),
        "{}",
        r.text()
    );
    // The handler of an archive whose tool dropped its mode (tar_gz writes 0644)
    // is made executable on deploy, as the Custom FaaS spec asks of bootstraps.
    let (status, _) = s
        .post_json("/functions", &json!({"name": "noexec", "language": "native", "handler": "rev", "code_base64": b64(&archive)}))
        .await;
    assert_eq!(status, 201);
    let r = s.invoke("noexec", b"xy").await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"yx"[..]),
        "{}",
        r.text()
    );

    // Bind job 7 and speak the SDK's protocol.
    let http = s.http();
    let head = http.head(format!("{}/job/7", s.url)).send().await.unwrap();
    assert_eq!(head.status(), 404, "unbound job");
    let out = s.cli(&["jobs", "bind", "7", "rev"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    let head = http.head(format!("{}/job/7", s.url)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let (status, v) = s
        .post_json("/job/7", &json!({"job_id": 7, "args": [1, 2, 3, 255]}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"result": [255, 3, 2, 1]}));
    let (status, v) = s
        .post_json("/job/7", &json!({"job_id": 8, "args": []}))
        .await;
    assert_eq!(status, 400, "mismatched job id: {v}");
    let (status, v) = s
        .post_json("/job/9", &json!({"job_id": 9, "args": []}))
        .await;
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("job 9"), "{v}");
    let (status, v) = s
        .post_json("/job/7", &json!({"job_id": 7, "args": b"fail".to_vec()}))
        .await;
    assert_eq!(status, 500, "{v}");
    let out = s.cli(&["jobs", "ls", "--json"], None).await;
    let jobs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(jobs[0]["job_id"], 7);
    assert_eq!(jobs[0]["function"], "rev");
    // Deleting the function drops its binding.
    s.delete("/functions/rev").await;
    let (_, list) = s.get("/jobs").await;
    assert_eq!(list["jobs"], json!([]));
    s.stop_and_check_clean().await;
}
