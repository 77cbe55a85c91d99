//! Shared fixtures: the vendor samples in tests/data (see tests/data/README.md).

#![allow(dead_code)]

use faas_attest::{Evidence, EvidenceKind, Nonce, Policy, TdxCollateral, WorkerKey};

/// 2025-06-20T00:00:00Z: inside the validity of `tdx_quote_collateral.json`.
pub const TDX_SAMPLE_TIME: u64 = 1_750_377_600;

pub const TDX_QUOTE: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tdx_quote"));
pub const TDX_QUOTE_OUTDATED: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/tdx_quote_outdated"
));
pub const TDX_COLLATERAL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/tdx_quote_collateral.json"
));
pub const TDX_OUTDATED_COLLATERAL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/tdx_quote_outdated_collateral.json"
));
pub const SGX_COLLATERAL: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/sgx_quote_collateral.json"
));
pub const SNP_REPORT_HEX: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/report_milan.hex"
));
pub const SNP_VCEK_DER: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/vcek_milan.der"
));

/// Offsets in a TDX v4 quote: 48-byte header, then the TD report.
pub const TDX_MRTD_OFFSET: usize = 48 + 136;
pub const TDX_REPORT_DATA_OFFSET: usize = 48 + 520;
/// REPORT_DATA offset in a SEV-SNP attestation report.
pub const SNP_REPORT_DATA_OFFSET: usize = 0x50;
pub const SNP_MEASUREMENT_OFFSET: usize = 0x90;

pub fn collateral(json: &str) -> TdxCollateral {
    TdxCollateral::from_json(json).unwrap()
}

pub fn snp_report() -> Vec<u8> {
    hex::decode(SNP_REPORT_HEX.trim()).unwrap()
}

/// Evidence wrapping a vendor sample: its report data is whatever the sample was made
/// with, so it does not bind `nonce`/`worker_public_key` (policies for samples turn
/// `require_binding` off).
pub fn sample_evidence(kind: EvidenceKind, raw: &[u8], report_data_offset: usize) -> Evidence {
    Evidence {
        kind,
        raw: raw.to_vec(),
        certs: None,
        report_data: raw[report_data_offset..report_data_offset + 64]
            .try_into()
            .unwrap(),
        worker_public_key: WorkerKey::generate().unwrap().public_key(),
        nonce: Nonce::random().unwrap(),
        produced_at: 0,
    }
}

/// The default policy without the binding requirement (vendor samples cannot satisfy it).
pub fn sample_policy() -> Policy {
    Policy {
        require_binding: false,
        ..Policy::default()
    }
}
