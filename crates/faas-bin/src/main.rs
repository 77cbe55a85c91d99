//! `faas-bin`: the platform as a Tangle Blueprint.
//!
//! One process runs the Blueprint runner (jobs from the Tangle contract through
//! `TangleProducer`, results back through `TangleConsumer`) with the jobs of
//! `faas-blueprint-lib`, and the platform's HTTP gateway (the API of
//! `docs/api.md`, including the SDK's `POST /job/{job_id}` FaaS protocol) on
//! the same orchestrator. See `docs/blueprint.md`.

#![forbid(unsafe_code)]

mod gateway;
mod ledger;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use alloy_primitives::Address;
use alloy_provider::{Provider, ProviderBuilder};
use anyhow::{bail, Context, Result};
use blueprint_client_tangle::{TangleClient, TangleClientConfig, TangleSettings};
use blueprint_runner::config::{
    BlueprintCliCoreSettings, BlueprintEnvironment, BlueprintSettings, ContextConfig,
    ProtocolSettings,
};
use blueprint_runner::tangle::config::{TangleConfig, TangleProtocolSettings};
use blueprint_runner::BlueprintRunner;
use blueprint_tangle_extra::{TangleConsumer, TangleProducer};
use clap::{Args, Parser};
use faas_blueprint_lib::FaaSContext;
use faas_platform::{Flags, PlatformConfig};

use crate::gateway::GatewayService;
use crate::ledger::Ledger;

/// How long the chain may take to answer the first request.
const CHAIN_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The platform as a Tangle Blueprint: Blueprint jobs 0 (execute a command),
/// 1 (deploy a function) and 2 (invoke a function) from the Tangle contract,
/// and the HTTP API, on one set of sandboxes. Every option may also be given
/// as the environment variable shown beside it.
#[derive(Parser)]
#[command(name = "faas-bin", version)]
struct Cli {
    /// Optional; the Blueprint manager starts Blueprints as `<binary> run ...`.
    #[arg(value_parser = ["run"], value_name = "run")]
    _command: Option<String>,
    #[command(flatten)]
    blueprint: BlueprintSettings,
    #[command(flatten)]
    tangle: TangleArgs,
    #[command(flatten)]
    faas: FaasArgs,
}

/// Which Tangle service this operator serves.
#[derive(Args)]
#[command(next_help_heading = "Tangle service")]
struct TangleArgs {
    /// Blueprint id in the Tangle contract.
    #[arg(long, env = "BLUEPRINT_ID")]
    blueprint_id: u64,
    /// Service instance whose jobs this operator runs.
    #[arg(long, env = "SERVICE_ID")]
    service_id: u64,
    /// Tangle core contract address.
    #[arg(long, env = "TANGLE_CONTRACT", default_value_t = Address::ZERO)]
    tangle_contract: Address,
    /// MultiAssetDelegation (restaking) contract address.
    #[arg(long, env = "STAKING_CONTRACT", default_value_t = Address::ZERO)]
    staking_contract: Address,
    /// Operator status registry contract address.
    #[arg(long, env = "STATUS_REGISTRY_CONTRACT", default_value_t = Address::ZERO)]
    status_registry_contract: Address,
}

/// The platform: gateway, sandboxes, state. Every setting of `faas serve`
/// works here too ([`Flags`]).
#[derive(Args)]
#[command(next_help_heading = "FaaS platform")]
struct FaasArgs {
    /// URL announced on chain when registering as an operator [default: http://ADDR].
    #[arg(long, env = "FAAS_PUBLIC_URL")]
    public_url: Option<String>,
    /// Platform state: database, code, dependency layers [default: DATA_DIR/faas].
    #[arg(long, env = "FAAS_DATA_DIR")]
    faas_data_dir: Option<PathBuf>,
    #[command(flatten)]
    flags: Flags,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faas-bin: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without the repeats of wrapped errors
/// that display their source too.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

async fn run(cli: Cli) -> Result<()> {
    let Cli {
        mut blueprint,
        tangle,
        faas,
        ..
    } = cli;
    // Tangle settings come from our own flags (documented in --help), not from
    // the runner's environment-only loader.
    blueprint.protocol = None;
    let mut env = BlueprintEnvironment::load_with_config(ContextConfig {
        blueprint_core_settings: BlueprintCliCoreSettings::Run(blueprint),
    })
    .context("invalid Blueprint configuration")?;
    env.protocol_settings = ProtocolSettings::Tangle(TangleProtocolSettings {
        blueprint_id: tangle.blueprint_id,
        service_id: Some(tangle.service_id),
        tangle_contract: tangle.tangle_contract,
        staking_contract: tangle.staking_contract,
        status_registry_contract: tangle.status_registry_contract,
    });

    probe_chain(&env).await?;
    let client = TangleClient::new(client_config(&env, &tangle))
        .await
        .with_context(|| format!("cannot open the operator key in {}", env.keystore_uri))?;

    let data_dir = faas
        .faas_data_dir
        .clone()
        .unwrap_or_else(|| env.data_dir.join("faas"));
    let config = PlatformConfig::resolve(&faas.flags, Some(data_dir))?;
    let progress = |line: &str| tracing::info!("[images] {line}");
    let platform = faas_platform::build(config, &progress)
        .await
        .context("cannot start the platform")?;
    let addr = platform.config.addr;
    let kinds: Vec<&str> = platform
        .config
        .sandboxes
        .iter()
        .map(|k| k.as_str())
        .collect();
    let kinds = kinds.join(", ");
    if let Some(key) = &platform.new_admin_key {
        use std::io::IsTerminal;
        let notice =
            faas_platform::admin_key_notice(key, &platform.config, std::io::stdout().is_terminal());
        println!("{notice}");
    }
    let scheme = platform.scheme();
    let tls = platform.tls()?;
    let app = platform.router();
    // Where the producer resumes: the block of the last call the jobs got before
    // a restart (see ledger.rs); the SDK's default otherwise.
    let resume_file = env
        .data_dir
        .join(format!("tangle-resume-block-service-{}", tangle.service_id));
    let head = client
        .block_number()
        .await
        .context("cannot read the chain's block number")?;
    let resume = ledger::resume_block(&resume_file, head).await;
    let producer = match resume {
        Some(block) => {
            tracing::info!("resuming service {} from block {block}", tangle.service_id);
            TangleProducer::from_block(client.clone(), tangle.service_id, block)
        }
        None => TangleProducer::new(client.clone(), tangle.service_id),
    };
    let ledger = Ledger::new(client.clone(), resume_file, resume.unwrap_or(0));
    let ctx = FaaSContext::new(platform, env.clone()).with_ledger(std::sync::Arc::new(ledger));
    let node = ctx.clone();

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("listener address")?;
    let gateway = GatewayService::new(listener, app, tls);
    let public_url = faas
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{local}"));
    tracing::info!(
        "gateway on {scheme}://{local}; serving service {} of blueprint {} ({kinds} sandbox)",
        tangle.service_id,
        tangle.blueprint_id,
    );

    let registration =
        TangleConfig::new(public_url).with_exit_after_register(env.registration_mode());
    let runner = BlueprintRunner::builder(registration, env)
        .router(faas_blueprint_lib::router(ctx))
        .producer(producer)
        .consumer(TangleConsumer::new(client))
        .background_service(gateway)
        .run();
    let outcome = tokio::select! {
        r = runner => r.context("the Blueprint runner stopped"),
        () = shutdown_signal() => Ok(()),
    };
    tracing::info!("shutting down: stopping instances");
    node.platform().shutdown().await;
    outcome
}

/// Fail early, in one line, when the chain does not answer.
async fn probe_chain(env: &BlueprintEnvironment) -> Result<()> {
    let url = &env.http_rpc_endpoint;
    let provider = ProviderBuilder::new()
        .connect(url.as_str())
        .await
        .with_context(|| format!("cannot reach the Tangle chain at {url}"))?;
    match tokio::time::timeout(CHAIN_PROBE_TIMEOUT, provider.get_block_number()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot reach the Tangle chain at {url}")))
        }
        Err(_) => bail!(
            "cannot reach the Tangle chain at {url}: no answer within {}s",
            CHAIN_PROBE_TIMEOUT.as_secs()
        ),
    }
}

fn client_config(env: &BlueprintEnvironment, tangle: &TangleArgs) -> TangleClientConfig {
    TangleClientConfig::new(
        env.http_rpc_endpoint.clone(),
        env.ws_rpc_endpoint.clone(),
        env.keystore_uri.clone(),
        TangleSettings {
            blueprint_id: tangle.blueprint_id,
            service_id: Some(tangle.service_id),
            tangle_contract: tangle.tangle_contract,
            staking_contract: tangle.staking_contract,
            status_registry_contract: tangle.status_registry_contract,
        },
    )
    .data_dir(env.data_dir.clone())
    .test_mode(env.test_mode)
    .dry_run(env.dry_run)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file gets plain `key=value` text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
