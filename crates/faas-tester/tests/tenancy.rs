//! Tenancy end to end, on `faas serve` with real sandboxes: secrets reach
//! functions as environment variables and are scrubbed from their logs; the
//! CLI manages keys, quotas, secrets and the audit log; HTTPS; and what
//! `--insecure-no-auth` says about itself.

use faas_tester::{client_with, executor_tests, require, Executor, TestServer};
use serde_json::{json, Value};

executor_tests!(secrets_reach_the_function_and_leave_its_logs);

async fn secrets_reach_the_function_and_leave_its_logs(executor: Executor) {
    if !require(executor, "secrets_reach_the_function_and_leave_its_logs") {
        return;
    }
    let s = TestServer::start(executor).await;
    let code = r#"
import os, sys
def handler(event, context):
    token = os.environ.get("API_TOKEN")
    print("the token is", token)
    print("to stderr:", token, file=sys.stderr)
    return {"length": len(token or ""), "prefix": (token or "")[:3]}
"#;
    s.deploy(
        "vault",
        "python",
        "main.handler",
        &[("main.py", code)],
        json!({}),
    )
    .await;
    // Without the secret the function sees nothing; warm now.
    assert_eq!(s.invoke_json("vault", json!({})).await["length"], 0);
    let value = "tok-8c1f4e2a9b7d";
    let set = s
        .http()
        .put(format!("{}/functions/vault/secrets/API_TOKEN", s.url))
        .body(value)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    // Setting a secret replaces the warm instance: the next call sees it.
    let v = s.invoke_json("vault", json!({})).await;
    assert_eq!(v, json!({"length": value.len(), "prefix": "tok"}));
    let (status, logs) = s.get("/functions/vault/logs?limit=5").await;
    assert_eq!(status, 200);
    let text = logs.to_string();
    assert!(text.contains("the token is"), "{text}");
    assert!(!text.contains(value), "the value must be scrubbed: {text}");
    assert!(text.contains("[secret API_TOKEN]"), "{text}");
    for path in [
        "/functions/vault",
        "/functions/vault/secrets",
        "/metrics",
        "/admin/audit",
    ] {
        let body = s
            .http()
            .get(format!("{}{path}", s.url))
            .send()
            .await
            .unwrap();
        let body = body.text().await.unwrap();
        assert!(!body.contains(value), "{path}: {body}");
    }
    assert!(!s.log().contains(value), "server log holds the value");
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_keys_quotas_secrets_and_the_audit_log() {
    if !require(
        Executor::Native,
        "cli_manages_keys_quotas_secrets_and_the_audit_log",
    ) {
        return;
    }
    let s = TestServer::start(Executor::Native).await;
    assert!(
        s.log().contains("created the admin key in")
            && !s.log().contains(s.admin_key.as_deref().unwrap()),
        "the key is announced, not logged:\n{}",
        s.log()
    );
    // Root with no key at all: the CLI reads this server's admin key file.
    let made = s
        .cli_as(
            None,
            &[
                "admin",
                "keys",
                "create",
                "--tenant",
                "team-a",
                "--scopes",
                "deploy,invoke,read",
            ],
            None,
        )
        .await;
    assert_eq!(made.code, 0, "{}", made.stderr);
    let team_a = made.stdout.trim().to_string();
    assert!(team_a.starts_with("faas_"), "{}", made.stdout);
    let made = s
        .cli(
            &["admin", "keys", "create", "--tenant", "team-b", "--json"],
            None,
        )
        .await;
    assert_eq!(made.code, 0, "{}", made.stderr);
    let b: Value = serde_json::from_str(&made.stdout).unwrap();
    let team_b = b["key"].as_str().unwrap().to_string();

    // Both deploy `hello` from the CLI; each invokes its own.
    let dir = tempfile::tempdir().unwrap();
    for (key, word) in [(&team_a, "alpha"), (&team_b, "beta")] {
        std::fs::write(
            dir.path().join("run.sh"),
            format!("#!/bin/sh\necho {word}\n"),
        )
        .unwrap();
        let d = s
            .cli_as(
                Some(key),
                &[
                    "deploy",
                    dir.path().to_str().unwrap(),
                    "--name",
                    "hello",
                    "--language",
                    "shell",
                    "--handler",
                    "run.sh",
                ],
                None,
            )
            .await;
        assert_eq!(d.code, 0, "{}", d.stderr);
    }
    let a = s
        .cli_as(Some(&team_a), &["invoke", "hello"], Some(b""))
        .await;
    assert_eq!((a.code, a.stdout.trim()), (0, "alpha"), "{}", a.stderr);
    let b = s
        .cli_as(Some(&team_b), &["invoke", "hello"], Some(b""))
        .await;
    assert_eq!((b.code, b.stdout.trim()), (0, "beta"), "{}", b.stderr);

    // Secrets from stdin; names only on the way back.
    let set = s
        .cli_as(
            Some(&team_a),
            &["secrets", "set", "hello", "DB_PASSWORD"],
            Some(b"hunter2-very-secret\n"),
        )
        .await;
    assert_eq!(set.code, 0, "{}", set.stderr);
    let ls = s
        .cli_as(Some(&team_a), &["secrets", "ls", "hello"], None)
        .await;
    assert_eq!(ls.stdout.trim(), "DB_PASSWORD");
    let ls = s
        .cli_as(Some(&team_b), &["secrets", "ls", "hello"], None)
        .await;
    assert_eq!(ls.stdout.trim(), "", "team-b's hello has none");
    let rm = s
        .cli_as(
            Some(&team_b),
            &["secrets", "rm", "hello", "DB_PASSWORD"],
            None,
        )
        .await;
    assert_ne!(rm.code, 0);

    // Quotas.
    let q = s
        .cli(
            &[
                "admin",
                "quota",
                "set",
                "team-a",
                "--max-functions",
                "1",
                "--invocations-per-sec",
                "5",
            ],
            None,
        )
        .await;
    assert_eq!(q.code, 0, "{}", q.stderr);
    let q = s
        .cli(&["admin", "quota", "get", "team-a", "--json"], None)
        .await;
    let quota: Value = serde_json::from_str(&q.stdout).unwrap();
    assert_eq!(quota["max_functions"], 1);
    std::fs::write(dir.path().join("run.sh"), "#!/bin/sh\necho two\n").unwrap();
    let d = s
        .cli_as(
            Some(&team_a),
            &[
                "deploy",
                dir.path().to_str().unwrap(),
                "--name",
                "second",
                "--language",
                "shell",
                "--handler",
                "run.sh",
            ],
            None,
        )
        .await;
    assert_ne!(d.code, 0);
    assert_eq!(d.stderr.lines().count(), 1, "one line: {}", d.stderr);
    assert!(d.stderr.contains("409"), "{}", d.stderr);

    // Keys listed without secrets; a revoked key stops at once.
    let ls = s.cli(&["admin", "keys", "ls"], None).await;
    assert!(
        ls.stdout.contains("team-a") && !ls.stdout.contains(&team_a),
        "{}",
        ls.stdout
    );
    let keys = s.cli(&["admin", "keys", "ls", "--json"], None).await;
    let keys: Vec<Value> = serde_json::from_str(&keys.stdout).unwrap();
    let b_id = keys.iter().find(|k| k["tenant"] == "team-b").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s.cli(&["admin", "keys", "revoke", &b_id], None).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let denied = s.cli_as(Some(&team_b), &["ls"], None).await;
    assert_ne!(denied.code, 0);
    assert!(denied.stderr.contains("401"), "{}", denied.stderr);
    // A tenant key cannot administer.
    let denied = s
        .cli_as(Some(&team_a), &["admin", "keys", "ls"], None)
        .await;
    assert!(denied.stderr.contains("403"), "{}", denied.stderr);

    // The audit log holds all of it, with the source address, and no secret.
    let audit = s
        .cli(&["admin", "audit", "--limit", "100", "--json"], None)
        .await;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    let log: Value = serde_json::from_str(&audit.stdout).unwrap();
    let entries = log["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in [
        "key.create",
        "deploy",
        "secret.set",
        "quota.set",
        "key.revoke",
        "auth.failed",
        "denied",
    ] {
        assert!(actions.contains(&want), "{want} missing: {actions:?}");
    }
    assert!(entries.iter().all(|e| e["at"].is_string()));
    assert!(entries
        .iter()
        .filter(|e| e["action"] == "deploy")
        .all(|e| e["source"] == "127.0.0.1"));
    let text = audit.stdout;
    assert!(!text.contains("hunter2") && !text.contains(&team_a) && !text.contains(&team_b));
    let rotate = s.cli(&["admin", "rotate-key"], None).await;
    assert_eq!(rotate.code, 0, "{}", rotate.stderr);
    assert!(
        rotate.stdout.contains("1 secrets re-encrypted"),
        "{}",
        rotate.stdout
    );
    assert!(!s.log().contains("hunter2"));
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_and_the_cli() {
    if !require(Executor::Native, "https_serves_the_api_and_the_cli") {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let s = TestServer::start_with(
        Executor::Native,
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    )
    .await;
    assert!(s.url.starts_with("https://"), "{}", s.url);
    assert!(s.log().contains("listening on https://"), "{}", s.log());
    s.deploy("echo", "shell", "run.sh", &[("run.sh", "cat")], json!({}))
        .await;
    let r = s.invoke("echo", b"over https").await;
    assert_eq!((r.status, r.text()), (200, "over https".to_string()));
    let cli = s
        .cli(&["invoke", "echo", "--data", "cli over https"], None)
        .await;
    assert_eq!(
        (cli.code, cli.stdout.trim()),
        (0, "cli over https"),
        "{}",
        cli.stderr
    );
    // A client that does not trust the certificate gets nowhere.
    let untrusting = client_with(s.admin_key.as_deref());
    assert!(untrusting
        .get(format!("{}/functions", s.url))
        .send()
        .await
        .is_err());
    let cli = s.cli(&["ls", "--ca-cert", "/nonexistent.pem"], None).await;
    assert_ne!(cli.code, 0);
    assert!(cli.stderr.contains("/nonexistent.pem"), "{}", cli.stderr);
    s.stop_and_check_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_no_auth_says_so_everywhere() {
    if !require(Executor::Native, "insecure_no_auth_says_so_everywhere") {
        return;
    }
    let s = TestServer::start_with(Executor::Native, &["--insecure-no-auth"]).await;
    assert_eq!(s.admin_key, None, "no key is made");
    assert!(s.log().contains("authentication is off"), "{}", s.log());
    let (status, health) = s.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(health["auth"], "off");
    assert!(
        health["warning"]
            .as_str()
            .unwrap()
            .contains("--insecure-no-auth"),
        "{health}"
    );
    s.deploy("echo", "shell", "run.sh", &[("run.sh", "cat")], json!({}))
        .await;
    assert_eq!(s.invoke("echo", b"x").await.status, 200);
    s.stop_and_check_clean().await;
}
