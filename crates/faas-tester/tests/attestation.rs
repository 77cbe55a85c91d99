//! Attested functions: refused without verified evidence, never a silent
//! fallback; simulated evidence is marked everywhere and satisfies only a
//! policy that allows it explicitly; results are signed and `faas verify`
//! checks them end to end. Offline quote verification through the CLI.

use std::path::PathBuf;

use faas_tester::{faas_bin, require, Executor, TestServer};
use serde_json::{json, Value};

const CODE: &str =
    "def handler(event, context):\n    return {'secret': 'computed in a TEE', 'x': event}\n";

async fn deploy_attested(s: &TestServer) {
    let (status, v) = s
        .try_deploy(
            "conf",
            "python",
            "m.handler",
            &[("m.py", CODE)],
            json!({"attestation": "tdx"}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["attestation"], "tdx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_function_is_refused_without_evidence() {
    if !require(
        Executor::Native,
        "attested_function_is_refused_without_evidence",
    ) {
        return;
    }
    let s = TestServer::start_with(Executor::Native, &["--attestation", "off"]).await;
    deploy_attested(&s).await;
    let r = s.invoke("conf", b"{}").await;
    assert_eq!(r.status, 412, "{}", r.text());
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("requires tdx attestation") && err.contains("not enabled"),
        "{err}"
    );
    assert_eq!(s.get("/attestation").await.0, 404);
    let (status, v) = s
        .try_deploy(
            "bad",
            "python",
            "m.handler",
            &[("m.py", CODE)],
            json!({"attestation": "sgx"}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    // An ordinary function still runs, unsigned.
    s.deploy("plain", "python", "m.handler", &[("m.py", CODE)], json!({}))
        .await;
    let r = s.post_raw("/functions/plain/invoke", b"{}".to_vec()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-faas-result-signature").is_none());
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_evidence_never_satisfies_a_hardware_policy() {
    if !require(
        Executor::Native,
        "simulated_evidence_never_satisfies_a_hardware_policy",
    ) {
        return;
    }
    let s = TestServer::start_with(Executor::Native, &["--attestation", "simulated"]).await;
    deploy_attested(&s).await;
    let (status, a) = s.get("/attestation").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["simulated"], true);
    assert_eq!(a["hardware"], false);
    assert_eq!(a["evidence"]["kind"], "simulated");
    assert_eq!(
        a["verdict"]["ok"], false,
        "the default policy wants hardware: {a}"
    );
    let r = s.invoke("conf", b"{}").await;
    assert_eq!(r.status, 412, "{}", r.text());
    assert!(r.text().contains("did not verify"), "{}", r.text());
    let metrics = s.metrics().await;
    assert!(
        metrics.contains(
            r#"faas_attestation_verified{kind="simulated",simulated="true",hardware="false"} 0"#
        ),
        "{metrics}"
    );
    assert!(s.log().contains("SIMULATED"), "the log says simulated");
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicitly_allowed_simulation_runs_signed_and_verifiable() {
    if !require(
        Executor::Native,
        "explicitly_allowed_simulation_runs_signed_and_verifiable",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("test-policy.toml");
    std::fs::write(&policy, "allow_simulated = true\n").unwrap();
    let s = TestServer::start_with(
        Executor::Native,
        &[
            "--attestation",
            "simulated",
            "--attestation-policy",
            policy.to_str().unwrap(),
        ],
    )
    .await;
    deploy_attested(&s).await;
    let r = s
        .post_raw("/functions/conf/invoke", b"{\"n\": 1}".to_vec())
        .await;
    assert_eq!(r.status(), 200);
    let att = r.headers()["x-faas-attestation"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(att.starts_with("simulated; simulated=true"), "{att}");
    assert!(r.headers()["x-faas-result-signature"]
        .to_str()
        .unwrap()
        .starts_with("ed25519;"));

    // The caller's side: fresh evidence over its own nonce, and the signature.
    let out = s
        .cli(
            &[
                "verify",
                "conf",
                "--data",
                "{\"n\": 2}",
                "--allow-simulated",
            ],
            None,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["simulated"], true);
    assert_eq!(v["hardware"], false);
    // Without allowing simulation, the caller refuses it.
    let out = s.cli(&["verify", "conf", "--data", "{}"], None).await;
    assert_ne!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["simulated"], true);
    s.stop_and_check_clean().await;
}

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../faas-attest/tests/data")
}

#[test]
fn cli_verifies_real_tdx_quotes_offline() {
    if !faas_bin().is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "faas binary not built under CI"
        );
        return;
    }
    let d = samples();
    let run = |quote: &str, collateral: &str, at: Option<&str>| {
        let mut cmd = std::process::Command::new(faas_bin());
        cmd.args(["attest", "verify", "--quote"])
            .arg(d.join(quote))
            .arg("--collateral")
            .arg(d.join(collateral));
        if let Some(at) = at {
            cmd.args(["--at", at]);
        }
        let out = cmd.output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.success(), v)
    };
    let (ok, v) = run("tdx_quote", "tdx_quote_collateral.json", Some("1750377600"));
    assert!(ok, "{v}");
    assert_eq!(v["hardware"], true);
    assert_eq!(v["tcb_status"], "UpToDate");
    let (ok, v) = run(
        "tdx_quote_outdated",
        "tdx_quote_outdated_collateral.json",
        Some("1750377600"),
    );
    assert!(!ok, "outdated refused: {v}");
    let (ok, v) = run("tdx_quote", "sgx_quote_collateral.json", Some("1750377600"));
    assert!(!ok, "SGX collateral refused: {v}");
    let (ok, _) = run("tdx_quote", "tdx_quote_collateral.json", None);
    assert!(!ok, "today the sample's collateral has expired");
}
