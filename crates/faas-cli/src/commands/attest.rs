//! `faas attest verify` (check a quote offline) and `faas verify` (check an
//! attested function's response end to end, on the caller's side).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use faas_attest::{
    unix_now, verify_result, Evidence, EvidenceKind, Nonce, Policy, ResultFields, ResultSignature,
    TdxCollateral, Verdict, Verifier,
};
use reqwest::Method;
use serde_json::json;

use crate::client::{Client, ServerArgs};

/// Attestation commands.
#[derive(Subcommand)]
pub enum AttestCommand {
    /// Verify a TDX quote or SEV-SNP report from files; prints the verdict as JSON.
    Verify(QuoteArgs),
}

/// `faas attest verify` flags.
#[derive(Args)]
pub struct QuoteArgs {
    /// The raw quote (TDX) or attestation report (SEV-SNP).
    #[arg(long)]
    quote: PathBuf,
    /// TDX collateral (JSON, as a PCCS serves it).
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// SEV-SNP: the VCEK certificate (DER or PEM).
    #[arg(long)]
    vcek: Option<PathBuf>,
    /// Evidence kind: tdx or sev-snp.
    #[arg(long, default_value = "tdx")]
    kind: String,
    /// Verify as of this Unix time [default: now].
    #[arg(long)]
    at: Option<u64>,
    /// Policy file (JSON or TOML) [default: hardware only, TCB UpToDate, no binding
    /// required since a bare quote carries no worker key].
    #[arg(long)]
    policy: Option<PathBuf>,
}

/// Run an attest command.
pub async fn run(cmd: AttestCommand) -> Result<ExitCode> {
    let AttestCommand::Verify(a) = cmd;
    let kind = parse_kind(&a.kind)?;
    let raw =
        std::fs::read(&a.quote).with_context(|| format!("cannot read {}", a.quote.display()))?;
    let certs = a
        .vcek
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()?;
    let evidence = Evidence::from_raw(kind, raw, certs)?;
    let policy = match &a.policy {
        Some(p) => Policy::from_file(p)?,
        None => Policy {
            require_binding: false,
            ..Policy::default()
        },
    };
    let collateral = a
        .collateral
        .as_ref()
        .map(|p| TdxCollateral::load(p))
        .transpose()?;
    let verdict = Verifier::new(policy)?.verify(
        &evidence,
        None,
        collateral.as_ref(),
        a.at.unwrap_or_else(unix_now),
    );
    print_verdict(&verdict)
}

fn parse_kind(kind: &str) -> Result<EvidenceKind> {
    match kind {
        "tdx" => Ok(EvidenceKind::Tdx),
        "sev-snp" | "sev_snp" | "snp" => Ok(EvidenceKind::SevSnp),
        other => bail!("unknown evidence kind {other:?} (tdx or sev-snp)"),
    }
}

fn print_verdict(verdict: &Verdict) -> Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(verdict)?);
    Ok(if verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `faas verify` flags.
#[derive(Args)]
pub struct VerifyArgs {
    /// Function name (it must require attestation).
    name: String,
    /// Payload (usually JSON).
    #[arg(long, short = 'd')]
    data: Option<String>,
    /// Policy the node's evidence must satisfy (JSON or TOML) [default: hardware only].
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Accept simulated evidence (test setups only; the verdict still says simulated).
    #[arg(long)]
    allow_simulated: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Invoke, fetch evidence over our own nonce, check both; print the verdict.
pub async fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let resp = client
        .send(
            client
                .request(Method::POST, &format!("/functions/{}/invoke", args.name))
                .body(args.data.clone().unwrap_or_default()),
        )
        .await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let signature = header(faas_attest::RESULT_SIGNATURE_HEADER).with_context(|| {
        format!(
            "{} answered without a result signature: it does not require attestation",
            args.name
        )
    })?;
    let request_id = header("x-faas-request-id").context("no request id in the response")?;
    let version: u32 = header("x-faas-version")
        .and_then(|v| v.parse().ok())
        .context("no version in the response")?;
    let body = resp.bytes().await.context("cannot read the response")?;

    // Fresh evidence over a nonce of ours: it cannot be a replay.
    let nonce = Nonce::random()?;
    let att: serde_json::Value = client
        .json(client.request(
            Method::GET,
            &format!("/attestation?nonce={}", nonce.to_hex()),
        ))
        .await?;
    let evidence: Evidence = serde_json::from_value(att["evidence"].clone()).context("evidence")?;
    let collateral = match &att["collateral"] {
        serde_json::Value::Null => None,
        c => Some(TdxCollateral::from_json(&c.to_string())?),
    };
    let mut policy = match &args.policy {
        Some(p) => Policy::from_file(p)?,
        None => Policy::default(),
    };
    policy.allow_simulated |= args.allow_simulated;
    let verifier = Verifier::new(policy)?;
    let now = unix_now();
    let fresh = verifier.verify(&evidence, Some(&nonce), collateral.as_ref(), now);
    let signature = ResultSignature::from_header(&signature)?;
    let fields = ResultFields {
        request_id: &request_id,
        function: &args.name,
        version,
        body: &body,
    };
    let result = verify_result(
        &signature,
        &evidence,
        &verifier,
        collateral.as_ref(),
        &fields,
        now,
    );
    let ok = fresh.ok && result.ok;
    let out = json!({
        "ok": ok,
        "simulated": result.simulated,
        "hardware": result.hardware,
        "request_id": request_id,
        "response": String::from_utf8_lossy(&body),
        "evidence": fresh,
        "signature": result,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
