//! The platform as a Tangle Blueprint: three jobs on a Blueprint [`Router`].
//!
//! | Job | Id | Arguments (ABI) | Result (ABI) |
//! |---|---|---|---|
//! | [`jobs::execute_function`] | [`EXECUTE_FUNCTION`] = 0 | `(string image, string[] command, string[] env_vars, bytes payload)` | `bytes` stdout |
//! | [`jobs::deploy_function`] | [`DEPLOY_FUNCTION`] = 1 | `(bytes definition_json)` | `(string id, uint32 version)` |
//! | [`jobs::invoke_function`] | [`INVOKE_FUNCTION`] = 2 | `(string function, bytes payload)` | `bytes` response |
//!
//! Every route is wrapped in `TangleLayer`, which puts the call's call id and
//! service id on its result so that `TangleConsumer` submits it. A failure is a
//! job error ([`jobs::JobError`]) with the reason and the function's output.
//! See `docs/blueprint.md`.

#![forbid(unsafe_code)]

mod context;
pub mod jobs;

use blueprint_core::Job;
use blueprint_router::Router;
use blueprint_tangle_extra::TangleLayer;

pub use context::{ChainLedger, FaaSContext};

/// Job id of [`jobs::execute_function`].
pub const EXECUTE_FUNCTION: u8 = 0;
/// Job id of [`jobs::deploy_function`].
pub const DEPLOY_FUNCTION: u8 = 1;
/// Job id of [`jobs::invoke_function`].
pub const INVOKE_FUNCTION: u8 = 2;

/// The router `faas-bin` runs: every job, each behind `TangleLayer`.
pub fn router(ctx: FaaSContext) -> Router {
    Router::new()
        .route(EXECUTE_FUNCTION, jobs::execute_function.layer(TangleLayer))
        .route(DEPLOY_FUNCTION, jobs::deploy_function.layer(TangleLayer))
        .route(INVOKE_FUNCTION, jobs::invoke_function.layer(TangleLayer))
        .with_context(ctx)
}
