//! The sandbox's guarantees, proven from inside a function.
//!
//! Every server here keeps pre-started instances, and on the native sandbox
//! (the kind that has them) each test waits until they are ready, so its
//! first cold start takes one: the guarantees are proven for an instance
//! specialised from a pre-started one (its uid, namespaces, seccomp,
//! capabilities, memory and pids limits, read-only code), and again for the
//! fresh starts later calls make.

use std::time::{Duration, Instant};

use faas_tester::{executor_tests, require, Executor, TestServer};
use serde_json::json;

executor_tests!(
    sees_only_its_own_processes_and_no_network,
    cannot_write_outside_tmp_and_is_not_root,
    seccomp_blocks_dangerous_calls,
    memory_hog_dies_at_its_limit,
    fork_bomb_is_capped,
    infinite_loop_ends_at_timeout,
    crashed_runtime_is_replaced,
);

const PROBE: &str = r#"
import ctypes, errno, os, socket

def handler(event, context):
    op = event["op"]
    if op == "pids":
        return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    if op == "user_pids":
        def user(p):
            try:
                return open("/proc/%s/cmdline" % p, "rb").read() != b""
            except OSError:
                return False
        return sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and user(p))
    if op == "connect":
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", event["port"]))
            return "connected"
        except OSError as e:
            return "refused: " + type(e).__name__
    if op == "interfaces":
        return sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])
    if op == "routes":
        return open("/proc/net/route").read().splitlines()[1:]
    if op == "write":
        try:
            with open(event["path"], "w") as f:
                f.write("x")
            return "written"
        except OSError as e:
            return errno.errorcode[e.errno]
    if op == "ids":
        status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
        return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
                "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip()}
    if op == "syscalls":
        libc = ctypes.CDLL(None, use_errno=True)
        out = {}
        def call(name, fn):
            ctypes.set_errno(0)
            rc = fn()
            out[name] = "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()]
        call("unshare_user", lambda: libc.unshare(0x10000000))
        call("ptrace_traceme", lambda: libc.ptrace(0, 0, 0, 0))
        call("keyctl", lambda: libc.syscall(250, 0, -1, 0, 0, 0))
        call("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
        call("bpf", lambda: libc.syscall(321, 0, 0, 0))
        call("getpid", lambda: libc.getpid())
        return out
    raise ValueError("unknown op " + op)
"#;

/// A server with one pre-started instance per runtime, all ready.
async fn start(executor: Executor) -> TestServer {
    let s = TestServer::start_with(executor, &["--prestart", "1"]).await;
    if executor == Executor::Native {
        assert!(
            s.wait_for_spares(3, Duration::from_secs(60)).await,
            "pre-started instances never became ready\n{}",
            s.log()
        );
    }
    s
}

/// The first instance started on a server from [`start`] was a pre-started
/// one, where the sandbox kind has them (failed calls carry no headers:
/// the server's start metric says it).
async fn specialised(s: &TestServer) {
    let metrics = s.metrics().await;
    let prestarted = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "faas_instance_start_seconds_count{kind=\"on_demand\",from=\"prestarted\"} ",
            )
        })
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert_eq!(
        prestarted >= 1,
        s.executor == Executor::Native,
        "pre-started on native only:\n{metrics}"
    );
}

async fn probe(s: &TestServer, event: serde_json::Value) -> serde_json::Value {
    let r = s
        .invoke("probe", &serde_json::to_vec(&event).unwrap())
        .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    if r.cold_start {
        specialised(s).await;
    }
    r.json()
}

async fn sees_only_its_own_processes_and_no_network(executor: Executor) {
    if !require(executor, "sees_only_its_own_processes_and_no_network") {
        return;
    }
    let s = start(executor).await;
    s.deploy(
        "probe",
        "python",
        "probe.handler",
        &[("probe.py", PROBE)],
        json!({}),
    )
    .await;
    // A microVM's own kernel threads are visible in it (they are the guest's,
    // not the host's): count user processes there.
    let op = if executor.is_vm() {
        "user_pids"
    } else {
        "pids"
    };
    let pids = probe(&s, json!({ "op": op })).await;
    let pids = pids.as_array().unwrap();
    // Reaper or init (1), agent, python bootstrap: a handful, and none of the host's.
    assert!(
        pids.len() <= 5,
        "sandbox sees {} processes: {pids:?}",
        pids.len()
    );
    assert_eq!(pids[0], 1, "its own pid namespace starts at 1");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(4), listener.accept())
            .await
            .is_ok()
    });
    let r = probe(&s, json!({"op": "connect", "port": port})).await;
    assert!(r.as_str().unwrap().starts_with("refused"), "{r}");
    assert!(
        !accepted.await.unwrap(),
        "the host listener must never see a connection"
    );
    assert_eq!(probe(&s, json!({"op": "interfaces"})).await, json!(["lo"]));
    assert_eq!(
        probe(&s, json!({"op": "routes"})).await,
        json!([]),
        "no route out"
    );
    s.stop_and_check_clean().await;
}

async fn cannot_write_outside_tmp_and_is_not_root(executor: Executor) {
    if !require(executor, "cannot_write_outside_tmp_and_is_not_root") {
        return;
    }
    let s = start(executor).await;
    s.deploy(
        "probe",
        "python",
        "probe.handler",
        &[("probe.py", PROBE)],
        json!({}),
    )
    .await;
    for path in [
        "/etc/passwd",
        "/root.txt",
        "/var/task/probe.py",
        "/usr/lib/x",
        "/opt/faas/bin/x",
    ] {
        let r = probe(&s, json!({"op": "write", "path": path})).await;
        assert!(r == "EROFS" || r == "EACCES", "writing {path}: {r}");
    }
    assert_eq!(
        probe(&s, json!({"op": "write", "path": "/tmp/ok"})).await,
        "written"
    );
    let ids = probe(&s, json!({"op": "ids"})).await;
    assert_ne!(ids["uid"], 0, "{ids}");
    assert_ne!(ids["euid"], 0, "{ids}");
    assert_eq!(ids["cap_eff"], "0000000000000000", "{ids}");
    assert_eq!(ids["cap_bnd"], "0000000000000000", "{ids}");
    assert_eq!(ids["no_new_privs"], "1", "{ids}");
    assert_eq!(ids["seccomp"], "2", "seccomp filter mode: {ids}");
    s.stop_and_check_clean().await;
}

async fn seccomp_blocks_dangerous_calls(executor: Executor) {
    if !require(executor, "seccomp_blocks_dangerous_calls") {
        return;
    }
    let s = start(executor).await;
    s.deploy(
        "probe",
        "python",
        "probe.handler",
        &[("probe.py", PROBE)],
        json!({}),
    )
    .await;
    let r = probe(&s, json!({"op": "syscalls"})).await;
    // Every kind runs under the platform's allowlist, Docker included.
    for call in ["unshare_user", "keyctl", "mount", "bpf", "ptrace_traceme"] {
        assert_eq!(r[call], "EPERM", "{call}: {r}");
    }
    assert_eq!(r["getpid"], "ok", "ordinary calls still work: {r}");
    s.stop_and_check_clean().await;
}

async fn memory_hog_dies_at_its_limit(executor: Executor) {
    if !require(executor, "memory_hog_dies_at_its_limit") {
        return;
    }
    let s = start(executor).await;
    let code = "def handler(event, context):\n    if event.get('hog'):\n        blocks = []\n        while True:\n            blocks.append(bytearray(8 * 1024 * 1024))\n    return 'fine'\n";
    s.deploy(
        "hog",
        "python",
        "m.handler",
        &[("m.py", code)],
        json!({"memory_mb": 64}),
    )
    .await;
    let r = s.invoke("hog", br#"{"hog": true}"#).await;
    specialised(&s).await;
    assert_eq!(r.status, 500, "{}", r.text());
    let err = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("memory limit of 64 MB"),
        "error must say memory: {err}"
    );
    // The next invocation gets a fresh instance.
    let r = s.invoke("hog", b"{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.cold_start);
    let (_, logs) = s.get("/functions/hog/logs").await;
    assert_eq!(logs["invocations"][1]["outcome"], "oom");
    s.stop_and_check_clean().await;
}

async fn fork_bomb_is_capped(executor: Executor) {
    if !require(executor, "fork_bomb_is_capped") {
        return;
    }
    let s = start(executor).await;
    let bomb = "bomb() { bomb | bomb & }; bomb; sleep 30\n";
    s.deploy(
        "bomb",
        "shell",
        "bomb.sh",
        &[("bomb.sh", bomb)],
        json!({"timeout_sec": 3}),
    )
    .await;
    let started = Instant::now();
    let r = s.invoke("bomb", b"").await;
    specialised(&s).await;
    assert!(
        r.status == 504 || r.status == 500,
        "{} {}",
        r.status,
        r.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // The host is fine and the server still serves.
    s.deploy("ok", "shell", "ok.sh", &[("ok.sh", "echo ok\n")], json!({}))
        .await;
    assert_eq!(s.invoke("ok", b"").await.text(), "ok\n");
    s.stop_and_check_clean().await;
}

async fn infinite_loop_ends_at_timeout(executor: Executor) {
    if !require(executor, "infinite_loop_ends_at_timeout") {
        return;
    }
    let s = start(executor).await;
    let code = "def handler(event, context):\n    while event.get('spin'):\n        pass\n    return 'done'\n";
    s.deploy(
        "spin",
        "python",
        "m.handler",
        &[("m.py", code)],
        json!({"timeout_sec": 2}),
    )
    .await;
    assert!(s.invoke("spin", b"{}").await.cold_start);
    specialised(&s).await;
    let started = Instant::now();
    let r = s.invoke("spin", br#"{"spin": true}"#).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 2s"),
        "{}",
        r.text()
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "took {took:?}"
    );
    let r = s.invoke("spin", b"{}").await;
    assert_eq!(
        r.status,
        200,
        "a fresh instance serves the next call: {}",
        r.text()
    );
    assert!(r.cold_start);
    s.stop_and_check_clean().await;
}

async fn crashed_runtime_is_replaced(executor: Executor) {
    if !require(executor, "crashed_runtime_is_replaced") {
        return;
    }
    let s = start(executor).await;
    let code = "import os\ndef handler(event, context):\n    if event.get('die'):\n        print('about to die', flush=True)\n        os._exit(7)\n    return 'alive'\n";
    s.deploy("crash", "python", "m.handler", &[("m.py", code)], json!({}))
        .await;
    let r = s.invoke("crash", br#"{"die": true}"#).await;
    specialised(&s).await;
    assert_eq!(r.status, 500, "{}", r.text());
    let v = r.json();
    assert!(v["error"].as_str().unwrap().contains("status 7"), "{v}");
    assert!(v["logs"].as_str().unwrap().contains("about to die"), "{v}");
    let r = s.invoke("crash", b"{}").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!("alive"));
    assert!(r.cold_start, "a crashed instance is replaced, not reused");
    // A handler that raises keeps its instance.
    s.deploy(
        "raise",
        "python",
        "m.handler",
        &[("m.py", "def handler(e, c):\n    raise KeyError('boom')\n")],
        json!({}),
    )
    .await;
    let r = s.invoke("raise", b"").await;
    assert_eq!(r.status, 500);
    assert!(
        r.json()["error"].as_str().unwrap().contains("KeyError"),
        "{}",
        r.text()
    );
    assert!(
        r.json()["logs"].as_str().unwrap().contains("Traceback"),
        "{}",
        r.text()
    );
    let r = s.invoke("raise", b"").await;
    assert!(
        !r.cold_start,
        "a raised exception does not cost the instance"
    );
    s.stop_and_check_clean().await;
}
