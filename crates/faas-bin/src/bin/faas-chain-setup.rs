//! `faas-chain-setup`: puts the platform's Blueprint on a local Tangle chain
//! (`./scripts/chain up` runs it against Anvil with the Tangle v2 contracts).
//!
//! In order: writes the operator's key into a Blueprint file keystore (the one
//! `faas-bin` then runs with) and the owner's into another, creates the FaaS
//! blueprint from its own definition (jobs 0 EXECUTE, 1 DEPLOY, 2 INVOKE), registers
//! the operator for it, requests a service with that operator as the owner, has the
//! operator approve it, and prints `{"blueprint_id": N, "service_id": M}` as its
//! last line. See `docs/blueprint.md`, "Local chain".
//!
//! It uses only crates `faas-bin` already depends on: the keystore's file layout
//! is written here (see [`write_keystore`]) rather than through `blueprint-keystore`,
//! which is not a direct dependency.

#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy_primitives::{hex, keccak256, Address, Bytes, FixedBytes, U256};
use anyhow::{bail, ensure, Context, Result};
use blueprint_client_tangle::contracts::ITangleTypes;
use blueprint_client_tangle::{
    ServiceRequestParams, TangleClient, TangleClientConfig, TangleSettings,
};
use blueprint_runner::config::BlueprintEnvironment;
use clap::Parser;

/// How long one transaction (sent, mined, receipt read) may take.
const TX_TIMEOUT: Duration = Duration::from_secs(60);

/// Service lifetime requested, in seconds: one year, the most the contract
/// accepts (`requestService` reverts with the requested and the maximum TTL).
const SERVICE_TTL_SECS: u64 = 365 * 24 * 3600;

/// Put the FaaS blueprint, an operator and a service on a Tangle chain.
#[derive(Parser)]
#[command(name = "faas-chain-setup", version)]
struct Cli {
    /// HTTP JSON-RPC endpoint of the chain.
    #[arg(long)]
    http_rpc_url: String,
    /// WebSocket JSON-RPC endpoint of the chain.
    #[arg(long)]
    ws_rpc_url: String,
    /// Tangle core contract.
    #[arg(long)]
    tangle_contract: Address,
    /// MultiAssetDelegation (restaking) contract.
    #[arg(long)]
    staking_contract: Address,
    /// Operator status registry contract.
    #[arg(long)]
    status_registry_contract: Address,
    /// Secret key (hex) of the account that creates the blueprint and requests
    /// the service: the service's owner, allowed to submit jobs.
    #[arg(long, env = "FAAS_CHAIN_OWNER_KEY", hide_env_values = true)]
    owner_key: String,
    /// Its public key as `cast wallet public-key` prints it (64 bytes, hex).
    #[arg(long)]
    owner_public_key: String,
    /// Secret key (hex) of the operator (staked in the restaking contract).
    #[arg(long, env = "FAAS_CHAIN_OPERATOR_KEY", hide_env_values = true)]
    operator_key: String,
    /// Its public key as `cast wallet public-key` prints it (64 bytes, hex).
    #[arg(long)]
    operator_public_key: String,
    /// Keystore directory to write the operator key to (for `faas-bin --keystore-uri`).
    #[arg(long)]
    operator_keystore: PathBuf,
    /// Keystore directory to write the owner key to.
    #[arg(long)]
    owner_keystore: PathBuf,
    /// RPC address the operator announces when registering.
    #[arg(long)]
    operator_rpc_address: String,
    /// sha256 (hex) of the `faas-bin` binary, recorded as the blueprint's binary
    /// source (the contract wants a non-zero one).
    #[arg(long)]
    binary_sha256: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faas-chain-setup: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    write_keystore(
        &cli.operator_keystore,
        &cli.operator_key,
        &cli.operator_public_key,
    )
    .context("cannot write the operator keystore")?;
    write_keystore(&cli.owner_keystore, &cli.owner_key, &cli.owner_public_key)
        .context("cannot write the owner keystore")?;

    let owner = client(&cli, &cli.owner_keystore).await?;
    let operator = client(&cli, &cli.operator_keystore).await?;

    let calldata = owner
        .tangle_contract()
        .createBlueprint(definition(&cli.binary_sha256)?)
        .calldata()
        .to_vec();
    let (_, blueprint_id) = timed("create the blueprint", owner.create_blueprint(calldata)).await?;
    eprintln!(
        "faas-chain-setup: blueprint {blueprint_id} created by {}",
        owner.account()
    );

    let registered = timed(
        "register the operator",
        operator.register_operator(blueprint_id, cli.operator_rpc_address.clone(), None),
    )
    .await?;
    ensure!(
        registered.success,
        "registering the operator reverted (tx {:?})",
        registered.tx_hash
    );
    eprintln!(
        "faas-chain-setup: operator {} registered for blueprint {blueprint_id}",
        operator.account()
    );

    let first_free_service = timed("count services", owner.service_count()).await?;
    let request = ServiceRequestParams::new(
        blueprint_id,
        vec![operator.account()],
        vec![owner.account()],
        Bytes::new(),
        SERVICE_TTL_SECS,
        Address::ZERO,
        U256::ZERO,
    );
    let (_, request_id) = timed("request the service", owner.request_service(request)).await?;
    let approved = timed(
        "approve the service request",
        operator.approve_service(request_id),
    )
    .await?;
    ensure!(
        approved.success,
        "approving service request {request_id} reverted (tx {:?})",
        approved.tx_hash
    );

    // Service ids are handed out in order; the approval activated the next one.
    let service_count = timed("count services", owner.service_count()).await?;
    ensure!(
        service_count == first_free_service + 1,
        "expected one new service after approving request {request_id}, found {} -> {}",
        first_free_service,
        service_count
    );
    let service_id = first_free_service;
    let service = timed("read the service", owner.get_service(service_id)).await?;
    ensure!(
        service.blueprintId == blueprint_id,
        "service {service_id} belongs to blueprint {}, not {blueprint_id}",
        service.blueprintId
    );
    ensure!(
        timed(
            "check the operator",
            owner.is_service_operator(service_id, operator.account())
        )
        .await?,
        "operator {} is not an operator of service {service_id}",
        operator.account()
    );
    eprintln!("faas-chain-setup: service {service_id} active (request {request_id})");
    println!(r#"{{"blueprint_id":{blueprint_id},"service_id":{service_id}}}"#);
    Ok(())
}

async fn timed<T, E>(what: &str, fut: impl std::future::Future<Output = Result<T, E>>) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(TX_TIMEOUT, fut).await {
        Ok(r) => r.with_context(|| format!("cannot {what}")),
        Err(_) => bail!("cannot {what}: no answer within {}s", TX_TIMEOUT.as_secs()),
    }
}

async fn client(cli: &Cli, keystore: &Path) -> Result<TangleClient> {
    // The endpoints are `url::Url`s; the environment's fields parse into that
    // type without naming a crate this one does not depend on directly.
    let mut env = BlueprintEnvironment::default();
    env.http_rpc_endpoint = cli.http_rpc_url.parse().context("invalid --http-rpc-url")?;
    env.ws_rpc_endpoint = cli.ws_rpc_url.parse().context("invalid --ws-rpc-url")?;
    let config = TangleClientConfig::new(
        env.http_rpc_endpoint,
        env.ws_rpc_endpoint,
        keystore.display().to_string(),
        TangleSettings {
            blueprint_id: 0,
            service_id: None,
            tangle_contract: cli.tangle_contract,
            staking_contract: cli.staking_contract,
            status_registry_contract: cli.status_registry_contract,
        },
    )
    .test_mode(true);
    TangleClient::new(config)
        .await
        .with_context(|| format!("cannot open the keystore {}", keystore.display()))
}

/// The FaaS blueprint's definition.
///
/// The job schemas are empty, as in the SDK's own LocalTestnet blueprint: the
/// contract checks a non-empty schema against the SDK's compact TLV payload
/// codec, while the platform's jobs take and return the ABI encoding
/// (`docs/blueprint.md`), which no TLV schema describes; a schema here would
/// make the contract revert every `submitJob` and every `submitResult`. Each
/// job's ABI signature is in its description instead.
fn definition(binary_sha256: &str) -> Result<ITangleTypes::BlueprintDefinition> {
    let binary_sha256: FixedBytes<32> = binary_sha256
        .trim()
        .parse()
        .context("--binary-sha256 is not 32 bytes of hex")?;
    use ITangleTypes::*;
    // The contract's enums (tnt-core Types.sol), as the bindings' structs carry them.
    const MEMBERSHIP_FIXED: u8 = 0;
    const MEMBERSHIP_DYNAMIC: u8 = 1;
    const PRICING_PAY_ONCE: u8 = 0;
    const SOURCE_NATIVE: u8 = 2;
    const FETCHER_NONE: u8 = 0;
    const ARCH_AMD64: u8 = 5;
    const OS_LINUX: u8 = 1;
    let job = |name: &str, description: &str| JobDefinition {
        name: name.into(),
        description: description.into(),
        metadataUri: String::new(),
        paramsSchema: Bytes::new(),
        resultSchema: Bytes::new(),
    };
    Ok(BlueprintDefinition {
        metadataUri: METADATA_URI.into(),
        metadataHash: keccak256(METADATA_URI),
        manager: Address::ZERO,
        masterManagerRevision: 0,
        hasConfig: true,
        config: BlueprintConfig {
            membership: MEMBERSHIP_FIXED,
            pricing: PRICING_PAY_ONCE,
            minOperators: 1,
            maxOperators: 0,
            subscriptionRate: U256::ZERO,
            subscriptionInterval: 0,
            eventRate: U256::ZERO,
        },
        metadata: BlueprintMetadata {
            name: "faas".into(),
            description: "Serverless functions in sandboxes: run a command, deploy a \
                          function, invoke it"
                .into(),
            author: "faas".into(),
            category: "Compute".into(),
            codeRepository: String::new(),
            logo: String::new(),
            website: String::new(),
            license: "Apache-2.0".into(),
            profilingData: String::new(),
        },
        jobs: vec![
            job(
                "EXECUTE_FUNCTION",
                "abi (string image, string[] command, string[] env_vars, bytes payload) -> \
                 bytes stdout",
            ),
            job(
                "DEPLOY_FUNCTION",
                "abi (bytes definition_json) -> (string id, uint32 version)",
            ),
            job(
                "INVOKE_FUNCTION",
                "abi (string function, bytes payload) -> bytes response",
            ),
        ],
        registrationSchema: Bytes::new(),
        requestSchema: Bytes::new(),
        sources: vec![BlueprintSource {
            kind: SOURCE_NATIVE,
            container: ImageRegistrySource {
                registry: String::new(),
                image: String::new(),
                tag: String::new(),
            },
            wasm: WasmSource {
                runtime: 0,
                fetcher: FETCHER_NONE,
                artifactUri: String::new(),
                entrypoint: String::new(),
            },
            native: NativeSource {
                fetcher: FETCHER_NONE,
                artifactUri: String::new(),
                entrypoint: "faas-bin".into(),
            },
            testing: TestingSource {
                cargoPackage: String::new(),
                cargoBin: String::new(),
                basePath: String::new(),
            },
            binaries: vec![BlueprintBinary {
                arch: ARCH_AMD64,
                os: OS_LINUX,
                name: "faas-bin".into(),
                sha256: binary_sha256,
            }],
        }],
        supportedMemberships: vec![MEMBERSHIP_FIXED, MEMBERSHIP_DYNAMIC],
    })
}

/// The blueprint's metadata document, inline: the contract requires a metadata
/// URI and hash, and a local chain has nowhere to publish one.
const METADATA_URI: &str = "data:application/json,{\"name\":\"faas\",\"jobs\":[\
    {\"id\":0,\"name\":\"EXECUTE_FUNCTION\",\"params\":\"(string,string[],string[],bytes)\",\"result\":\"bytes\"},\
    {\"id\":1,\"name\":\"DEPLOY_FUNCTION\",\"params\":\"(bytes)\",\"result\":\"(string,uint32)\"},\
    {\"id\":2,\"name\":\"INVOKE_FUNCTION\",\"params\":\"(string,bytes)\",\"result\":\"bytes\"}],\
    \"encoding\":\"abi\"}";

/// Writes `secret_hex` into `dir` as `blueprint-keystore`'s `FileStorage` lays out
/// an ECDSA key: `Ecdsa/<blake3 of the SEC1-compressed public key, hex>`, holding
/// the JSON `[public bytes, secret bytes]`. `public_hex` is the uncompressed key
/// without its `04` prefix (`cast wallet public-key`).
fn write_keystore(dir: &Path, secret_hex: &str, public_hex: &str) -> Result<()> {
    let secret = hex::decode(secret_hex.trim()).context("secret key is not hex")?;
    ensure!(secret.len() == 32, "secret key is not 32 bytes");
    let public = hex::decode(public_hex.trim()).context("public key is not hex")?;
    let xy = match public.len() {
        64 => &public[..],
        65 if public[0] == 4 => &public[1..],
        n => bail!("public key is {n} bytes, expected 64 (x, y)"),
    };
    let mut compressed = Vec::with_capacity(33);
    compressed.push(if xy[63] & 1 == 0 { 0x02 } else { 0x03 });
    compressed.extend_from_slice(&xy[..32]);
    // Secret keys: the directories 0700, the file 0600, from the start.
    let key_dir = dir.join("Ecdsa");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&key_dir)
        .with_context(|| format!("cannot create {}", key_dir.display()))?;
    let name = hex::encode(blake3_short(&compressed));
    let json = format!("[{},{}]", json_bytes(&compressed), json_bytes(&secret));
    let path = key_dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(json.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn json_bytes(bytes: &[u8]) -> String {
    let items: Vec<String> = bytes.iter().map(u8::to_string).collect();
    format!("[{}]", items.join(","))
}

/// BLAKE3 of an input of at most one block (64 bytes): one compression of the
/// single chunk with the flags CHUNK_START | CHUNK_END | ROOT. Enough for the
/// 33-byte public keys the keystore names its files after.
fn blake3_short(input: &[u8]) -> [u8; 32] {
    const IV: [u32; 8] = [
        0x6A09_E667,
        0xBB67_AE85,
        0x3C6E_F372,
        0xA54F_F53A,
        0x510E_527F,
        0x9B05_688C,
        0x1F83_D9AB,
        0x5BE0_CD19,
    ];
    const PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
    const FLAGS: u32 = 1 | 2 | 8;
    assert!(input.len() <= 64, "blake3_short takes at most 64 bytes");

    let mut block = [0u8; 64];
    block[..input.len()].copy_from_slice(input);
    let mut m = [0u32; 16];
    for (i, word) in m.iter_mut().enumerate() {
        *word = u32::from_le_bytes(block[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    }
    let mut s: [u32; 16] = [
        IV[0],
        IV[1],
        IV[2],
        IV[3],
        IV[4],
        IV[5],
        IV[6],
        IV[7],
        IV[0],
        IV[1],
        IV[2],
        IV[3],
        0,
        0,
        input.len() as u32,
        FLAGS,
    ];
    fn g(s: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize, x: u32, y: u32) {
        s[a] = s[a].wrapping_add(s[b]).wrapping_add(x);
        s[d] = (s[d] ^ s[a]).rotate_right(16);
        s[c] = s[c].wrapping_add(s[d]);
        s[b] = (s[b] ^ s[c]).rotate_right(12);
        s[a] = s[a].wrapping_add(s[b]).wrapping_add(y);
        s[d] = (s[d] ^ s[a]).rotate_right(8);
        s[c] = s[c].wrapping_add(s[d]);
        s[b] = (s[b] ^ s[c]).rotate_right(7);
    }
    for round in 0..7 {
        g(&mut s, 0, 4, 8, 12, m[0], m[1]);
        g(&mut s, 1, 5, 9, 13, m[2], m[3]);
        g(&mut s, 2, 6, 10, 14, m[4], m[5]);
        g(&mut s, 3, 7, 11, 15, m[6], m[7]);
        g(&mut s, 0, 5, 10, 15, m[8], m[9]);
        g(&mut s, 1, 6, 11, 12, m[10], m[11]);
        g(&mut s, 2, 7, 8, 13, m[12], m[13]);
        g(&mut s, 3, 4, 9, 14, m[14], m[15]);
        if round < 6 {
            let old = m;
            for (i, word) in m.iter_mut().enumerate() {
                *word = old[PERMUTATION[i]];
            }
        }
    }
    let mut out = [0u8; 32];
    for i in 0..8 {
        out[i * 4..i * 4 + 4].copy_from_slice(&(s[i] ^ s[i + 8]).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake3_matches_the_reference_vectors() {
        // The BLAKE3 reference test vectors (test_vectors.json): input i is the
        // byte i % 251, for lengths 0 and 1 and 64.
        let input: Vec<u8> = (0..64u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            hex::encode(blake3_short(&input[..0])),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            hex::encode(blake3_short(&input[..1])),
            "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"
        );
        assert_eq!(
            hex::encode(blake3_short(&input[..64])),
            "4eed7141ea4a5cd4b788606bd23f46e212af9cacebacdc7d1f4c6dc7f2511b98"
        );
    }
}
