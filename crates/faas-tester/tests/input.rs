//! Bad input gets a clear 4xx and registers nothing.

use faas_tester::{b64, executor_tests, require, tar_gz, Executor, TestServer};
use serde_json::json;

executor_tests!(
    bad_deploys_are_refused_and_register_nothing,
    bad_invocations_are_refused
);

const OK_PY: &str = "def handler(event, context):\n    return event\n";

async fn bad_deploys_are_refused_and_register_nothing(executor: Executor) {
    if !require(executor, "bad_deploys_are_refused_and_register_nothing") {
        return;
    }
    let s = TestServer::start(executor).await;
    let code_dir = s.data_dir().join("code");
    let before = std::fs::read_dir(&code_dir).map(|d| d.count()).unwrap_or(0);

    let r = s.post_raw("/functions", b"{not json".to_vec()).await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("malformed JSON"),
        "{v}"
    );

    let tar = |entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]| b64(&tar_gz(entries));
    use tar::EntryType::{Link, Regular, Symlink};
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "unknown language",
            json!({"name": "a", "language": "cobol", "handler": "m.h", "files": {"m.py": OK_PY}}),
            "unknown language",
        ),
        (
            "missing handler",
            json!({"name": "a", "language": "python", "files": {"m.py": OK_PY}}),
            "handler is required",
        ),
        (
            "handler module absent",
            json!({"name": "a", "language": "python", "handler": "nope.handler", "files": {"m.py": OK_PY}}),
            "module not found",
        ),
        (
            "handler function absent",
            json!({"name": "a", "language": "python", "handler": "m.other", "files": {"m.py": OK_PY}}),
            "not defined",
        ),
        (
            "handler malformed",
            json!({"name": "a", "language": "python", "handler": "handler", "files": {"m.py": OK_PY}}),
            "module.function",
        ),
        (
            "shell script absent",
            json!({"name": "a", "language": "shell", "handler": "run.sh", "files": {"other.sh": "echo"}}),
            "not in the code",
        ),
        (
            "empty name",
            json!({"name": "", "language": "python", "handler": "m.handler", "files": {"m.py": OK_PY}}),
            "invalid function name",
        ),
        (
            "name with slash",
            json!({"name": "a/b", "language": "python", "handler": "m.handler", "files": {"m.py": OK_PY}}),
            "invalid function name",
        ),
        (
            "no code",
            json!({"name": "a", "language": "python", "handler": "m.handler"}),
            "required",
        ),
        (
            "bad base64",
            json!({"name": "a", "language": "python", "handler": "m.handler", "code_base64": "%%%"}),
            "base64",
        ),
        (
            "memory too small",
            json!({"name": "a", "language": "python", "handler": "m.handler", "files": {"m.py": OK_PY}, "memory_mb": 1}),
            "memory_mb",
        ),
        (
            "timeout too long",
            json!({"name": "a", "language": "python", "handler": "m.handler", "files": {"m.py": OK_PY}, "timeout_sec": 100000}),
            "timeout_sec",
        ),
        (
            "path traversal in files",
            json!({"name": "a", "language": "python", "handler": "m.handler", "files": {"m.py": OK_PY, "../x.py": "x"}}),
            "escapes",
        ),
        (
            "tar with ..",
            json!({"name": "a", "language": "python", "handler": "m.handler",
            "code_base64": tar(&[("m.py", Regular, OK_PY.as_bytes(), None), ("../../evil.py", Regular, b"x", None)])}),
            "escapes",
        ),
        (
            "tar with absolute path",
            json!({"name": "a", "language": "python", "handler": "m.handler",
            "code_base64": tar(&[("m.py", Regular, OK_PY.as_bytes(), None), ("/etc/cron.d/evil", Regular, b"x", None)])}),
            "absolute",
        ),
        (
            "tar with link out",
            json!({"name": "a", "language": "python", "handler": "m.handler",
            "code_base64": tar(&[("m.py", Regular, OK_PY.as_bytes(), None), ("out", Symlink, b"", Some("../../../etc/shadow"))])}),
            "outside",
        ),
        (
            "tar with absolute link",
            json!({"name": "a", "language": "python", "handler": "m.handler",
            "code_base64": tar(&[("m.py", Regular, OK_PY.as_bytes(), None), ("out", Symlink, b"", Some("/etc/shadow"))])}),
            "absolute",
        ),
        (
            "tar with hard link",
            json!({"name": "a", "language": "python", "handler": "m.handler",
            "code_base64": tar(&[("m.py", Regular, OK_PY.as_bytes(), None), ("h", Link, b"", Some("/etc/shadow"))])}),
            "hard link",
        ),
        (
            "bad env name",
            json!({"name": "a", "language": "python", "handler": "m.handler", "files": {"m.py": OK_PY}, "env": {"A=B": "x"}}),
            "environment",
        ),
        (
            "dependency injection",
            json!({"name": "a", "language": "python", "handler": "m.handler", "files": {"m.py": OK_PY}, "dependencies": ["--index-url=http://evil"]}),
            "not a registry requirement",
        ),
    ];
    for (what, body, expect) in cases {
        let (status, v) = s.post_json("/functions", &body).await;
        assert_eq!(status, 400, "{what}: {v}");
        let err = v["error"].as_str().unwrap_or_default();
        assert!(
            err.contains(expect),
            "{what}: expected {expect:?} in {err:?}"
        );
    }
    // A zip slip too.
    let mut zip = std::io::Cursor::new(Vec::new());
    {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(&mut zip);
        z.start_file("m.py", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(OK_PY.as_bytes()).unwrap();
        z.start_file(
            "../../../tmp/evil.py",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        z.write_all(b"x").unwrap();
        z.finish().unwrap();
    }
    let (status, v) = s
        .post_json("/functions", &json!({"name": "z", "language": "python", "handler": "m.handler", "code_base64": b64(zip.get_ref())}))
        .await;
    assert_eq!(status, 400, "{v}");

    let (_, list) = s.get("/functions").await;
    assert_eq!(list["functions"], json!([]), "nothing may be registered");
    let after = std::fs::read_dir(&code_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(before, after, "nothing may be stored");
    assert!(!std::path::Path::new("/tmp/evil.py").exists());
    s.stop_and_check_clean().await;
}

async fn bad_invocations_are_refused(executor: Executor) {
    if !require(executor, "bad_invocations_are_refused") {
        return;
    }
    let s = TestServer::start_with(executor, &["--max-payload-bytes", "1024"]).await;
    s.deploy("echo", "python", "m.handler", &[("m.py", OK_PY)], json!({}))
        .await;
    let r = s.invoke("missing", b"{}").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("not found"));
    let r = s.invoke("echo", &vec![b'x'; 4096]).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("1024"),
        "{}",
        r.text()
    );
    let r = s.invoke("echo", br#"{"fits": true}"#).await;
    assert_eq!(r.status, 200);
    let (status, v) = s.get("/nowhere").await;
    assert_eq!(status, 404);
    assert!(v["error"].is_string());
    let (status, v) = s.delete("/functions/missing").await;
    assert_eq!(status, 404, "{v}");
    let r = s
        .http()
        .put(format!("{}/functions", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    s.stop_and_check_clean().await;
}
