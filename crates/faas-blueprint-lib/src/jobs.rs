//! The job handlers. Arguments arrive ABI-encoded (Tangle v2), results leave
//! ABI-encoded; a failure is a job error, never an empty result.

use alloy_primitives::Bytes;
use blueprint_core::extract::Context;
use blueprint_tangle_extra::extract::{
    BlockNumber, CallId, Caller as ChainCaller, ServiceId, TangleArg, TangleResult,
};
use faas_auth::{Caller, TenantId};
use faas_common::{ExecuteFunctionArgs, FunctionDefinition};
use faas_orchestrator::OrchestratorError;

use crate::FaaSContext;

/// Why a job failed. Its message is what the job error carries.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// `EXECUTE_FUNCTION`: the command failed (non-zero exit, killed, timed out).
    #[error("command failed: {error}; stderr: {stderr}")]
    CommandFailed {
        /// Why, with the exit status (`command exited with status 3`).
        error: String,
        /// What the command wrote to stderr.
        stderr: String,
    },
    /// `DEPLOY_FUNCTION`: the bytes are not a function definition.
    #[error("invalid function definition JSON: {0}")]
    InvalidDefinition(#[source] serde_json::Error),
    /// The function ran and failed.
    #[error("function failed: {message}; logs: {logs}")]
    FunctionFailed {
        /// Request id of the invocation.
        request_id: String,
        /// One-line reason.
        message: String,
        /// What the function printed.
        logs: String,
    },
    /// The platform refused or could not serve the request (unknown function,
    /// invalid definition, payload too large, no capacity, ...).
    #[error("{0}")]
    Platform(#[source] OrchestratorError),
    /// The call was handed out again (after a restart) but the contract has
    /// completed it: not run, since a second result would be refused.
    #[error("call {0} is already answered on chain: not run again")]
    AlreadyAnswered(u64),
}

/// Where a call comes from on chain.
struct OnChain {
    service_id: u64,
    call_id: u64,
    block: u64,
}

impl OnChain {
    fn of(
        ServiceId(service_id): ServiceId,
        CallId(call_id): CallId,
        BlockNumber(block): BlockNumber,
    ) -> Self {
        OnChain {
            service_id,
            call_id,
            block,
        }
    }

    /// `Err(AlreadyAnswered)` when the context's ledger says the call is answered;
    /// records its block with the ledger either way.
    async fn check(&self, ctx: &FaaSContext) -> Result<(), JobError> {
        let Some(ledger) = ctx.ledger() else {
            return Ok(());
        };
        ledger.seen_block(self.block);
        if ledger.is_answered(self.service_id, self.call_id).await {
            return Err(JobError::AlreadyAnswered(self.call_id));
        }
        Ok(())
    }
}

/// The platform caller of a job: a member of the tenant derived from the
/// on-chain caller's address (`tangle:0x...`), so every job reaches only that
/// tenant's functions.
fn caller_of(chain: ChainCaller) -> Caller {
    let tenant = TenantId::of_chain_caller(&format!("{:#x}", chain.as_address()))
        .expect("an address is always a valid tenant");
    Caller::tenant_member(tenant).from_source(format!("tangle:{:#x}", chain.as_address()))
}

impl From<OrchestratorError> for JobError {
    fn from(e: OrchestratorError) -> Self {
        match e {
            OrchestratorError::Invocation {
                request_id,
                message,
                logs,
                ..
            } => JobError::FunctionFailed {
                request_id,
                message,
                logs,
            },
            other => JobError::Platform(other),
        }
    }
}

/// Job 0, `EXECUTE_FUNCTION`: run `command` in runtime `image` (`python`, `node`,
/// `shell`) with `env_vars` (`KEY=VALUE`) and `payload` on stdin.
///
/// ABI: `(string image, string[] command, string[] env_vars, bytes payload)`;
/// returns `bytes`: the command's stdout.
pub async fn execute_function(
    Context(ctx): Context<FaaSContext>,
    service: ServiceId,
    call: CallId,
    block: BlockNumber,
    chain: ChainCaller,
    TangleArg((image, command, env_vars, payload)): TangleArg<(
        String,
        Vec<String>,
        Vec<String>,
        Bytes,
    )>,
) -> Result<TangleResult<Bytes>, JobError> {
    tracing::info!(%image, ?command, "job execute_function");
    let on_chain = OnChain::of(service, call, block);
    logged(
        "execute_function",
        async {
            on_chain.check(&ctx).await?;
            let result = ctx
                .orchestrator()
                .execute(
                    &caller_of(chain),
                    ExecuteFunctionArgs {
                        image,
                        command,
                        env_vars: Some(env_vars),
                        payload: payload.to_vec(),
                    },
                )
                .await?;
            if let Some(error) = result.error {
                return Err(JobError::CommandFailed {
                    error,
                    stderr: result.logs.unwrap_or_default(),
                });
            }
            Ok(TangleResult(Bytes::from(
                result.response.unwrap_or_default(),
            )))
        }
        .await,
    )
}

/// Job 1, `DEPLOY_FUNCTION`: deploy a function (a new version when the name
/// exists).
///
/// ABI: `(bytes definition)`, the UTF-8 JSON of a `FunctionDefinition` as
/// `POST /functions` takes it; returns `(string id, uint32 version)`.
pub async fn deploy_function(
    Context(ctx): Context<FaaSContext>,
    service: ServiceId,
    call: CallId,
    block: BlockNumber,
    chain: ChainCaller,
    TangleArg((definition,)): TangleArg<(Bytes,)>,
) -> Result<TangleResult<(String, u32)>, JobError> {
    let def: FunctionDefinition =
        serde_json::from_slice(&definition).map_err(JobError::InvalidDefinition)?;
    tracing::info!(function = %def.name, "job deploy_function");
    let on_chain = OnChain::of(service, call, block);
    logged(
        "deploy_function",
        async {
            on_chain.check(&ctx).await?;
            let info = ctx.orchestrator().deploy(&caller_of(chain), def).await?;
            Ok(TangleResult((info.id, info.version)))
        }
        .await,
    )
}

/// Job 2, `INVOKE_FUNCTION`: invoke the newest version of a function.
///
/// ABI: `(string function, bytes payload)`, `function` being its id or name;
/// returns `bytes`: the function's response body.
pub async fn invoke_function(
    Context(ctx): Context<FaaSContext>,
    service: ServiceId,
    call: CallId,
    block: BlockNumber,
    chain: ChainCaller,
    TangleArg((function, payload)): TangleArg<(String, Bytes)>,
) -> Result<TangleResult<Bytes>, JobError> {
    tracing::info!(%function, "job invoke_function");
    let on_chain = OnChain::of(service, call, block);
    logged(
        "invoke_function",
        async {
            on_chain.check(&ctx).await?;
            let invocation = ctx
                .orchestrator()
                .invoke(&caller_of(chain), &function, payload.to_vec())
                .await?;
            Ok(TangleResult(Bytes::from(invocation.body)))
        }
        .await,
    )
}

/// Logs a job error: the SDK's `TangleConsumer` drops it at trace level and
/// submits nothing, so without this line an operator never sees why a call
/// stays unanswered.
fn logged<T>(job: &str, result: Result<T, JobError>) -> Result<T, JobError> {
    match &result {
        Err(e @ JobError::AlreadyAnswered(_)) => tracing::info!(job, "{e}"),
        Err(e) => {
            tracing::warn!(job, error = %e, "job failed: no result is submitted for this call")
        }
        Ok(_) => {}
    }
    result
}
