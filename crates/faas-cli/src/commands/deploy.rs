//! `faas deploy`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Args;
use faas_common::api::{BuildInfo, BuildState, FunctionInfo};
use faas_common::network::NetworkPolicy;
use faas_common::{FunctionDefinition, Language};
use reqwest::{Method, StatusCode};

use crate::client::{Client, ServerArgs};

/// `faas deploy` flags.
#[derive(Args)]
pub struct DeployArgs {
    /// A directory (sent as a tar.gz archive) or a single source file.
    path: PathBuf,
    /// Function name [default: the file or directory name].
    #[arg(long)]
    name: Option<String>,
    /// python, node or shell [default: from the file extension].
    #[arg(long)]
    language: Option<String>,
    /// module.function, or the script for shell [default: <file>.handler, or the script].
    #[arg(long)]
    handler: Option<String>,
    /// Memory limit in MiB.
    #[arg(long)]
    memory_mb: Option<u32>,
    /// Timeout in seconds.
    #[arg(long)]
    timeout_sec: Option<u32>,
    /// Size of each instance's /tmp in MiB [default: 512; at most the node's
    /// limit]; it persists across the calls one warm instance serves.
    #[arg(long)]
    ephemeral_mb: Option<u32>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A dependency to install: pip or npm specifier (repeatable).
    #[arg(long = "dep", value_name = "SPEC")]
    dependencies: Vec<String>,
    /// Sandbox kind (native, docker) if the node offers more than its default.
    #[arg(long)]
    sandbox: Option<String>,
    /// Run only on attested hardware: tdx or sev-snp.
    #[arg(long)]
    attestation: Option<String>,
    /// Let the function reach this destination (`host:port`, `a.b.c.d:port`,
    /// `a.b.c.d/len:port`); repeatable. Without it a function has no network.
    #[arg(long = "egress", value_name = "DEST")]
    egress: Vec<String>,
    /// The function's scaling; a redeploy without these keeps it.
    #[command(flatten)]
    scaling: super::manage::ScalingFlags,
    /// Retries of a failed asynchronous invocation (0-10) [default: 2].
    #[arg(long)]
    max_retries: Option<u32>,
    /// Return once the server has the deploy, without waiting for
    /// dependencies to install (`faas status` / `faas logs --build` follow it).
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Deploy and print the new version.
pub async fn run(args: DeployArgs) -> Result<ExitCode> {
    let meta = std::fs::metadata(&args.path)
        .with_context(|| format!("cannot read {}", args.path.display()))?;
    let stem = args
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("function")
        .to_string();
    let language = match &args.language {
        Some(l) => l.parse::<Language>()?,
        None if meta.is_file() => language_of(&args.path)?,
        // A manifest tells the language of a project directory.
        None if args.path.join("requirements.txt").is_file() => Language::Python,
        None if args.path.join("package.json").is_file() => Language::Node,
        None => bail!("--language is required when deploying a directory without a requirements.txt or package.json"),
    };
    let handler = match (&args.handler, meta.is_file()) {
        (Some(h), _) => h.clone(),
        (None, true) if language.is_process_per_call() => file_name(&args.path)?,
        (None, true) => format!("{stem}.handler"),
        (None, false) => bail!("--handler is required when deploying a directory"),
    };
    let code = if meta.is_file() {
        std::fs::read(&args.path).with_context(|| format!("cannot read {}", args.path.display()))?
    } else {
        tar_gz(&args.path)?
    };
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?} is not KEY=VALUE"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let def = FunctionDefinition {
        name: args.name.clone().unwrap_or(stem),
        language: language.to_string(),
        code_base64: Some(base64::engine::general_purpose::STANDARD.encode(code)),
        handler,
        dependencies: args.dependencies.clone(),
        memory_mb: args.memory_mb,
        timeout_sec: args.timeout_sec,
        ephemeral_mb: args.ephemeral_mb,
        files: None,
        env,
        sandbox: args.sandbox.clone(),
        attestation: args.attestation.clone(),
        network: (!args.egress.is_empty()).then(|| NetworkPolicy {
            egress: args.egress.clone(),
        }),
        scaling: Some(args.scaling.scaling()).filter(|s| *s != faas_common::Scaling::default()),
        max_retries: args.max_retries,
        schedules: None,
    };
    let client = Client::new(&args.server)?;
    let resp = client
        .send(client.request(Method::POST, "/functions").json(&def))
        .await?;
    let info: FunctionInfo = if resp.status() == StatusCode::ACCEPTED {
        let build: BuildInfo = resp
            .json()
            .await
            .context("unexpected response from server")?;
        if args.no_wait {
            if args.server.json {
                println!("{}", serde_json::to_string_pretty(&build)?);
            } else {
                println!(
                    "building {} ({}); follow it with `faas logs --build {}`",
                    build.function, build.id, build.function
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        follow_build(&client, &build, args.server.json).await?
    } else {
        resp.json()
            .await
            .context("unexpected response from server")?
    };
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!(
            "deployed {} version {} ({}, {}, {} MB, {}s timeout, {} MB /tmp) id {}",
            info.name,
            info.version,
            info.language,
            info.handler,
            info.memory_mb,
            info.timeout_sec,
            info.ephemeral_mb,
            info.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Print the build's output as it comes (on stderr) until it ends; the
/// deployed version, or the build's error.
async fn follow_build(client: &Client, build: &BuildInfo, quiet: bool) -> Result<FunctionInfo> {
    if !quiet {
        eprintln!(
            "building {} ({}): installing dependencies",
            build.function, build.id
        );
    }
    let path = format!("/functions/{}/build", build.function);
    let mut shown = 0usize;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now: BuildInfo = client.json(client.request(Method::GET, &path)).await?;
        if now.id != build.id {
            bail!("a newer deploy of {} replaced this one", build.function);
        }
        let lines: Vec<&str> = now.log.lines().collect();
        if !quiet {
            for line in lines.iter().skip(shown) {
                eprintln!("  | {line}");
            }
        }
        shown = shown.max(lines.len());
        match now.state {
            BuildState::Building => continue,
            BuildState::Ready => break,
            BuildState::Failed => bail!("{}", now.error.as_deref().unwrap_or("the build failed")),
        }
    }
    client
        .json(client.request(Method::GET, &format!("/functions/{}", build.function)))
        .await
}

fn language_of(path: &Path) -> Result<Language> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("py") => Ok(Language::Python),
        Some("js") | Some("cjs") => Ok(Language::Node),
        Some("sh") => Ok(Language::Shell),
        _ => bail!(
            "cannot tell the language of {}; pass --language",
            path.display()
        ),
    }
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no usable file name", path.display()))
}

/// The directory as a tar.gz, paths relative to it, links kept as links.
fn tar_gz(dir: &Path) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)
        .with_context(|| format!("cannot archive {}", dir.display()))?;
    let gz = tar.into_inner().context("cannot finish archive")?;
    gz.finish().context("cannot compress archive")
}
