//! Types shared by every FaaS-Blueprint crate.
//!
//! This crate is deliberately light (serde only) because the guest agent links it
//! and must stay small. It holds:
//! - the API types kept compatible with the original plan ([`FunctionDefinition`],
//!   [`InvocationResult`], [`ExecuteFunctionArgs`], [`SandboxConfig`]);
//! - [`protocol`]: the length-prefixed, versioned frames spoken between the host
//!   and the guest agent over a Unix socket (native, Docker) or vsock (microVM).

pub mod api;
pub mod protocol;
pub mod sandbox;
mod types;

pub use types::*;
