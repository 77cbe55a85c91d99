//! The evidence a worker hands out, and how its report data binds a nonce and a worker key.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::nonce::Nonce;

/// Domain tag hashed in front of the nonce and key to form REPORTDATA.
pub const REPORT_DATA_DOMAIN: &[u8] = b"faas-blueprint/attest/v1\0";

/// REPORTDATA = SHA-512([`REPORT_DATA_DOMAIN`] || nonce || worker public key).
pub fn report_data_for(nonce: &Nonce, worker_public_key: &[u8; 32]) -> [u8; 64] {
    let mut hasher = Sha512::new();
    hasher.update(REPORT_DATA_DOMAIN);
    hasher.update(nonce.0);
    hasher.update(worker_public_key);
    hasher.finalize().into()
}

/// What produced a piece of evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    /// An Intel TDX quote (DCAP, signed by the Quoting Enclave).
    Tdx,
    /// An AMD SEV-SNP attestation report (signed by the chip's VCEK).
    SevSnp,
    /// A software stand-in with no hardware root of trust. Never hardware.
    Simulated,
}

impl EvidenceKind {
    /// True for kinds whose evidence is rooted in a hardware vendor's keys.
    pub fn is_hardware(self) -> bool {
        match self {
            Self::Tdx | Self::SevSnp => true,
            Self::Simulated => false,
        }
    }

    /// Short name as used in JSON (`tdx`, `sev_snp`, `simulated`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tdx => "tdx",
            Self::SevSnp => "sev_snp",
            Self::Simulated => "simulated",
        }
    }
}

impl fmt::Display for EvidenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Attestation evidence for one worker: the raw quote or report plus the values its report
/// data is claimed to bind. Nothing in it is trusted until [`crate::Verifier`] has checked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// What produced `raw`. Verification parses `raw` as this kind, so relabelling fails.
    pub kind: EvidenceKind,
    /// The TDX quote, SEV-SNP report or simulated quote, byte for byte (base64 in JSON).
    #[serde(with = "crate::encoding::base64_bytes")]
    pub raw: Vec<u8>,
    /// Certificates needed to verify `raw`: for SEV-SNP the VCEK (DER or PEM). Base64 in JSON.
    #[serde(
        default,
        with = "crate::encoding::base64_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub certs: Option<Vec<u8>>,
    /// The 64 bytes placed in the report (hex in JSON).
    #[serde(with = "crate::encoding::hex_array")]
    pub report_data: [u8; 64],
    /// The worker's ed25519 public key (hex in JSON).
    #[serde(with = "crate::encoding::hex_array")]
    pub worker_public_key: [u8; 32],
    /// The challenge the evidence answers.
    pub nonce: Nonce,
    /// When the evidence was produced, in Unix seconds (informational: freshness comes from
    /// the nonce).
    pub produced_at: u64,
}

impl Evidence {
    /// Parses evidence from its JSON form.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("evidence always serializes")
    }

    /// Evidence around a bare quote or report (read from a file, say): its report
    /// data is taken from `raw` itself and no worker key or nonce is bound, so
    /// verify it under a policy with `require_binding = false`.
    pub fn from_raw(
        kind: EvidenceKind,
        raw: Vec<u8>,
        certs: Option<Vec<u8>>,
    ) -> Result<Self, RawEvidenceError> {
        let offset = match kind {
            EvidenceKind::Tdx => TDX_REPORT_DATA_OFFSET,
            EvidenceKind::SevSnp => SNP_REPORT_DATA_OFFSET,
            EvidenceKind::Simulated => return Err(RawEvidenceError::Simulated),
        };
        let report_data: [u8; 64] = raw
            .get(offset..offset + 64)
            .and_then(|b| b.try_into().ok())
            .ok_or(RawEvidenceError::TooShort {
                kind,
                len: raw.len(),
            })?;
        Ok(Evidence {
            kind,
            raw,
            certs,
            report_data,
            worker_public_key: [0; 32],
            nonce: Nonce([0; 32]),
            produced_at: 0,
        })
    }

    /// The report data that `nonce` and `worker_public_key` should have produced.
    pub fn expected_report_data(&self) -> [u8; 64] {
        report_data_for(&self.nonce, &self.worker_public_key)
    }
}

/// Offset of the 64 report-data bytes in a TDX v4 quote: the 48-byte header,
/// then 520 bytes into the TD report.
const TDX_REPORT_DATA_OFFSET: usize = 48 + 520;
/// Offset of the report data in an SEV-SNP attestation report.
const SNP_REPORT_DATA_OFFSET: usize = 0x50;

/// Why bare evidence could not be wrapped.
#[derive(Debug, thiserror::Error)]
pub enum RawEvidenceError {
    /// Simulated evidence only exists inside a full [`Evidence`].
    #[error("simulated evidence cannot be loaded from a bare quote")]
    Simulated,
    /// The bytes end before the report data.
    #[error("{len} bytes are too short for a {kind} quote or report")]
    TooShort {
        /// Claimed kind.
        kind: EvidenceKind,
        /// Length given.
        len: usize,
    },
}
