//! `faas invoke` and `faas exec`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use base64::Engine;
use clap::Args;
use faas_common::{ExecuteFunctionArgs, InvocationResult};
use reqwest::Method;
use serde_json::json;

use crate::client::{Client, ServerArgs};

/// `faas invoke` flags.
#[derive(Args)]
pub struct InvokeArgs {
    /// Function name or id.
    name: String,
    /// Payload given inline (usually JSON).
    #[arg(long, short = 'd', conflicts_with = "data_file")]
    data: Option<String>,
    /// Payload read from a file; `-` reads stdin.
    #[arg(long, short = 'f')]
    data_file: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

fn read_payload(data: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>> {
    Ok(match (data, file) {
        (Some(d), _) => d.into_bytes(),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            buf
        }
        (None, Some(p)) => {
            std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?
        }
        (None, None) => Vec::new(),
    })
}

/// Invoke and print the response body (or, with `--json`, the response and its metadata).
pub async fn run(args: InvokeArgs) -> Result<ExitCode> {
    let payload = read_payload(args.data, args.data_file)?;
    let client = Client::new(&args.server)?;
    let path = format!("/functions/{}/invoke", args.name);
    let resp = client
        .send(client.request(Method::POST, &path).body(payload))
        .await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (rid, cold, ms) = (
        header("x-faas-request-id"),
        header("x-faas-cold-start") == "true",
        header("x-faas-duration-ms"),
    );
    let body = resp.bytes().await.context("cannot read response")?;
    if args.server.json {
        let response = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) => v,
            Err(_) => json!(String::from_utf8_lossy(&body)),
        };
        let out = json!({
            "request_id": rid,
            "cold_start": cold,
            "duration_ms": ms.parse::<f64>().unwrap_or_default(),
            "response": response,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let mut stdout = std::io::stdout();
        stdout.write_all(&body)?;
        if !body.ends_with(b"\n") {
            stdout.write_all(b"\n")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `faas exec` flags.
#[derive(Args)]
pub struct ExecArgs {
    /// Runtime image: python, node or shell.
    #[arg(long, default_value = "shell")]
    image: String,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Input given inline.
    #[arg(long, short = 'd', conflicts_with = "data_file")]
    data: Option<String>,
    /// Input read from a file; `-` reads stdin.
    #[arg(long, short = 'f')]
    data_file: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Run a command once; print its stdout, its stderr to stderr; exit 1 if it failed.
pub async fn exec(args: ExecArgs) -> Result<ExitCode> {
    let payload = read_payload(args.data, args.data_file)?;
    let client = Client::new(&args.server)?;
    let req = ExecuteFunctionArgs {
        image: args.image,
        command: args.command,
        env_vars: (!args.env.is_empty()).then_some(args.env),
        payload,
    };
    let result: InvocationResult = client
        .json(client.request(Method::POST, "/execute").json(&req))
        .await?;
    if args.server.json {
        let out = json!({
            "request_id": result.request_id,
            "stdout": String::from_utf8_lossy(result.response.as_deref().unwrap_or_default()),
            "stdout_base64": base64::engine::general_purpose::STANDARD.encode(result.response.as_deref().unwrap_or_default()),
            "stderr": result.logs,
            "error": result.error,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        std::io::stdout().write_all(result.response.as_deref().unwrap_or_default())?;
        eprint!("{}", result.logs.as_deref().unwrap_or_default());
    }
    match result.error {
        Some(e) => {
            eprintln!("faas: {e}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}
