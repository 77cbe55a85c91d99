//! Types shared by every FaaS-Blueprint crate.
//!
//! This crate is deliberately light (serde only) because the guest agent links it
//! and must stay small. It holds:
//! - the API types whose names existing clients rely on ([`FunctionDefinition`],
//!   [`InvocationResult`], [`ExecuteFunctionArgs`], [`SandboxConfig`]);
//! - [`contract`]: the names, paths and bounds host and guest agent share;
//! - [`deps`]: the dependency specifiers a function may declare;
//! - [`sandbox`]: the seccomp policy and limits every sandbox kind enforces;
//! - [`validate`]: the checks of a function definition that need nothing else;
//! - [`protocol`]: the length-prefixed, versioned frames spoken between the host
//!   and the guest agent over a Unix socket (native, Docker) or vsock (microVM).

#![forbid(unsafe_code)]

pub mod api;
pub mod contract;
pub mod deps;
pub mod manifest;
pub mod network;
pub mod protocol;
pub mod sandbox;
mod types;
pub mod validate;

pub use types::*;

/// The base64 implementation of the wire formats (`code_base64`, payloads,
/// the Blueprint config header), for crates that speak them.
pub use base64;
