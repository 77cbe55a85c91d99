//! `faas secrets`: a function's secrets, which reach it as environment
//! variables and are never shown back.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use faas_common::api::SecretList;
use reqwest::Method;

use crate::client::{Client, ServerArgs};

/// Largest secret value (the server's limit too).
const MAX_SECRET_BYTES: u64 = 32 * 1024;

/// Secret commands.
#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Set a secret; the value comes from stdin (so it stays out of shell
    /// history and `ps`), or from `--value`.
    Set(SetArgs),
    /// List a function's secret names.
    Ls(FunctionArgs),
    /// Delete a secret.
    Rm(RmArgs),
}

/// `faas secrets set` flags.
#[derive(Args)]
pub struct SetArgs {
    /// Function name or id.
    function: String,
    /// Secret name (an environment variable name).
    name: String,
    /// The value (else read from stdin).
    #[arg(long)]
    value: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// A function (`faas secrets ls`, `faas schedule ls`).
#[derive(Args)]
pub struct FunctionArgs {
    /// Function name or id.
    pub(crate) function: String,
    #[command(flatten)]
    pub(crate) server: ServerArgs,
}

/// `faas secrets rm` flags.
#[derive(Args)]
pub struct RmArgs {
    /// Function name or id.
    function: String,
    /// Secret name.
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// Run a secrets command.
pub async fn run(cmd: SecretsCommand) -> Result<ExitCode> {
    match cmd {
        SecretsCommand::Set(a) => {
            let value = match a.value {
                Some(v) => v.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .take(MAX_SECRET_BYTES + 1)
                        .read_to_end(&mut buf)
                        .context("cannot read the value from stdin")?;
                    if buf.len() as u64 > MAX_SECRET_BYTES {
                        bail!("a secret holds at most {MAX_SECRET_BYTES} bytes");
                    }
                    // `echo value | faas secrets set` means the value, not its newline.
                    if buf.ends_with(b"\n") {
                        buf.pop();
                    }
                    buf
                }
            };
            let client = Client::new(&a.server)?;
            let path = format!("/functions/{}/secrets/{}", a.function, a.name);
            client
                .send(client.request(Method::PUT, &path).body(value))
                .await?;
            println!("set {} on {}", a.name, a.function);
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::Ls(a) => {
            let client = Client::new(&a.server)?;
            let path = format!("/functions/{}/secrets", a.function);
            let list: SecretList = client.json(client.request(Method::GET, &path)).await?;
            if a.server.json {
                println!("{}", serde_json::to_string(&list.secrets)?);
            } else {
                for name in list.secrets {
                    println!("{name}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::Rm(a) => {
            let client = Client::new(&a.server)?;
            let path = format!("/functions/{}/secrets/{}", a.function, a.name);
            client.send(client.request(Method::DELETE, &path)).await?;
            println!("deleted {} from {}", a.name, a.function);
            Ok(ExitCode::SUCCESS)
        }
    }
}
