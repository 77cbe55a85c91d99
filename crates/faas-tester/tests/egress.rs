//! Egress allow-lists end to end: a function may reach exactly the listed
//! destination and nothing else. Every address here is on this machine: the
//! listeners live in a network namespace this test creates, and the host's
//! own listener is bound by the test too.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faas_tester::{executor_tests, require, require_tools, Executor, TestServer};
use serde_json::{json, Value};

executor_tests!(egress_opens_exactly_the_listed_destination);

/// A network namespace with a veth link to the host and listeners inside.
struct TestNet {
    name: String,
    /// The namespace's address.
    inside: Ipv4Addr,
    /// The host's address on the link.
    host: Ipv4Addr,
    stop: Arc<AtomicBool>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNet {
    fn create() -> TestNet {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let octet = u8::from_str_radix(&tag[..2], 16).unwrap() % 250 + 1;
        let name = format!("faas-t{tag}");
        let link = format!("ft{tag}");
        let (host, inside) = (
            Ipv4Addr::new(10, 204, octet, 1),
            Ipv4Addr::new(10, 204, octet, 2),
        );
        ip(&["netns", "add", &name]);
        let net = TestNet {
            name: name.clone(),
            inside,
            host,
            stop: Arc::new(AtomicBool::new(false)),
        };
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        net
    }

    /// Serve `banner` on `port` inside the namespace until dropped.
    fn listen(&self, port: u16, banner: &'static str) {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        let (addr, stop) = (self.inside, self.stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we hold.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let listener = TcpListener::bind((addr, port)).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.write_all(banner.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The link's host end goes with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

const PROBE: &str = r#"
import json, socket
def handler(event, context):
    out = {}
    for name, (host, port) in event.items():
        try:
            s = socket.create_connection((host, port), timeout=3)
            out[name] = s.recv(100).decode()
            s.close()
        except Exception as e:
            out[name] = "refused: " + type(e).__name__
    return out
"#;

async fn egress_opens_exactly_the_listed_destination(executor: Executor) {
    let test = "egress_opens_exactly_the_listed_destination";
    if !require(executor, test) || !require_tools(test, &["ip", "nft", "nsenter"]) {
        return;
    }
    let s = TestServer::start(executor).await;
    let net = TestNet::create();
    net.listen(18001, "allowed listener");
    net.listen(18002, "other port");
    // A service of the host itself, on every address.
    let host_service = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    let allowed = format!("{}:18001", net.inside);
    let (status, body) = s
        .try_deploy(
            "probe",
            "python",
            "main.handler",
            &[("main.py", PROBE)],
            json!({"network": {"egress": [allowed, format!("{}:{host_port}", net.host)]}}),
        )
        .await;
    if executor.is_vm() {
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("microvm"),
            "{body}"
        );
        s.stop_and_check_clean().await;
        return;
    }
    assert_eq!(status, 201, "{body}\n{}", s.log());
    assert_eq!(
        body["egress"],
        json!([format!("{}:{host_port}", net.host), allowed])
    );
    let targets = json!({
        "allowed": [net.inside.to_string(), 18001],
        "other_port": [net.inside.to_string(), 18002],
        "host_via_link": [net.host.to_string(), host_port],
        "host_loopback": ["127.0.0.1", host_port],
    });
    let got: Value = s.invoke_json("probe", targets.clone()).await;
    assert_eq!(got["allowed"], "allowed listener", "{got}\n{}", s.log());
    for refused in ["other_port", "host_via_link", "host_loopback"] {
        assert!(
            got[refused].as_str().unwrap().starts_with("refused"),
            "{refused}: {got}"
        );
    }
    // Warm, the same.
    assert_eq!(s.invoke_json("probe", targets.clone()).await, got);

    // Without an allow-list, no network at all.
    s.deploy(
        "closed",
        "python",
        "main.handler",
        &[("main.py", PROBE)],
        json!({}),
    )
    .await;
    let got = s.invoke_json("closed", targets).await;
    assert!(
        got["allowed"].as_str().unwrap().starts_with("refused"),
        "{got}"
    );

    // Bad lists are refused whole.
    for bad in [
        json!(["127.0.0.1:80"]),
        json!(["10.0.0.1/8:80"]),
        json!(["x:0"]),
        json!("a:1"),
    ] {
        let (status, body) = s
            .try_deploy(
                "bad",
                "python",
                "main.handler",
                &[("main.py", PROBE)],
                json!({"network": {"egress": bad}}),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Stopping removes every link, rule and address slot of the node.
    let owner = s.docker_owner();
    let table = format!("faas_{owner}");
    assert!(Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .unwrap()
        .status
        .success());
    s.stop_and_check_clean().await;
    let listed = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .unwrap();
    assert!(!listed.status.success(), "the table outlived the server");
    let slots: Vec<String> = std::fs::read_dir("/run/faas/egress")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| std::fs::read_to_string(e.path()).unwrap_or_default() == owner)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(slots.is_empty(), "slots left: {slots:?}");
    drop(net);
}
