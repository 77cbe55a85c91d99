//! `faas serve`: the platform's node (assembled by `faas-platform`) behind
//! the HTTP API, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use faas_platform::{Flags, PlatformConfig};

/// `faas serve` flags; each may also come from the environment or the config file.
#[derive(Args)]
pub struct ServeArgs {
    /// State directory: database, code, dependency layers, sandboxes [default: /var/lib/faas].
    #[arg(long, env = "FAAS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    flags: Flags,
}

/// Run until SIGINT or SIGTERM; then stop every instance before exiting.
pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    init_tracing();
    let config = PlatformConfig::resolve(&args.flags, args.data_dir.clone())?;
    // Images first: the first start builds them, which takes a while; say so.
    let progress = |line: &str| eprintln!("[images] {line}");
    let platform = faas_platform::build(config, &progress)
        .await
        .context("cannot start the platform")?;
    let orchestrator = platform.orchestrator.clone();
    if let Some(key) = &platform.new_admin_key {
        use std::io::IsTerminal;
        let notice =
            faas_platform::admin_key_notice(key, &platform.config, std::io::stderr().is_terminal());
        eprintln!("{notice}");
    }
    let scheme = platform.scheme();
    let addr = platform.config.addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("listener address")?;
    let kinds: Vec<&str> = platform
        .config
        .sandboxes
        .iter()
        .map(|k| k.as_str())
        .collect();
    tracing::info!(
        "listening on {scheme}://{local} (sandboxes {}, data {})",
        kinds.join(", "),
        platform.config.data_dir().display()
    );
    eprintln!("faas: listening on {scheme}://{local}");
    let stopping = orchestrator.clone();
    let served = platform
        .serve(listener, async move {
            shutdown_signal().await;
            // Before the API drains: requests in flight end fast instead of
            // waiting for instances to boot.
            stopping.begin_shutdown();
        })
        .await;
    tracing::info!("shutting down: stopping instances");
    platform.shutdown().await;
    drop(platform);
    served.context("server error")?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
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
