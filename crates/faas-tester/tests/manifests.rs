//! Manifests in the code (`requirements.txt`, `package.json` with its lock)
//! install like the `dependencies` list, in builds whose state and output
//! the API and the CLI show. Needs PyPI and the npm registry (reachable from
//! our machines and CI). The installs are what is tested, not the sandbox
//! they are used in (`packages.rs` runs real packages in every kind), so
//! these run on the native sandbox only.

use std::path::Path;
use std::time::{Duration, Instant};

use faas_tester::{require, Executor, TestServer};
use serde_json::{json, Value};

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Layer directories (not the index, not unfinished installs).
fn layers(s: &TestServer) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(s.data_dir().join("deps"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn wait_for_build(s: &TestServer, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (status, b) = s.get(&format!("/functions/{name}/build")).await;
        assert_eq!(status, 200, "{b}");
        if b["state"] != "building" {
            return b;
        }
        assert!(Instant::now() < deadline, "build never ended: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const PY: &str = "import six, idna\n\
def handler(event, context):\n    return {'six': six.__version__, 'idna': idna.__version__}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirements_txt_deploys_with_a_build_to_follow() {
    if !require(
        Executor::Native,
        "requirements_txt_deploys_with_a_build_to_follow",
    ) {
        return;
    }
    let s = TestServer::start(Executor::Native).await;
    let project = tempfile::tempdir().unwrap();
    let dir = project.path().join("reqs");
    std::fs::create_dir(&dir).unwrap();
    write(
        &dir,
        &[
            ("main.py", PY),
            (
                "requirements.txt",
                "# what the function imports\nsix==1.16.0\nidna==3.7  # pinned\n",
            ),
        ],
    );
    let dir_arg = dir.to_str().unwrap();

    // `faas deploy` of a project directory: the language from its manifest,
    // the installer's progress while it waits.
    let out = s
        .cli(&["deploy", dir_arg, "--handler", "main.handler"], None)
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("building reqs"), "{out:?}");
    assert!(
        out.stderr.contains("  | ") && out.stderr.contains("six"),
        "{out:?}"
    );
    assert!(out.stdout.contains("deployed reqs version 1"), "{out:?}");
    assert_eq!(
        s.invoke_json("reqs", json!(null)).await,
        json!({"six": "1.16.0", "idna": "3.7"})
    );
    let out = s.cli(&["logs", "--build", "reqs"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ready, version 1"), "{out:?}");
    assert!(out.stdout.contains("Successfully installed"), "{out:?}");
    let (_, status) = s.get("/functions/reqs/status").await;
    assert_eq!(status["build"]["state"], "ready", "{status}");
    assert!(
        status["build"].get("log").is_none(),
        "status leaves the log out"
    );
    let (_, info) = s.get("/functions/reqs").await;
    assert_eq!(info["dependencies"], json!(["idna==3.7", "six==1.16.0"]));
    assert_eq!(layers(&s).len(), 1);

    // The same manifest again installs nothing and is ready at once (201).
    let files = [
        ("main.py", PY),
        ("requirements.txt", "six==1.16.0\nidna==3.7\n"),
    ];
    let t = Instant::now();
    let (code, v) = s
        .post_json(
            "/functions",
            &json!({"name": "again", "language": "python", "handler": "main.handler",
                    "files": {"main.py": PY, "requirements.txt": "six==1.16.0\nidna==3.7\n"}}),
        )
        .await;
    let took = t.elapsed();
    assert_eq!(code, 201, "{v}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let (_, b) = s.get("/functions/again/build").await;
    assert!(
        b["log"].as_str().unwrap().contains("installed before"),
        "{b}"
    );

    // A different request that resolves to the same packages shares the layer.
    s.deploy(
        "same",
        "python",
        "main.handler",
        &[("main.py", PY)],
        json!({"dependencies": ["six>=1.16,<1.17", "idna==3.7"]}),
    )
    .await;
    assert_eq!(layers(&s).len(), 1, "resolved alike, one layer");
    assert_eq!(
        s.invoke_json("same", json!(null)).await,
        json!({"six": "1.16.0", "idna": "3.7"})
    );

    // The list and the manifest disagreeing is a 400, and nothing changes.
    let (code, v) = s
        .try_deploy(
            "reqs",
            "python",
            "main.handler",
            &files,
            json!({"dependencies": ["six==1.15.0"]}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("conflict"), "{v}");
    // Options in requirements.txt are refused with the line.
    let (code, v) = s
        .try_deploy(
            "reqs",
            "python",
            "main.handler",
            &[
                ("main.py", PY),
                ("requirements.txt", "six\n--index-url http://x/\n"),
            ],
            json!({}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("line 2"), "{v}");

    // Without ?wait: 202 while it installs, then ready; the function is
    // not there to call meanwhile (409), and is afterwards.
    let (code, v) = s
        .post_json(
            "/functions",
            &json!({"name": "later", "language": "python", "handler": "main.handler",
                    "files": {"main.py": PY, "requirements.txt": "six==1.16.0\nidna==3.6\n"}}),
        )
        .await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["state"], "building", "{v}");
    assert_eq!(v["function"], "later");
    let (code, st) = s.get("/functions/later/status").await;
    assert_eq!(code, 200, "{st}");
    if st["build"]["state"] == "building" {
        assert_eq!(st["version"], 0, "{st}");
        let r = s.invoke("later", b"null").await;
        assert!(r.status == 409 || r.status == 200, "{}", r.text());
    }
    let b = wait_for_build(&s, "later").await;
    assert_eq!(b["state"], "ready", "{b}");
    assert_eq!(b["version"], 1, "{b}");
    assert_eq!(
        s.invoke_json("later", json!(null)).await,
        json!({"six": "1.16.0", "idna": "3.6"})
    );
    assert_eq!(layers(&s).len(), 2);

    // A package with no wheel for the image is refused by name; the
    // previous version keeps serving, and its status says what failed.
    std::fs::write(dir.join("requirements.txt"), "six==1.16.0\ndocopt==0.6.2\n").unwrap();
    let out = s
        .cli(&["deploy", dir_arg, "--handler", "main.handler"], None)
        .await;
    assert_ne!(out.code, 0, "{out:?}");
    let last = out.stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("docopt==0.6.2") && last.contains("no wheel"),
        "{out:?}"
    );
    let (_, st) = s.get("/functions/reqs/status").await;
    assert_eq!(st["version"], 1, "{st}");
    assert_eq!(st["build"]["state"], "failed", "{st}");
    assert_eq!(
        s.invoke_json("reqs", json!(null)).await,
        json!({"six": "1.16.0", "idna": "3.7"})
    );
    let out = s.cli(&["status", "reqs"], None).await;
    assert!(out.stdout.contains("build: failed"), "{out:?}");

    // The README's quickstart example: numpy and jinja2 from its requirements.txt.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/stats-python");
    let out = s
        .cli(
            &[
                "deploy",
                example,
                "--name",
                "stats",
                "--handler",
                "main.handler",
            ],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let v = s
        .invoke_json("stats", json!({"values": [1, 2, 3, 4]}))
        .await;
    assert_eq!(v["mean"], 2.5, "{v}");
    assert!(
        v["report"]
            .as_str()
            .unwrap()
            .starts_with("4 values, mean 2.50"),
        "{v}"
    );

    // A first build that fails leaves no function, only its build to read.
    let (code, v) = s
        .try_deploy(
            "nowheel",
            "python",
            "main.handler",
            &[("main.py", PY), ("requirements.txt", "docopt==0.6.2\n")],
            json!({}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(s.get("/functions/nowheel").await.0, 404);
    let (_, b) = s.get("/functions/nowheel/build").await;
    assert_eq!(b["state"], "failed", "{b}");
    assert_eq!(s.delete("/functions/nowheel").await.0, 200);
    assert_eq!(s.get("/functions/nowheel/build").await.0, 404);
    s.stop_and_check_clean().await;
}

const JS: &str = "const isNumber = require('is-number');\n\
exports.handler = (e) => ({ yes: isNumber(e.n), no: isNumber('x') });\n";

const LOCK: &str = r#"{
  "name": "num", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
  "packages": {
    "": {"name": "num", "version": "1.0.0", "dependencies": {"is-number": "^7.0.0"}},
    "node_modules/is-number": {
      "version": "7.0.0",
      "resolved": "https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz",
      "integrity": "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==",
      "engines": {"node": ">=0.12.0"}
    }
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_json_with_its_lock_deploys() {
    if !require(Executor::Native, "package_json_with_its_lock_deploys") {
        return;
    }
    let s = TestServer::start(Executor::Native).await;
    let project = tempfile::tempdir().unwrap();
    let dir = project.path().join("num");
    std::fs::create_dir(&dir).unwrap();
    let package = r#"{"name": "num", "version": "1.0.0",
        "dependencies": {"is-number": "^7.0.0"}, "devDependencies": {"jest": "29"}}"#;
    write(
        &dir,
        &[
            ("index.js", JS),
            ("package.json", package),
            ("package-lock.json", LOCK),
        ],
    );
    let out = s
        .cli(
            &[
                "deploy",
                dir.to_str().unwrap(),
                "--handler",
                "index.handler",
            ],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("deployed num version 1"), "{out:?}");
    assert_eq!(
        s.invoke_json("num", json!({"n": 5})).await,
        json!({"yes": true, "no": false})
    );
    let (_, info) = s.get("/functions/num").await;
    assert_eq!(info["dependencies"], json!(["is-number@^7.0.0"]), "{info}");

    // A lock pointing outside the registry is refused before anything runs.
    let evil = LOCK.replace("https://registry.npmjs.org/", "https://evil.example/");
    let (code, v) = s
        .try_deploy(
            "evil",
            "node",
            "index.handler",
            &[
                ("index.js", JS),
                ("package.json", package),
                ("package-lock.json", &evil),
            ],
            json!({}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("outside the registry"),
        "{v}"
    );

    // A native addon that only an install script could build is refused by
    // name, and the previous version keeps serving.
    let (code, v) = s
        .try_deploy(
            "num",
            "node",
            "index.handler",
            &[
                ("index.js", JS),
                (
                    "package.json",
                    r#"{"dependencies": {"is-number": "^7.0.0", "sleep": "6.3.0"}}"#,
                ),
            ],
            json!({}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("sleep@6.3.0") && error.contains("install scripts never run"),
        "{v}"
    );
    assert_eq!(
        s.invoke_json("num", json!({"n": 1})).await,
        json!({"yes": true, "no": false})
    );
    assert_eq!(s.get("/functions/evil").await.0, 404);
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_cut_short_by_a_crash_fails_and_leaves_nothing() {
    if !require(
        Executor::Native,
        "a_build_cut_short_by_a_crash_fails_and_leaves_nothing",
    ) {
        return;
    }
    let mut s = TestServer::start(Executor::Native).await;
    let (code, v) = s
        .post_json(
            "/functions",
            &json!({"name": "cut", "language": "python", "handler": "main.handler",
                    "files": {"main.py": PY, "requirements.txt": "pandas==2.2.2\n"}}),
        )
        .await;
    assert_eq!(code, 202, "{v}");
    // Killed while pip downloads pandas and numpy (tens of MB) in the build sandbox.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, b) = s.get("/functions/cut/build").await;
    assert_eq!(b["state"], "building", "{b}");
    s.kill_hard();
    s.restart().await;
    let (code, b) = s.get("/functions/cut/build").await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["state"], "failed", "{b}");
    assert!(b["error"].as_str().unwrap().contains("restarted"), "{b}");
    assert_eq!(s.get("/functions/cut").await.0, 404);
    // Deploying again works, and the crash left no install behind.
    s.deploy(
        "cut",
        "python",
        "main.handler",
        &[
            ("main.py", PY),
            ("requirements.txt", "six==1.16.0\nidna==3.5\n"),
        ],
        json!({}),
    )
    .await;
    assert_eq!(
        s.invoke_json("cut", json!(null)).await,
        json!({"six": "1.16.0", "idna": "3.5"})
    );
    assert_eq!(layers(&s).len(), 1, "{:?}", layers(&s));
    s.stop_and_check_clean().await;
}
