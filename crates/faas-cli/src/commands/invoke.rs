//! `faas invoke` (also `--async`), `faas result` and `faas exec`.

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
    /// Run in the background: print the request id once the request is
    /// durable (see `faas result`).
    #[arg(long = "async")]
    run_async: bool,
    /// With --async: POST the result to this URL when it is final.
    #[arg(long, requires = "run_async")]
    callback_url: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// `faas result` flags.
#[derive(Args)]
pub struct ResultArgs {
    /// Function name or id.
    name: String,
    /// The request id `faas invoke --async` printed.
    request_id: String,
    /// Wait until the result is final (up to this many seconds).
    #[arg(long, value_name = "SECS")]
    wait: Option<u64>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Show an asynchronous invocation: its state, and when final, its response
/// (printed as `faas invoke` prints one) or its error; exit 1 when it died.
pub async fn result(args: ResultArgs) -> Result<ExitCode> {
    use faas_common::api::{AsyncResult, AsyncState};
    let client = Client::new(&args.server)?;
    let path = format!("/functions/{}/results/{}", args.name, args.request_id);
    let deadline = args
        .wait
        .map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s));
    let r: AsyncResult = loop {
        let r: AsyncResult = client.json(client.request(Method::GET, &path)).await?;
        match deadline {
            Some(d) if !r.status.is_final() && std::time::Instant::now() < d => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            _ => break r,
        }
    };
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        match r.status {
            AsyncState::Succeeded => {
                let body = base64::engine::general_purpose::STANDARD
                    .decode(r.body_base64.as_deref().unwrap_or_default())
                    .context("the result's body is not base64")?;
                std::io::stdout().write_all(&body)?;
                if !body.ends_with(b"\n") {
                    println!();
                }
            }
            AsyncState::Dead => {
                eprintln!(
                    "faas: {} failed after {} attempt(s): {}",
                    r.request_id,
                    r.attempts,
                    r.error.as_deref().unwrap_or("unknown error")
                );
            }
            state => println!("{} (attempts so far: {})", state.as_str(), r.attempts),
        }
    }
    Ok(if r.status == AsyncState::Dead {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
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
    if args.run_async {
        let path = format!("/functions/{}/async-invoke", args.name);
        let mut req = client.request(Method::POST, &path).body(payload);
        if let Some(url) = &args.callback_url {
            req = req.header("x-callback-url", url);
        }
        let accepted: faas_common::api::AsyncAccepted = client.json(req).await?;
        if args.server.json {
            println!("{}", serde_json::to_string_pretty(&accepted)?);
        } else {
            println!("{}", accepted.request_id);
        }
        return Ok(ExitCode::SUCCESS);
    }
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
    let (rid, cold, prestarted, ms) = (
        header("x-faas-request-id"),
        header("x-faas-cold-start") == "true",
        header("x-faas-prestarted") == "true",
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
            "prestarted": prestarted,
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
