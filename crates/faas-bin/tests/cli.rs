//! `faas-bin` as an operator meets it: its help, and its start without a chain.

use std::process::Command;

fn faas_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faas-bin"));
    // Nothing from the caller's environment may change what is tested.
    for var in [
        "RUST_LOG",
        "DATA_DIR",
        "HTTP_RPC_URL",
        "WS_RPC_URL",
        "KEYSTORE_URI",
        "BLUEPRINT_ID",
        "SERVICE_ID",
        "FAAS_DATA_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn help_documents_the_configuration() {
    let out = faas_bin().arg("--help").output().expect("run faas-bin");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for documented in [
        "HTTP_RPC_URL",
        "KEYSTORE_URI",
        "DATA_DIR",
        "BLUEPRINT_ID",
        "SERVICE_ID",
        "TANGLE_CONTRACT",
        "FAAS_ADDR",
        "FAAS_EXECUTOR_TYPE",
        "FAAS_DATA_DIR",
        "FAAS_IMAGES_DIR",
        "FAAS_FC_BINARY_PATH",
        "FAAS_FC_KERNEL_PATH",
        "FAAS_FC_ROOTFS_PATH",
    ] {
        assert!(
            help.contains(documented),
            "--help lacks {documented}:\n{help}"
        );
    }
}

#[test]
fn without_a_reachable_chain_it_fails_in_one_line() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let data = tempfile::tempdir().expect("temp dir");
    let out = faas_bin()
        .arg("run")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--blueprint-id", "0", "--service-id", "0"])
        .args(["--http-rpc-url", &format!("http://127.0.0.1:{port}")])
        .args(["--ws-rpc-url", &format!("ws://127.0.0.1:{port}")])
        .output()
        .expect("run faas-bin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    assert!(
        lines[0].starts_with("faas-bin: cannot reach the Tangle chain at http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
