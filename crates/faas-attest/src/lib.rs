//! Attestation for FaaS-Blueprint workers: produce hardware evidence (Intel TDX, AMD
//! SEV-SNP) through configfs-tsm, bind it to a per-worker ed25519 key, verify it against a
//! policy, and sign and verify invocation results with the bound key.
//!
//! The flow, and what each side calls, is described in the crate README and in
//! `docs/attestation.md`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod attester;
mod collateral;
mod encoding;
mod evidence;
mod key;
mod launch;
mod nonce;
mod policy;
mod result;
mod verify;

use std::time::{SystemTime, UNIX_EPOCH};

pub use attester::{
    collect_evidence, detect, detect_in, AttestError, Attester, RawEvidence, SimulatedAttester,
    TsmAttester, TSM_REPORT_ROOT,
};
pub use collateral::{CollateralError, CollateralSource, PccsConfig, TdxCollateral};
pub use evidence::{report_data_for, Evidence, EvidenceKind, RawEvidenceError, REPORT_DATA_DOMAIN};
pub use key::{verify_signature, KeyError, WorkerKey};
pub use launch::{tdx_qemu_args, LaunchError, QgsSocket, TdxLaunchConfig};
pub use nonce::{Nonce, NonceError, NonceStore};
pub use policy::{Policy, PolicyError, SevSnpPolicy, SnpTcb, TdxPolicy};
pub use result::{
    verify_result, ResultFields, ResultSignature, SignatureHeaderError, RESULT_DOMAIN,
    RESULT_SIGNATURE_HEADER,
};
pub use verify::{Measurements, Verdict, Verifier};

/// The current time in Unix seconds (what verification and collateral freshness use).
pub fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
