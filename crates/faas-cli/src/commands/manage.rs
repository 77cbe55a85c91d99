//! `faas ls`, `rm`, `logs`, `status`, `scale`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use faas_common::api::{BuildInfo, BuildState, FunctionList, FunctionStatus, InvocationList};
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
    /// The newest deploy's build instead: its state and the installer's output.
    #[arg(long)]
    build: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Print recent invocations, oldest first, each with its logs.
pub async fn logs(args: LogsArgs) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    if args.build {
        let path = format!("/functions/{}/build", args.name);
        let b: BuildInfo = client.json(client.request(Method::GET, &path)).await?;
        if args.server.json {
            println!("{}", serde_json::to_string_pretty(&b)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!("--- build {} of {}: {}", b.id, b.function, describe(&b));
        print!("{}", b.log);
        if !b.log.is_empty() && !b.log.ends_with('\n') {
            println!();
        }
        return Ok(ExitCode::SUCCESS);
    }
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
            "{} v{}: {} starting, {} idle, {} busy instances, {} queued; {} invocations, {} failed",
            s.name,
            s.version,
            s.starting_instances,
            s.warm_instances,
            s.busy_instances,
            s.queued,
            s.invocations,
            s.failures
        );
        if let Some(mb) = s.ephemeral_mb {
            println!("ephemeral storage: {mb} MB /tmp per instance");
        }
        if let Some(e) = &s.effective_scaling {
            let n = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
            println!(
                "scaling: min {} max {} instances, idle timeout {}s, queue {}",
                n(e.min_instances),
                n(e.max_instances),
                n(e.idle_timeout_sec),
                n(e.max_queue)
            );
        }
        if let (Some(at), Some(outcome)) = (&s.last_invocation, &s.last_outcome) {
            println!("last invocation: {at}, {}", outcome.as_str());
        }
        if let Some(b) = &s.build {
            println!("build: {} ({})", describe(b), b.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `building since ...`, `ready: version N at ...`, `failed at ...: why`.
pub fn describe(b: &BuildInfo) -> String {
    let at = b.finished_at.as_deref().unwrap_or(&b.started_at);
    match b.state {
        BuildState::Building => format!("building since {}", b.started_at),
        BuildState::Ready => match b.version {
            Some(v) => format!("ready, version {v} at {at}"),
            None => format!("ready at {at}"),
        },
        BuildState::Failed => format!(
            "failed at {at}: {}",
            b.error.as_deref().unwrap_or("no reason recorded")
        ),
    }
}

/// A function's scaling flags (`faas scale`, `faas deploy`).
#[derive(Args)]
pub struct ScalingFlags {
    /// Instances kept started at all times.
    #[arg(long)]
    min_instances: Option<u32>,
    /// Most instances at once, so most invocations running at once (1-1000).
    #[arg(long)]
    max_instances: Option<u32>,
    /// Seconds an idle instance above --min-instances is kept.
    #[arg(long)]
    idle_timeout_sec: Option<u32>,
    /// Invocations that may wait when every instance is busy; beyond, 429.
    #[arg(long)]
    max_queue: Option<u32>,
}

impl ScalingFlags {
    /// The scaling the flags give (absent ones: the node's defaults).
    pub fn scaling(&self) -> faas_common::Scaling {
        faas_common::Scaling {
            min_instances: self.min_instances,
            max_instances: self.max_instances,
            concurrency: None,
            idle_timeout_sec: self.idle_timeout_sec,
            max_queue: self.max_queue,
        }
    }
}

/// `faas scale` flags: the function's whole scaling (what is not given
/// takes the node's default).
#[derive(Args)]
pub struct ScaleArgs {
    /// Function name or id.
    name: String,
    #[command(flatten)]
    scaling: ScalingFlags,
    #[command(flatten)]
    server: ServerArgs,
}

/// Replace a function's scaling, without a redeploy.
pub async fn scale(args: ScaleArgs) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let scaling = args.scaling.scaling();
    let path = format!("/functions/{}/scaling", args.name);
    let info: faas_common::api::FunctionInfo = client
        .json(client.request(Method::PUT, &path).json(&scaling))
        .await?;
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!(
            "{}: scaling {}",
            info.name,
            serde_json::to_string(&info.scaling)?
        );
    }
    Ok(ExitCode::SUCCESS)
}
