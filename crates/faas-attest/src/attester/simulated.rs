//! A software stand-in for machines without a TEE. Its quotes say SIMULATED in their first
//! bytes and are signed by an ed25519 key that lives in this process: they prove nothing
//! about the machine and can never pass as a TDX quote or SEV-SNP report.
//!
//! Layout (184 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 16 | magic `SIMULATED-QUOTE1` |
//! | 16 | 64 | report data |
//! | 80 | 8 | produced at, Unix seconds, little-endian |
//! | 88 | 32 | ed25519 public key of the simulator |
//! | 120 | 64 | ed25519 signature over [`SIGNATURE_DOMAIN`] and bytes 0..120 |

use super::{AttestError, Attester, RawEvidence};
use crate::evidence::EvidenceKind;
use crate::key::{verify_signature, WorkerKey};

const MAGIC: &[u8; 16] = b"SIMULATED-QUOTE1";
const SIGNED_LEN: usize = 120;
const QUOTE_LEN: usize = SIGNED_LEN + 64;
/// Hashed in front of the signed bytes so the simulator's signatures mean nothing elsewhere.
const SIGNATURE_DOMAIN: &[u8] = b"faas-blueprint/simulated-quote/v1\0";

/// Produces simulated quotes. Every call logs a warning: simulated evidence must be visible.
pub struct SimulatedAttester {
    key: WorkerKey,
}

impl SimulatedAttester {
    /// A simulator with a fresh signing key.
    pub fn generate() -> Result<Self, AttestError> {
        let key = WorkerKey::generate().map_err(|e| AttestError::Random(e.to_string()))?;
        tracing::warn!(
            simulator_key = %hex::encode(key.public_key()),
            "SIMULATED attestation enabled: evidence from this worker is not hardware-backed"
        );
        Ok(Self { key })
    }

    /// The simulator's public key (embedded in each quote).
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }
}

impl std::fmt::Debug for SimulatedAttester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedAttester")
            .field("public_key", &hex::encode(self.public_key()))
            .finish()
    }
}

impl Attester for SimulatedAttester {
    fn kind(&self) -> EvidenceKind {
        EvidenceKind::Simulated
    }

    fn attest(&self, report_data: &[u8; 64]) -> Result<RawEvidence, AttestError> {
        let mut raw = Vec::with_capacity(QUOTE_LEN);
        raw.extend_from_slice(MAGIC);
        raw.extend_from_slice(report_data);
        raw.extend_from_slice(&crate::unix_now().to_le_bytes());
        raw.extend_from_slice(&self.key.public_key());
        let signature = self.key.sign(&signed_message(&raw));
        raw.extend_from_slice(&signature);
        tracing::warn!("produced SIMULATED attestation evidence (no hardware root of trust)");
        Ok(RawEvidence {
            kind: EvidenceKind::Simulated,
            raw,
            certs: None,
        })
    }
}

fn signed_message(signed: &[u8]) -> Vec<u8> {
    [SIGNATURE_DOMAIN, signed].concat()
}

/// A simulated quote whose self-signature verified.
pub(crate) struct SimulatedQuote {
    pub report_data: [u8; 64],
    pub signer: [u8; 32],
}

/// True when `raw` carries the simulated-quote marker, whatever it is labelled as.
pub(crate) fn is_simulated_quote(raw: &[u8]) -> bool {
    raw.starts_with(MAGIC)
}

/// Parses a simulated quote and checks its self-signature (integrity only: anyone can make
/// one).
pub(crate) fn parse_simulated_quote(raw: &[u8]) -> Result<SimulatedQuote, String> {
    if raw.len() != QUOTE_LEN {
        return Err(format!(
            "a simulated quote is {QUOTE_LEN} bytes, got {}",
            raw.len()
        ));
    }
    if &raw[..16] != MAGIC {
        return Err("missing SIMULATED-QUOTE1 marker".into());
    }
    let report_data: [u8; 64] = raw[16..80].try_into().expect("length checked");
    let signer: [u8; 32] = raw[88..120].try_into().expect("length checked");
    let signature: [u8; 64] = raw[120..].try_into().expect("length checked");
    verify_signature(&signer, &signed_message(&raw[..SIGNED_LEN]), &signature)
        .map_err(|e| format!("simulated quote signature: {e}"))?;
    Ok(SimulatedQuote {
        report_data,
        signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let sim = SimulatedAttester::generate().unwrap();
        let out = sim.attest(&[9u8; 64]).unwrap();
        assert!(out.raw.starts_with(b"SIMULATED"));
        let parsed = parse_simulated_quote(&out.raw).unwrap();
        assert_eq!(parsed.report_data, [9u8; 64]);
        assert_eq!(parsed.signer, sim.public_key());
        let mut bad = out.raw.clone();
        bad[20] ^= 1;
        assert!(parse_simulated_quote(&bad).is_err());
        assert!(parse_simulated_quote(&out.raw[..100]).is_err());
    }
}
