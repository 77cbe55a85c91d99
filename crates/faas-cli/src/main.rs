//! `faas`: the FaaS-Blueprint command line.
//!
//! A thin shell: `serve` runs the node `faas-platform` assembles; every other command
//! is a client of the HTTP API (`--server`, `FAAS_SERVER`; a key from
//! `--api-key`, `FAAS_API_KEY`, the profile file or, for root, the local
//! admin key: see `client.rs`).

#![deny(clippy::undocumented_unsafe_blocks)]

mod client;
mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// FaaS-Blueprint: run Python, Node.js and shell functions in sandboxes.
#[derive(Parser)]
#[command(name = "faas", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the `serve` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start the platform (HTTP gateway + orchestrator) in this process.
    Serve(commands::serve::ServeArgs),
    /// Deploy a function from a directory or a single file.
    Deploy(commands::deploy::DeployArgs),
    /// Invoke a function and print its response.
    Invoke(commands::invoke::InvokeArgs),
    /// List deployed functions.
    Ls(commands::manage::LsArgs),
    /// Delete a function and stop its instances.
    Rm(commands::manage::RmArgs),
    /// Show recent invocations of a function with their logs.
    Logs(commands::manage::LogsArgs),
    /// Show a function's instances, queue, scaling and invocation counts.
    Status(commands::manage::StatusArgs),
    /// Show an asynchronous invocation's state and, when final, its result.
    Result(commands::invoke::ResultArgs),
    /// Set a function's scaling (min/max instances, idle timeout, queue) without a redeploy.
    Scale(commands::manage::ScaleArgs),
    /// Run a command once in a runtime image with stdin as its input (`POST /execute`).
    Exec(commands::invoke::ExecArgs),
    /// Bind Blueprint job ids to functions (the SDK's HTTP FaaS protocol).
    Jobs {
        #[command(subcommand)]
        command: commands::jobs::JobsCommand,
    },
    /// Cron schedules that invoke a function asynchronously.
    Schedule {
        #[command(subcommand)]
        command: commands::schedule::ScheduleCommand,
    },
    /// A function's secrets (environment variables, encrypted at rest).
    Secrets {
        #[command(subcommand)]
        command: commands::secrets::SecretsCommand,
    },
    /// Keys, tenant quotas, the audit log (needs an admin key).
    Admin {
        #[command(subcommand)]
        command: commands::admin::AdminCommand,
    },
    /// Verify attestation evidence from files.
    Attest {
        #[command(subcommand)]
        command: commands::attest::AttestCommand,
    },
    /// Invoke an attested function and verify its signed result and the node's
    /// fresh evidence end to end.
    Verify(commands::attest::VerifyArgs),
    /// Check what this machine can run: sandboxes, KVM, Docker, TEEs.
    Doctor(commands::doctor::DoctorArgs),
    /// Manage runtime images.
    Images {
        #[command(subcommand)]
        command: commands::images::ImagesCommand,
    },
}

fn main() -> ExitCode {
    // `faas invoke f | head`: end quietly when the reader goes away, as Unix
    // tools do, instead of panicking on a failed print.
    // SAFETY: called first thing, before any thread exists; SIG_DFL is a
    // valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faas: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(a) => commands::serve::run(a).await,
            Command::Deploy(a) => commands::deploy::run(a).await,
            Command::Invoke(a) => commands::invoke::run(a).await,
            Command::Exec(a) => commands::invoke::exec(a).await,
            Command::Ls(a) => commands::manage::ls(a).await,
            Command::Rm(a) => commands::manage::rm(a).await,
            Command::Logs(a) => commands::manage::logs(a).await,
            Command::Status(a) => commands::manage::status(a).await,
            Command::Scale(a) => commands::manage::scale(a).await,
            Command::Result(a) => commands::invoke::result(a).await,
            Command::Doctor(a) => commands::doctor::run(a).await,
            Command::Attest { command } => commands::attest::run(command).await,
            Command::Verify(a) => commands::attest::verify(a).await,
            Command::Jobs { command } => commands::jobs::run(command).await,
            Command::Secrets { command } => commands::secrets::run(command).await,
            Command::Schedule { command } => commands::schedule::run(command).await,
            Command::Admin { command } => commands::admin::run(command).await,
            Command::Images { command } => commands::images::run(command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain joined, the way a user wants to read it.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("faas: {}", msg.join(": "));
            ExitCode::FAILURE
        }
    }
}
