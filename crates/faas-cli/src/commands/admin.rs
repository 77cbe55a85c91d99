//! `faas admin`: keys, tenant quotas, the audit log and the secrets key (an
//! admin key's business).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use faas_common::api::{AuditList, CreateKey, KeyInfo, KeyList, TenantQuota};
use reqwest::Method;

use crate::client::{Client, ServerArgs};

/// Admin commands.
#[derive(Subcommand)]
pub enum AdminCommand {
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// A tenant's quota.
    Quota {
        #[command(subcommand)]
        command: QuotaCommand,
    },
    /// Show the audit log, newest first.
    Audit(AuditArgs),
    /// Re-encrypt every secret under a new secrets key (`secrets.key`).
    RotateKey(Plain),
}

/// `faas admin keys` commands.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a key; it is shown this once.
    Create(CreateArgs),
    /// List keys (never their secrets).
    Ls(Plain),
    /// Revoke a key at once.
    Revoke(RevokeArgs),
}

/// `faas admin quota` commands.
#[derive(Subcommand)]
pub enum QuotaCommand {
    /// Show a tenant's quota.
    Get(TenantArgs),
    /// Replace a tenant's quota; a limit not given is lifted.
    Set(SetQuotaArgs),
}

/// Flags of a command that takes only the server.
#[derive(Args)]
pub struct Plain {
    #[command(flatten)]
    server: ServerArgs,
}

/// `faas admin keys create` flags.
#[derive(Args)]
pub struct CreateArgs {
    /// The tenant the key acts in.
    #[arg(long)]
    tenant: String,
    /// Scopes, comma-separated: deploy, invoke, read, admin.
    #[arg(long, value_delimiter = ',', default_value = "deploy,invoke,read")]
    scopes: Vec<String>,
    /// Limit the key to these functions (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    functions: Option<Vec<String>>,
    #[command(flatten)]
    server: ServerArgs,
}

/// `faas admin keys revoke` flags.
#[derive(Args)]
pub struct RevokeArgs {
    /// Key id (`faas admin keys ls`).
    id: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// A tenant.
#[derive(Args)]
pub struct TenantArgs {
    /// Tenant name.
    tenant: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// `faas admin quota set` flags.
#[derive(Args)]
pub struct SetQuotaArgs {
    /// Tenant name.
    tenant: String,
    /// Invocations per second, on average.
    #[arg(long)]
    invocations_per_sec: Option<f64>,
    /// Invocations in a burst.
    #[arg(long)]
    burst: Option<u32>,
    /// Instances alive at once.
    #[arg(long)]
    max_instances: Option<u32>,
    /// Memory of live instances together, MiB.
    #[arg(long)]
    max_memory_mb: Option<u64>,
    /// Number of functions.
    #[arg(long)]
    max_functions: Option<u32>,
    /// Stored code and dependencies, MiB.
    #[arg(long)]
    max_storage_mb: Option<u64>,
    #[command(flatten)]
    server: ServerArgs,
}

/// `faas admin audit` flags.
#[derive(Args)]
pub struct AuditArgs {
    /// Most entries shown.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Entries older than this cursor (the `next` of an earlier page).
    #[arg(long)]
    before: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Run an admin command.
pub async fn run(cmd: AdminCommand) -> Result<ExitCode> {
    match cmd {
        AdminCommand::Keys { command } => keys(command).await,
        AdminCommand::Quota { command } => quota(command).await,
        AdminCommand::Audit(a) => audit(a).await,
        AdminCommand::RotateKey(a) => {
            let client = Client::new(&a.server)?;
            let v: serde_json::Value = client
                .json(client.request(Method::POST, "/admin/rotate-key"))
                .await?;
            if a.server.json {
                println!("{v}");
            } else {
                println!("new secrets key; {} secrets re-encrypted", v["resealed"]);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn keys(cmd: KeysCommand) -> Result<ExitCode> {
    match cmd {
        KeysCommand::Create(a) => {
            let client = Client::new(&a.server)?;
            let body = CreateKey {
                tenant: a.tenant,
                scopes: a.scopes,
                functions: a.functions,
            };
            let key: KeyInfo = client
                .json(client.request(Method::POST, "/admin/keys").json(&body))
                .await?;
            if a.server.json {
                println!("{}", serde_json::to_string_pretty(&key)?);
                return Ok(ExitCode::SUCCESS);
            }
            let Some(secret) = &key.key else {
                bail!("the server answered without the key");
            };
            eprintln!(
                "key {} for tenant {} ({}); shown only now:",
                key.id,
                key.tenant,
                key.scopes.join(",")
            );
            println!("{secret}");
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Ls(a) => {
            let client = Client::new(&a.server)?;
            let list: KeyList = client
                .json(client.request(Method::GET, "/admin/keys"))
                .await?;
            if a.server.json {
                println!("{}", serde_json::to_string_pretty(&list.keys)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<18} {:<24} {:<26} {:<22} FUNCTIONS",
                "ID", "TENANT", "SCOPES", "CREATED"
            );
            for k in list.keys {
                let functions = k.functions.map(|f| f.join(",")).unwrap_or("*".into());
                println!(
                    "{:<18} {:<24} {:<26} {:<22} {functions}",
                    k.id,
                    k.tenant,
                    k.scopes.join(","),
                    k.created_at
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke(a) => {
            let client = Client::new(&a.server)?;
            client
                .send(client.request(Method::DELETE, &format!("/admin/keys/{}", a.id)))
                .await?;
            println!("revoked {}", a.id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn quota(cmd: QuotaCommand) -> Result<ExitCode> {
    let (server, tenant, request) = match cmd {
        QuotaCommand::Get(a) => (a.server, a.tenant, None),
        QuotaCommand::Set(a) => (
            a.server,
            a.tenant,
            Some(TenantQuota {
                invocations_per_sec: a.invocations_per_sec,
                burst: a.burst,
                max_instances: a.max_instances,
                max_memory_mb: a.max_memory_mb,
                max_functions: a.max_functions,
                max_storage_mb: a.max_storage_mb,
            }),
        ),
    };
    let client = Client::new(&server)?;
    let path = format!("/admin/tenants/{tenant}/quota");
    let quota: TenantQuota = match request {
        None => client.json(client.request(Method::GET, &path)).await?,
        Some(q) => {
            client
                .json(client.request(Method::PUT, &path).json(&q))
                .await?
        }
    };
    if server.json {
        println!("{}", serde_json::to_string_pretty(&quota)?);
        return Ok(ExitCode::SUCCESS);
    }
    let show = |v: Option<String>| v.unwrap_or_else(|| "unlimited".into());
    println!("tenant {tenant}");
    println!(
        "  invocations/s   {}",
        show(quota.invocations_per_sec.map(|v| v.to_string()))
    );
    println!(
        "  burst           {}",
        show(quota.burst.map(|v| v.to_string()))
    );
    println!(
        "  instances       {}",
        show(quota.max_instances.map(|v| v.to_string()))
    );
    println!(
        "  memory          {}",
        show(quota.max_memory_mb.map(|v| format!("{v} MiB")))
    );
    println!(
        "  functions       {}",
        show(quota.max_functions.map(|v| v.to_string()))
    );
    println!(
        "  storage         {}",
        show(quota.max_storage_mb.map(|v| format!("{v} MiB")))
    );
    Ok(ExitCode::SUCCESS)
}

async fn audit(a: AuditArgs) -> Result<ExitCode> {
    let client = Client::new(&a.server)?;
    let mut request = client
        .request(Method::GET, "/admin/audit")
        .query(&[("limit", a.limit.to_string())]);
    if let Some(before) = &a.before {
        request = request.query(&[("before", before)]);
    }
    let list: AuditList = client.json(request).await?;
    if a.server.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in &list.entries {
        let field = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        println!(
            "{} {:<14} tenant={} key={} from={} target={} {}",
            e.at,
            e.action,
            field(&e.tenant),
            field(&e.key_id),
            field(&e.source),
            field(&e.target),
            field(&e.detail)
        );
    }
    if let Some(next) = &list.next {
        eprintln!("older entries: --before {next}");
    }
    Ok(ExitCode::SUCCESS)
}
