//! `faas doctor` reports what this machine can run, as JSON for machines.

use faas_tester::{docker_host, faas_bin, require, Executor};
use serde_json::Value;

#[test]
fn doctor_reports_every_check_as_json() {
    if !require(Executor::Native, "doctor_reports_every_check_as_json") {
        return;
    }
    let mut cmd = std::process::Command::new(faas_bin());
    cmd.args(["doctor", "--json"]);
    if let Some(host) = docker_host() {
        cmd.args(["--docker-host", &host]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let get = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
            .clone()
    };
    for name in [
        "root",
        "runc",
        "cgroups",
        "seccomp",
        "mmdebstrap",
        "kvm",
        "qemu",
        "firecracker",
        "vhost-device-vsock",
        "tdx / sev-snp",
    ] {
        let c = get(name);
        assert!(
            ["ok", "partial", "missing"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        if c["status"] != "ok" {
            assert!(
                c["fix"].is_string(),
                "a check that fails says what to do: {c}"
            );
        }
    }
    // The suite runs only where the native sandbox works: doctor must agree.
    for name in ["root", "runc", "cgroups", "seccomp"] {
        assert_eq!(get(name)["status"], "ok", "{}", get(name));
    }
    if docker_host().is_some() {
        assert_eq!(get("docker")["status"], "ok", "{}", get("docker"));
    }
    // /dev/kvm here is PVM: it must not be reported as hardware virtualisation.
    let kvm = get("kvm");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(kvm["status"], "partial", "{kvm}");
        assert!(
            kvm["detail"].as_str().unwrap().contains("paravirtual"),
            "{kvm}"
        );
    }
}
