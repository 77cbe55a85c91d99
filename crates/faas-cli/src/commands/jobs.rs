//! `faas jobs`: bind Blueprint job ids to functions.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use faas_common::api::{BindJob, JobBinding, JobList};
use reqwest::Method;

use crate::client::{Client, ServerArgs};

/// Job commands.
#[derive(Subcommand)]
pub enum JobsCommand {
    /// Bind a job id to a function: `POST /job/<job_id>` (the Blueprint SDK's
    /// HTTP FaaS protocol) then invokes it with the raw job arguments.
    Bind(BindArgs),
    /// Remove a job's binding.
    Unbind(UnbindArgs),
    /// List bindings.
    Ls(ListArgs),
}

/// `faas jobs bind` flags.
#[derive(Args)]
pub struct BindArgs {
    /// Blueprint job id.
    job_id: u32,
    /// Function name or id.
    function: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// `faas jobs unbind` flags.
#[derive(Args)]
pub struct UnbindArgs {
    /// Blueprint job id.
    job_id: u32,
    #[command(flatten)]
    server: ServerArgs,
}

/// `faas jobs ls` flags.
#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    server: ServerArgs,
}

/// Run a jobs command.
pub async fn run(cmd: JobsCommand) -> Result<ExitCode> {
    match cmd {
        JobsCommand::Bind(a) => {
            let client = Client::new(&a.server)?;
            let path = format!("/jobs/{}", a.job_id);
            let body = BindJob {
                function: a.function,
            };
            let b: JobBinding = client
                .json(client.request(Method::PUT, &path).json(&body))
                .await?;
            if a.server.json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                println!("job {} -> {} ({})", b.job_id, b.function, b.function_id);
            }
        }
        JobsCommand::Unbind(a) => {
            let client = Client::new(&a.server)?;
            client
                .send(client.request(Method::DELETE, &format!("/jobs/{}", a.job_id)))
                .await?;
            println!("job {} unbound", a.job_id);
        }
        JobsCommand::Ls(a) => {
            let client = Client::new(&a.server)?;
            let list: JobList = client.json(client.request(Method::GET, "/jobs")).await?;
            if a.server.json {
                println!("{}", serde_json::to_string_pretty(&list.jobs)?);
            } else if list.jobs.is_empty() {
                println!("no jobs bound");
            } else {
                for b in list.jobs {
                    println!("job {:<6} -> {} ({})", b.job_id, b.function, b.function_id);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
