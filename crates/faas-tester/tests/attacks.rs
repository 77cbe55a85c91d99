//! What a hostile tenant tries, replayed against every sandbox kind: each
//! attack must fail, the platform must stay healthy, and nothing may be left
//! on the host. `docs/security.md` maps each guarantee to its test here.

use std::io::Write;
use std::time::{Duration, Instant};

use faas_tester::{b64, executor_tests, require, tar_gz, Executor, TestServer};
use serde_json::{json, Value};

executor_tests!(
    hostile_archives_cannot_reach_the_host,
    dependency_specifiers_cannot_fetch_build_or_probe,
    the_sandbox_boundary_holds,
    instances_share_no_host_limits,
    nothing_runs_between_invocations,
    outputs_are_bounded,
    capacity_is_shared_and_delete_is_immediate,
    shutdown_during_a_burst_leaves_nothing,
);

/// One probe function that tries every in-sandbox attack on request.
const PROBE: &str = r#"
import ctypes, errno, json, os, socket, subprocess, sys, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
HELD = []

def name(rc):
    return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

def call(fn, *args):
    ctypes.set_errno(0)
    return name(fn(*args))

def sys_call(nr, *args):
    ctypes.set_errno(0)
    return name(libc.syscall(nr, *[ctypes.c_long(a) for a in args]))

ABI = r'''
import ctypes, mmap, sys
kind = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
if kind == "x32":
    # getpid through the x32 ABI: the x86-64 number with bit 30 set.
    print(libc.syscall(ctypes.c_long(0x40000000 | 39)))
else:
    # getpid through the i386 ABI: mov eax, 20; int 0x80; ret
    code = bytes([0xb8, 20, 0, 0, 0, 0xcd, 0x80, 0xc3])
    buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    print(ctypes.CFUNCTYPE(ctypes.c_int)(addr)())
'''

def abi(kind):
    p = subprocess.run([sys.executable, "-c", ABI, kind], capture_output=True, text=True, timeout=20)
    if p.returncode < 0:
        return "killed by signal %d" % -p.returncode
    out = p.stdout.strip()
    return "returned " + out if out else "failed: " + p.stderr.strip()[-200:]

def handler(event, context):
    op = event["op"]
    if op == "socket_dir":
        out = {}
        for path in ["/run/faas/x", "/run/faas/agent.sock.new"]:
            try:
                with open(path, "wb") as f:
                    f.write(b"x" * 1024 * 1024)
                out[path] = "written"
            except OSError as e:
                out[path] = errno.errorcode[e.errno]
        return out
    if op == "namespaces":
        CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17
        out = {}
        ctypes.set_errno(0)
        rc = libc.syscall(ctypes.c_long(56), ctypes.c_long(CLONE_NEWUSER | CLONE_NEWNET | SIGCHLD),
                          ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
        if rc == 0:
            os._exit(0)
        if rc > 0:
            os.waitpid(rc, 0)
        out["clone_newuser_newnet"] = name(rc)
        out["unshare_newuser_newnet"] = call(libc.unshare, CLONE_NEWUSER | CLONE_NEWNET)
        args = (ctypes.c_uint64 * 11)()
        args[0] = CLONE_NEWUSER
        args[4] = SIGCHLD
        ctypes.set_errno(0)
        rc = libc.syscall(ctypes.c_long(435), ctypes.byref(args), ctypes.c_long(88))
        if rc == 0:
            os._exit(0)
        out["clone3"] = name(rc)
        try:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            out["fork"] = "ok"
        except OSError as e:
            out["fork"] = errno.errorcode[e.errno]
        return out
    if op == "sockets":
        out = {}
        for label, fam, typ, proto in [("vsock", 40, 1, 0), ("packet", 17, 3, 0),
                                       ("netlink_netfilter", 16, 3, 12), ("alg", 38, 5, 0),
                                       ("netlink_route", 16, 3, 0), ("unix", 1, 1, 0),
                                       ("inet", 2, 1, 0), ("inet6", 10, 2, 0)]:
            ctypes.set_errno(0)
            fd = libc.socket(fam, typ, proto)
            out[label] = name(fd)
            if fd >= 0:
                os.close(fd)
        return out
    if op == "syscalls":
        return {
            "ptrace": call(libc.ptrace, 0, 0, 0, 0),
            "io_uring_setup": sys_call(425, 8, 0),
            "keyctl": sys_call(250, 0, -1, 0, 0, 0),
            "bpf": sys_call(321, 0, 0, 0),
            "userfaultfd": sys_call(323, 0),
            "perf_event_open": sys_call(298, 0, 0, -1, -1, 0),
            "mount": call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None),
            "setuid_root": call(libc.setuid, 0),
            "kexec_load": sys_call(246, 0, 0, 0, 0),
            "getpid": call(libc.getpid),
        }
    if op == "abi":
        return {"i386": abi("i386"), "x32": abi("x32")}
    if op == "ids":
        return {"uid": os.getuid(), "uid_map": open("/proc/self/uid_map").read().split()}
    if op == "tmp_fill":
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(200):
                    f.write(b"\0" * 1024 * 1024)
            result = "filled"
        except OSError as e:
            result = errno.errorcode[e.errno]
        os.remove("/tmp/fill")
        return result
    if op == "inotify_exhaust":
        n = 0
        while n < 10000:
            fd = libc.inotify_init()
            if fd < 0:
                break
            HELD.append(fd)
            n += 1
        return {"held": n, "then": errno.errorcode.get(ctypes.get_errno(), "?")}
    if op == "inotify_one":
        fd = libc.inotify_init()
        result = name(fd)
        if fd >= 0:
            os.close(fd)
        return result
    if op == "spawn_spinner":
        p = subprocess.Popen(["sh", "-c", "while :; do :; done"])
        HELD.append(p)
        return p.pid
    if op == "cpu_ticks":
        stat = open("/proc/%d/stat" % event["pid"]).read()
        fields = stat[stat.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])
    if op == "mountinfo":
        return open("/proc/self/mountinfo").read() + open("/proc/1/mountinfo").read()
    if op == "hello":
        return "hello"
    raise ValueError("unknown op " + op)
"#;

async fn probe_server(executor: Executor, extra: &[&str]) -> TestServer {
    let s = TestServer::start_with(executor, extra).await;
    s.deploy(
        "probe",
        "python",
        "probe.handler",
        &[("probe.py", PROBE)],
        // A disk-backed /tmp smaller than the 200 MB `tmp_fill` writes.
        json!({"ephemeral_mb": 100}),
    )
    .await;
    s
}

async fn probe(s: &TestServer, function: &str, event: Value) -> Value {
    s.invoke_json(function, event).await
}

async fn healthy(s: &TestServer) {
    let (status, body) = s.get("/healthz").await;
    assert_eq!(status, 200, "healthz after the attack: {body}");
}

async fn hostile_archives_cannot_reach_the_host(executor: Executor) {
    if !require(executor, "hostile_archives_cannot_reach_the_host") {
        return;
    }
    let s = TestServer::start(executor).await;
    s.deploy(
        "victim",
        "python",
        "main.handler",
        &[(
            "main.py",
            "def handler(event, context):\n    return 'original'\n",
        )],
        json!({}),
    )
    .await;
    // A host directory the attack aims at, outside the data directory.
    let target = tempfile::Builder::new()
        .prefix("faas-attack-")
        .tempdir()
        .unwrap();
    std::fs::write(target.path().join("file"), "untouched").unwrap();
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode()
    };
    let dir_mode = mode(target.path());
    let ups = "../".repeat(20);
    let aim = format!("{ups}{}", target.path().display());
    let victim_code = format!("{ups}{}", s.data_dir().join("code").display());
    let main: &[u8] = b"def handler(e, c):\n    return 'pwned'\n";
    let attempts = [
        // The chain that reached the host: a link resolving to the tree's
        // root, a second link through it, a file written through both.
        tar_gz(&[
            ("a/b/c/", tar::EntryType::Directory, b"", None),
            ("a/b/c/up", tar::EntryType::Symlink, b"", Some("../../..")),
            (
                "a/b/c/out",
                tar::EntryType::Symlink,
                b"",
                Some(&format!("up/{aim}")),
            ),
            ("a/b/c/out/file", tar::EntryType::Regular, b"pwned", None),
            ("main.py", tar::EntryType::Regular, main, None),
        ]),
        // A link straight out, then a file through it.
        tar_gz(&[
            ("out", tar::EntryType::Symlink, b"", Some(&aim)),
            ("out/file", tar::EntryType::Regular, b"pwned", None),
            ("main.py", tar::EntryType::Regular, main, None),
        ]),
        // Another function's code, through a link to the code store.
        tar_gz(&[
            ("code", tar::EntryType::Symlink, b"", Some(&victim_code)),
            ("main.py", tar::EntryType::Regular, main, None),
        ]),
        // Absolute names and `..`.
        tar_gz(&[(
            &format!("{}/file", target.path().display()),
            tar::EntryType::Regular,
            b"pwned",
            None,
        )]),
        tar_gz(&[(
            &format!("{ups}tmp/x"),
            tar::EntryType::Regular,
            b"pwned",
            None,
        )]),
    ];
    for (i, archive) in attempts.iter().enumerate() {
        let (status, body) = s
            .post_json(
                "/functions",
                &json!({"name": "attacker", "language": "python", "handler": "main.handler",
                        "code_base64": b64(archive)}),
            )
            .await;
        assert_eq!(status, 400, "attempt {i}: {body}");
        assert!(body["error"].is_string(), "attempt {i}: {body}");
    }
    assert_eq!(
        std::fs::read_to_string(target.path().join("file")).unwrap(),
        "untouched"
    );
    assert_eq!(mode(target.path()), dir_mode, "host directory mode changed");
    assert_eq!(
        s.invoke("victim", b"{}").await.text(),
        "\"original\"",
        "the victim still runs its own code"
    );

    // Amplification: many links, a bomb; both refused fast, nothing stored.
    let names: Vec<String> = (0..20_000).map(|i| format!("l{i}")).collect();
    let mut entries: Vec<(&str, tar::EntryType, &[u8], Option<&str>)> =
        vec![("main.py", tar::EntryType::Regular, main, None)];
    for n in &names {
        entries.push((n, tar::EntryType::Symlink, b"", Some("main.py")));
    }
    let many_links = tar_gz(&entries);
    let mut bomb = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut bomb);
        z.start_file("main.py", zip::write::SimpleFileOptions::default())
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..250 {
            z.write_all(&zeros).unwrap();
        }
        z.finish().unwrap();
    }
    let bomb = bomb.into_inner();
    assert!(bomb.len() < 2 << 20, "the bomb is small: {}", bomb.len());
    for (what, archive) in [("20,000 links", many_links), ("zip bomb", bomb)] {
        let started = Instant::now();
        let (status, body) = s
            .post_json(
                "/functions",
                &json!({"name": "attacker", "language": "python", "handler": "main.handler",
                        "code_base64": b64(&archive)}),
            )
            .await;
        assert_eq!(status, 413, "{what}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} took {:?}",
            started.elapsed()
        );
    }
    let code_dirs = || {
        std::fs::read_dir(s.data_dir().join("code"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(code_dirs(), 1, "only the victim's tree is stored");
    let (status, _) = s.delete("/functions/victim").await;
    assert_eq!(status, 200);
    assert_eq!(code_dirs(), 0, "a deleted function's code is collected");
    healthy(&s).await;
    s.stop_and_check_clean().await;
}

async fn dependency_specifiers_cannot_fetch_build_or_probe(executor: Executor) {
    if !require(
        executor,
        "dependency_specifiers_cannot_fetch_build_or_probe",
    ) {
        return;
    }
    let s = TestServer::start(executor).await;
    // A listener the installer must never reach.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let reached = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .is_ok()
    });
    let url = format!("http://127.0.0.1:{port}");
    let python = [
        format!("pkg @ {url}/pkg-1.0.tar.gz"),
        format!("pkg@{url}/pkg-1.0.tar.gz"),
        format!("git+{url}/pkg.git"),
        format!("{url}/pkg-1.0-py3-none-any.whl"),
        "./local".into(),
        "/etc/passwd".into(),
        "-e .".into(),
        "--index-url=http://evil".into(),
        "pkg-1.0.tar.gz".into(),
    ];
    let node = [
        format!("{url}/pkg.tgz"),
        format!("pkg@{url}/pkg.tgz"),
        format!("git+{url}/pkg.git"),
        "file:/etc".into(),
        "github:user/repo".into(),
        "user/repo".into(),
        "pkg@npm:other@1".into(),
        "../x".into(),
    ];
    let mut errors = Vec::new();
    for (language, handler, file, specs) in [
        ("python", "m.handler", "m.py", &python[..]),
        ("node", "m.handler", "m.js", &node[..]),
    ] {
        for spec in specs {
            let (status, body) = s
                .try_deploy(
                    "dep-attack",
                    language,
                    handler,
                    &[(file, "handler = 1\nexports.handler = 1\n")],
                    json!({"dependencies": [spec]}),
                )
                .await;
            assert_eq!(status, 400, "{language} {spec}: {body}");
            let error = body["error"].as_str().unwrap().to_string();
            assert!(
                error.contains("not a registry requirement"),
                "{spec}: {error}"
            );
            errors.push((spec.clone(), error));
        }
    }
    // No oracle: the answer for a path is the same whether it exists.
    let (_, exists) = s
        .try_deploy(
            "dep-attack",
            "python",
            "m.handler",
            &[("m.py", "handler = 1")],
            json!({"dependencies": ["/etc/passwd"]}),
        )
        .await;
    let (_, missing) = s
        .try_deploy(
            "dep-attack",
            "python",
            "m.handler",
            &[("m.py", "handler = 1")],
            json!({"dependencies": ["/etc/nonexist"]}),
        )
        .await;
    assert_eq!(
        exists["error"].as_str().unwrap().replace("passwd", "X"),
        missing["error"].as_str().unwrap().replace("nonexist", "X")
    );
    assert!(
        !reached.await.unwrap(),
        "an installer fetched from the attacker's URL"
    );
    let (_, list) = s.get("/functions").await;
    assert_eq!(list["functions"], json!([]), "nothing registered");
    healthy(&s).await;
    s.stop_and_check_clean().await;
}

async fn the_sandbox_boundary_holds(executor: Executor) {
    if !require(executor, "the_sandbox_boundary_holds") {
        return;
    }
    let s = probe_server(executor, &[]).await;

    let written = probe(&s, "probe", json!({"op": "socket_dir"})).await;
    for (path, result) in written.as_object().unwrap() {
        assert_ne!(result, "written", "{path} is writable: {written}");
    }

    let ns = probe(&s, "probe", json!({"op": "namespaces"})).await;
    assert_eq!(ns["clone_newuser_newnet"], "EPERM", "{ns}");
    assert_eq!(ns["unshare_newuser_newnet"], "EPERM", "{ns}");
    assert_eq!(ns["clone3"], "ENOSYS", "{ns}");
    assert_eq!(ns["fork"], "ok", "plain fork still works: {ns}");

    let sockets = probe(&s, "probe", json!({"op": "sockets"})).await;
    for family in ["vsock", "packet", "netlink_netfilter", "alg"] {
        assert_eq!(sockets[family], "EPERM", "{family}: {sockets}");
    }
    for family in ["netlink_route", "unix", "inet", "inet6"] {
        assert_eq!(sockets[family], "ok", "{family}: {sockets}");
    }

    let calls = probe(&s, "probe", json!({"op": "syscalls"})).await;
    for call in [
        "ptrace",
        "io_uring_setup",
        "keyctl",
        "bpf",
        "userfaultfd",
        "perf_event_open",
        "mount",
        "setuid_root",
        "kexec_load",
    ] {
        assert_eq!(calls[call], "EPERM", "{call}: {calls}");
    }
    assert_eq!(calls["getpid"], "ok", "{calls}");

    let abi = probe(&s, "probe", json!({"op": "abi"})).await;
    for kind in ["i386", "x32"] {
        let result = abi[kind].as_str().unwrap();
        let refused = result.starts_with("killed")
            || result.starts_with("failed")
            || result
                .strip_prefix("returned ")
                .is_some_and(|r| r.starts_with('-'));
        assert!(refused, "{kind} system call went through: {abi}");
    }

    let ids = probe(&s, "probe", json!({"op": "ids"})).await;
    let uid = ids["uid"].as_u64().unwrap();
    let map: Vec<u64> = ids["uid_map"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    if executor.is_vm() {
        // A VM's uids are its own kernel's.
        assert_eq!(uid, 1000, "{ids}");
    } else if map[1] == 0 {
        // A host uid of the instance's own range, no one's account.
        assert!(uid >= 1 << 30, "{ids}");
    } else {
        // In a user namespace (an option): uid 1000 there, the range outside.
        assert_eq!(uid, 1000, "{ids}");
        assert!(map[1] >= 1 << 30 && map[2] == 65_536, "{ids}");
    }

    // The host's layout stays hidden: no data directory, no code address.
    let mounts = probe(&s, "probe", json!({"op": "mountinfo"})).await;
    let mounts = mounts.as_str().unwrap();
    let data = s.data_dir().canonicalize().unwrap();
    assert!(
        !mounts.contains(data.to_str().unwrap()),
        "mountinfo shows the data directory:\n{mounts}"
    );
    for tree in std::fs::read_dir(data.join("code")).unwrap().flatten() {
        let sha = tree.file_name().to_string_lossy().into_owned();
        assert!(
            !mounts.contains(&sha),
            "mountinfo shows a code address:\n{mounts}"
        );
    }

    assert_eq!(
        probe(&s, "probe", json!({"op": "tmp_fill"})).await,
        "ENOSPC",
        "/tmp is bounded"
    );
    assert_eq!(probe(&s, "probe", json!({"op": "hello"})).await, "hello");
    healthy(&s).await;
    s.stop_and_check_clean().await;
}

async fn instances_share_no_host_limits(executor: Executor) {
    if !require(executor, "instances_share_no_host_limits") {
        return;
    }
    let s = probe_server(executor, &[]).await;
    s.deploy(
        "other",
        "python",
        "probe.handler",
        &[("probe.py", PROBE)],
        json!({}),
    )
    .await;
    // One function takes every inotify instance its user may have...
    let exhausted = probe(&s, "probe", json!({"op": "inotify_exhaust"})).await;
    assert!(
        exhausted["then"] == "EMFILE" || exhausted["then"] == "ENFILE",
        "{exhausted}"
    );
    // ...and another function, another user, is unaffected.
    assert_eq!(
        probe(&s, "other", json!({"op": "inotify_one"})).await,
        "ok",
        "exhausting one function's inotify instances starved another"
    );
    if !executor.is_vm() {
        let a = probe(&s, "probe", json!({"op": "ids"})).await;
        let b = probe(&s, "other", json!({"op": "ids"})).await;
        assert_ne!(
            (a["uid"].clone(), a["uid_map"].clone()),
            (b["uid"].clone(), b["uid_map"].clone()),
            "two instances share host ids"
        );
    }
    healthy(&s).await;
    s.stop_and_check_clean().await;
}

async fn nothing_runs_between_invocations(executor: Executor) {
    if !require(executor, "nothing_runs_between_invocations") {
        return;
    }
    let s = probe_server(executor, &[]).await;
    let pid = probe(&s, "probe", json!({"op": "spawn_spinner"})).await;
    let before = probe(&s, "probe", json!({"op": "cpu_ticks", "pid": pid}))
        .await
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = probe(&s, "probe", json!({"op": "cpu_ticks", "pid": pid}))
        .await
        .as_u64()
        .unwrap();
    // Running for the 3 s idle gap would be ~300 ticks; frozen, only the
    // moments of the calls themselves count.
    assert!(
        after - before < 60,
        "a process left behind ran while the instance was idle: {before} -> {after} ticks"
    );
    healthy(&s).await;
    s.stop_and_check_clean().await;
}

async fn outputs_are_bounded(executor: Executor) {
    if !require(executor, "outputs_are_bounded") {
        return;
    }
    let s = TestServer::start(executor).await;
    s.deploy(
        "loud",
        "python",
        "loud.handler",
        &[(
            "loud.py",
            "def handler(event, context):\n    \
             if event == 'raise':\n        raise Exception('x' * (20 * 1024 * 1024))\n    \
             if event == 'big':\n        return 'y' * (10 * 1024 * 1024)\n    \
             if event == 'print':\n        print('z' * (5 * 1024 * 1024))\n    \
             return 'quiet'\n",
        )],
        json!({"memory_mb": 256}),
    )
    .await;
    s.deploy(
        "flood",
        "shell",
        "flood.sh",
        &[("flood.sh", "head -c 100000000 /dev/zero\n")],
        json!({}),
    )
    .await;
    let db_size = || {
        ["state.db", "state.db-wal"]
            .iter()
            .map(|f| {
                std::fs::metadata(s.data_dir().join(f))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum::<u64>()
    };
    let db_before = db_size();
    for _ in 0..3 {
        let r = s.invoke("loud", b"\"raise\"").await;
        assert_eq!(r.status, 500, "{}", r.text().len());
        // The error (at most 4 KiB) and the logs (at most 64 KiB).
        assert!(
            r.body.len() < 80 * 1024,
            "error answer of {} bytes",
            r.body.len()
        );
    }
    let r = s.invoke("loud", b"\"big\"").await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("exceeds"), "{}", r.text());
    let r = s.invoke("loud", b"\"print\"").await;
    assert_eq!(r.status, 200);
    let r = s.invoke("flood", b"").await;
    assert_eq!(r.status, 500, "{}", &r.text()[..r.text().len().min(300)]);
    assert!(r.text().contains("exceeds"), "{}", r.text());
    assert_eq!(s.invoke("loud", b"\"hi\"").await.text(), "\"quiet\"");
    let grown = db_size().saturating_sub(db_before);
    assert!(grown < 4 << 20, "state.db grew by {grown} bytes");
    let (status, page) = s.get("/functions/loud/logs?limit=100").await;
    assert_eq!(status, 200);
    let size = page.to_string().len();
    assert!(size < 1 << 20, "one logs answer is {size} bytes");
    for record in page["invocations"].as_array().unwrap() {
        assert!(record["logs"].as_str().unwrap().len() <= 70 * 1024);
        assert!(record["error"].as_str().unwrap_or("").len() <= 5 * 1024);
    }
    let rss_kb = s.server_rss_kb();
    assert!(rss_kb < 300 * 1024, "server RSS {rss_kb} kB");
    healthy(&s).await;
    s.stop_and_check_clean().await;
}

async fn capacity_is_shared_and_delete_is_immediate(executor: Executor) {
    if !require(executor, "capacity_is_shared_and_delete_is_immediate") {
        return;
    }
    let s = TestServer::start_with(
        executor,
        &[
            "--max-instances",
            "4",
            "--max-instances-per-function",
            "2",
            "--memory-budget-mb",
            "1024",
        ],
    )
    .await;
    let (status, body) = s
        .try_deploy(
            "huge",
            "shell",
            "h.sh",
            &[("h.sh", "cat\n")],
            json!({"memory_mb": 2048}),
        )
        .await;
    assert_eq!(status, 400, "more memory than the node has: {body}");
    s.deploy(
        "slow",
        "python",
        "slow.handler",
        &[(
            "slow.py",
            "import time\ndef handler(event, context):\n    time.sleep(3)\n    return 'slow'\n",
        )],
        json!({"timeout_sec": 60}),
    )
    .await;
    s.deploy(
        "fast",
        "shell",
        "fast.sh",
        &[("fast.sh", "echo fast\n")],
        json!({}),
    )
    .await;
    // An instance of the other function is warm (and its image in place).
    assert_eq!(s.invoke("fast", b"").await.status, 200);
    // Six callers of one function: it may have two instances, no more; it
    // cannot take the other function's instance for a third.
    let url = s.url.clone();
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            let http = s.http();
            tokio::spawn(async move {
                http.post(format!("{url}/functions/slow/invoke"))
                    .body("{}")
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, status) = s.get("/functions/slow/status").await;
    let live =
        status["warm_instances"].as_u64().unwrap() + status["busy_instances"].as_u64().unwrap();
    assert!(live <= 2, "slow has {live} instances: {status}");
    // The other function is still served at once.
    let started = Instant::now();
    let r = s.invoke("fast", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fast waited {:?} behind slow",
        started.elapsed()
    );
    for b in burst {
        assert_eq!(b.await.unwrap().unwrap(), 200);
    }
    let instances = s.instances();
    assert_eq!(instances, 3, "two of slow, one of fast");
    // Deleting a function stops its warm instances now, not at their idle timeout.
    let (status, _) = s.delete("/functions/slow").await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.instances() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.instances(), 1, "slow's instances outlived its delete");
    healthy(&s).await;
    s.stop_and_check_clean().await;
}

async fn shutdown_during_a_burst_leaves_nothing(executor: Executor) {
    if !require(executor, "shutdown_during_a_burst_leaves_nothing") {
        return;
    }
    let mut s = TestServer::start_with(
        executor,
        &[
            "--max-instances",
            "16",
            "--max-instances-per-function",
            "16",
        ],
    )
    .await;
    s.deploy(
        "burst",
        "python",
        "b.handler",
        &[(
            "b.py",
            "import time\ndef handler(event, context):\n    time.sleep(0.5)\n    return 1\n",
        )],
        json!({}),
    )
    .await;
    let url = s.url.clone();
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            let http = s.http();
            tokio::spawn(async move {
                let _ = http
                    .post(format!("{url}/functions/burst/invoke"))
                    .body("{}")
                    .send()
                    .await;
            })
        })
        .collect();
    // Cold starts are in flight when the server is told to stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.stop().await;
    for b in burst {
        let _ = b.await;
    }
    let leftovers = s.settled_leftovers().await;
    assert!(leftovers.is_empty(), "left behind: {leftovers:#?}");
    s.stop_and_check_clean().await;
}
