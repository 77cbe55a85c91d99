//! `faas schedule`: cron schedules that invoke a function asynchronously.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use faas_common::api::{ScheduleInfo, ScheduleList};
use faas_common::ScheduleSpec;
use reqwest::Method;

use super::secrets::FunctionArgs;
use crate::client::{Client, ServerArgs};

/// Schedule commands.
#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule: each tick invokes the function asynchronously.
    Add(AddArgs),
    /// List a function's schedules.
    Ls(FunctionArgs),
    /// Remove a schedule.
    Rm(RmArgs),
}

/// `faas schedule add` flags.
#[derive(Args)]
pub struct AddArgs {
    /// Function name or id.
    function: String,
    /// Cron expression, UTC: five fields, or six with seconds first.
    #[arg(long)]
    cron: String,
    /// Payload of each invocation, JSON [default: null].
    #[arg(long, short = 'd')]
    data: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// `faas schedule rm` flags.
#[derive(Args)]
pub struct RmArgs {
    /// Function name or id.
    function: String,
    /// Schedule id (`faas schedule ls`).
    id: String,
    #[command(flatten)]
    server: ServerArgs,
}

fn print(s: &ScheduleInfo) {
    println!(
        "{}  {:<20} next {}  last {}  payload {}",
        s.id,
        s.cron,
        s.next_fire_at.as_deref().unwrap_or("-"),
        s.last_fired_at.as_deref().unwrap_or("-"),
        s.payload
    );
}

/// Run a schedule command.
pub async fn run(command: ScheduleCommand) -> Result<ExitCode> {
    match command {
        ScheduleCommand::Add(a) => {
            let payload = match &a.data {
                Some(d) => serde_json::from_str(d).context("--data is not JSON")?,
                None => serde_json::Value::Null,
            };
            let client = Client::new(&a.server)?;
            let path = format!("/functions/{}/schedules", a.function);
            let spec = ScheduleSpec {
                cron: a.cron,
                payload,
            };
            let made: ScheduleInfo = client
                .json(client.request(Method::POST, &path).json(&spec))
                .await?;
            if a.server.json {
                println!("{}", serde_json::to_string_pretty(&made)?);
            } else {
                print(&made);
            }
        }
        ScheduleCommand::Ls(a) => {
            let client = Client::new(&a.server)?;
            let path = format!("/functions/{}/schedules", a.function);
            let list: ScheduleList = client.json(client.request(Method::GET, &path)).await?;
            if a.server.json {
                println!("{}", serde_json::to_string_pretty(&list.schedules)?);
            } else {
                list.schedules.iter().for_each(print);
            }
        }
        ScheduleCommand::Rm(a) => {
            let client = Client::new(&a.server)?;
            let path = format!("/functions/{}/schedules/{}", a.function, a.id);
            let _: serde_json::Value = client.json(client.request(Method::DELETE, &path)).await?;
            println!("removed {}", a.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
