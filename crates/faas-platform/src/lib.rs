//! One node of the platform, assembled once for every binary.
//!
//! [`Flags`] and [`FileConfig`] merge into a [`PlatformConfig`];
//! [`build`] turns it into a running [`Platform`]: images, sandboxes, the
//! build sandbox for dependency installs, the node's attestation, and the
//! orchestrator. [`DataLayout`] says where everything lives under the data
//! directory.

#![forbid(unsafe_code)]

mod assemble;
mod config;
mod layout;

pub use assemble::{admin_key_notice, build, Platform, Progress};
pub use config::{
    agent_path, ApiFileConfig, ApiSettings, AttestationSettings, DockerSettings, FileConfig, Flags,
    MicrovmSettings, NativeSettings, PlatformConfig,
};
pub use layout::{owner_label, DataLayout};

use faas_common::SandboxKind;
use faas_images::ImageKind;

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The settings are invalid.
    #[error("{0}")]
    Config(String),
    /// An image could not be found or built.
    #[error("cannot build the {kind} image: {source}")]
    Image {
        /// Which image.
        kind: ImageKind,
        /// What failed.
        #[source]
        source: faas_images::ImageError,
    },
    /// A sandbox could not be set up.
    #[error("cannot start the {kind} sandbox: {source}")]
    Sandbox {
        /// Its kind.
        kind: SandboxKind,
        /// What failed.
        #[source]
        source: faas_executor::ExecutorError,
    },
    /// The microVM guest (kernel, initramfs, root disks) could not be built.
    #[error("cannot build the microVM guest: {0}")]
    Guest(#[source] faas_images::microvm::MicrovmImageError),
    /// The node could not be attested as configured.
    #[error("attestation: {0}")]
    Attestation(String),
    /// The platform state could not be opened.
    #[error("cannot open the platform state in {dir}: {source}")]
    State {
        /// The data directory.
        dir: String,
        /// What failed.
        #[source]
        source: faas_orchestrator::OrchestratorError,
    },
}
