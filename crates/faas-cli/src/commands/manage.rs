//! `faas ls`, `rm`, `logs`, `status`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use faas_common::api::{FunctionList, FunctionStatus, InvocationList};
use reqwest::Method;

use crate::client::{Client, ServerArgs};

/// `faas ls` flags.
#[derive(Args)]
pub struct LsArgs {
    #[command(flatten)]
    server: ServerArgs,
}

/// List functions as a table (or JSON).
pub async fn ls(args: LsArgs) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let list: FunctionList = client
        .json(client.request(Method::GET, "/functions"))
        .await?;
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&list.functions)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.functions.is_empty() {
        println!("no functions deployed");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:>7} {:<7} {:<24} {:>7} {:>8}  ID",
        "NAME", "VERSION", "LANG", "HANDLER", "MEMORY", "TIMEOUT"
    );
    for f in list.functions {
        println!(
            "{:<24} {:>7} {:<7} {:<24} {:>5}MB {:>7}s  {}",
            f.name, f.version, f.language, f.handler, f.memory_mb, f.timeout_sec, f.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `faas rm` flags.
#[derive(Args)]
pub struct RmArgs {
    /// Function name or id.
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// Delete a function.
pub async fn rm(args: RmArgs) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let v: serde_json::Value = client
        .json(client.request(Method::DELETE, &format!("/functions/{}", args.name)))
        .await?;
    if args.server.json {
        println!("{v}");
    } else {
        println!("deleted {}", v["name"].as_str().unwrap_or(&args.name));
    }
    Ok(ExitCode::SUCCESS)
}

/// `faas logs` flags.
#[derive(Args)]
pub struct LogsArgs {
    /// Function name or id.
    name: String,
    /// How many recent invocations.
    #[arg(long, short = 'n', default_value_t = 10)]
    limit: usize,
    #[command(flatten)]
    server: ServerArgs,
}

/// Print recent invocations, oldest first, each with its logs.
pub async fn logs(args: LogsArgs) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let path = format!("/functions/{}/logs?limit={}", args.name, args.limit);
    let list: InvocationList = client.json(client.request(Method::GET, &path)).await?;
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&list.invocations)?);
        return Ok(ExitCode::SUCCESS);
    }
    for inv in list.invocations.iter().rev() {
        println!(
            "--- {} v{} {} {:.1}ms{} {}",
            inv.started_at,
            inv.version,
            inv.outcome,
            inv.duration_ms,
            if inv.cold_start { " cold" } else { "" },
            inv.request_id
        );
        if let Some(e) = &inv.error {
            println!("error: {e}");
        }
        print!("{}", inv.logs);
        if !inv.logs.is_empty() && !inv.logs.ends_with('\n') {
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `faas status` flags.
#[derive(Args)]
pub struct StatusArgs {
    /// Function name or id.
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// Print instance and invocation counts.
pub async fn status(args: StatusArgs) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let path = format!("/functions/{}/status", args.name);
    let s: FunctionStatus = client.json(client.request(Method::GET, &path)).await?;
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "{} v{}: {} warm, {} busy instances; {} invocations, {} failed",
            s.name, s.version, s.warm_instances, s.busy_instances, s.invocations, s.failures
        );
    }
    Ok(ExitCode::SUCCESS)
}
