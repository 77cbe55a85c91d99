//! Producing evidence: hardware through configfs-tsm, or a clearly marked simulation.

mod simulated;
mod tsm;

use std::path::PathBuf;

pub use simulated::SimulatedAttester;
pub(crate) use simulated::{is_simulated_quote, parse_simulated_quote};
pub use tsm::{detect, detect_in, TsmAttester, TSM_REPORT_ROOT};

use crate::evidence::{report_data_for, Evidence, EvidenceKind};
use crate::nonce::Nonce;

/// What an attester returns for one request: the raw quote or report and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvidence {
    /// Kind of `raw`.
    pub kind: EvidenceKind,
    /// The quote, report or simulated quote, byte for byte.
    pub raw: Vec<u8>,
    /// Certificates returned alongside (SEV-SNP: the VCEK, when the host provides it).
    pub certs: Option<Vec<u8>>,
}

/// Why an attester could not produce evidence.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// A configfs-tsm file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`mkdir`, `read`, `write`).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The TSM provider is not one this crate understands.
    #[error("unsupported configfs-tsm provider {0:?} (expected tdx_guest or sev_guest)")]
    UnsupportedProvider(String),
    /// Another writer kept changing the report request between our write and read.
    #[error("configfs-tsm report changed under us {0} times (concurrent writer); giving up")]
    GenerationConflict(u32),
    /// A file held something other than what the kernel documents.
    #[error("unexpected configfs-tsm content in {path}: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

/// Something that can put 64 bytes of report data into signed evidence.
///
/// Calls block (a TDX quote takes the host's quote generation service a moment); run them
/// on a blocking thread from async code.
pub trait Attester: Send + Sync {
    /// The kind of evidence this attester produces.
    fn kind(&self) -> EvidenceKind;

    /// Produces evidence whose signed report data is exactly `report_data`.
    fn attest(&self, report_data: &[u8; 64]) -> Result<RawEvidence, AttestError>;
}

/// Produces [`Evidence`] binding `nonce` and `worker_public_key`: computes the report data
/// with [`report_data_for`], asks the attester, and records the inputs next to the result.
pub fn collect_evidence(
    attester: &dyn Attester,
    worker_public_key: [u8; 32],
    nonce: Nonce,
) -> Result<Evidence, AttestError> {
    let report_data = report_data_for(&nonce, &worker_public_key);
    let raw = attester.attest(&report_data)?;
    Ok(Evidence {
        kind: raw.kind,
        raw: raw.raw,
        certs: raw.certs,
        report_data,
        worker_public_key,
        nonce,
        produced_at: crate::unix_now(),
    })
}
