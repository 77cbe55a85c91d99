//! AMD SEV-SNP verification against the sev crate's real Milan sample.

mod common;

use base64::Engine as _;
use common::*;
use faas_attest::{Evidence, EvidenceKind, Policy, SevSnpPolicy, SnpTcb, Verifier};

fn snp_evidence(raw: &[u8]) -> Evidence {
    let mut e = sample_evidence(EvidenceKind::SevSnp, raw, SNP_REPORT_DATA_OFFSET);
    e.certs = Some(SNP_VCEK_DER.to_vec());
    e
}

fn verify(policy: Policy, evidence: &Evidence) -> faas_attest::Verdict {
    Verifier::new(policy)
        .unwrap()
        .verify(evidence, None, None, faas_attest::unix_now())
}

#[test]
fn milan_sample_verifies_against_the_vcek_and_amd_chain() {
    let v = verify(sample_policy(), &snp_evidence(&snp_report()));
    assert!(v.ok, "{:?}", v.reasons);
    assert!(v.hardware);
    assert!(!v.simulated);
    assert_eq!(v.kind, EvidenceKind::SevSnp);
    assert_eq!(v.tcb_status, None);
    let m = &v.measurements;
    assert_eq!(m.amd_product.as_deref(), Some("Milan"));
    let report = snp_report();
    let measurement = hex::encode(&report[SNP_MEASUREMENT_OFFSET..SNP_MEASUREMENT_OFFSET + 48]);
    assert_eq!(m.measurement.as_deref(), Some(measurement.as_str()));
    assert!(m.reported_tcb.is_some());
}

#[test]
fn a_pem_vcek_is_accepted_too() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(SNP_VCEK_DER);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut evidence = snp_evidence(&snp_report());
    evidence.certs = Some(pem.into_bytes());
    let v = verify(sample_policy(), &evidence);
    assert!(v.ok, "{:?}", v.reasons);
}

#[test]
fn a_tampered_report_is_refused() {
    for offset in [SNP_MEASUREMENT_OFFSET + 3, SNP_REPORT_DATA_OFFSET, 21] {
        let mut report = snp_report();
        report[offset] ^= 0x01;
        let evidence = snp_evidence(&report);
        let v = verify(sample_policy(), &evidence);
        assert!(!v.ok, "flipped byte {offset:#x} accepted");
        assert!(!v.hardware, "flipped byte {offset:#x}");
        assert!(!v.reasons.is_empty());
    }
}

#[test]
fn a_tampered_or_missing_vcek_is_refused() {
    let mut evidence = snp_evidence(&snp_report());
    evidence.certs = None;
    let v = verify(sample_policy(), &evidence);
    assert!(!v.ok);
    assert!(v.reasons[0].contains("no VCEK"), "{:?}", v.reasons);

    let mut vcek = SNP_VCEK_DER.to_vec();
    let n = vcek.len();
    vcek[n - 10] ^= 0xff; // inside the ASK's signature over the VCEK
    evidence.certs = Some(vcek);
    let v = verify(sample_policy(), &evidence);
    assert!(!v.ok);
    assert!(!v.hardware);
}

#[test]
fn measurement_allowlist_and_minimum_tcb_apply() {
    let evidence = snp_evidence(&snp_report());
    let report = snp_report();
    let measurement = hex::encode(&report[SNP_MEASUREMENT_OFFSET..SNP_MEASUREMENT_OFFSET + 48]);

    let mut policy = sample_policy();
    policy.sev_snp = SevSnpPolicy {
        measurements: Some(vec!["ab".repeat(48)]),
        ..SevSnpPolicy::default()
    };
    let v = verify(policy.clone(), &evidence);
    assert!(!v.ok);
    assert!(v.hardware);
    assert!(v.reasons[0].starts_with("measurement"), "{:?}", v.reasons);

    policy.sev_snp.measurements = Some(vec![measurement]);
    assert!(verify(policy.clone(), &evidence).ok);

    let reported = verify(policy.clone(), &evidence)
        .measurements
        .reported_tcb
        .unwrap();
    policy.sev_snp.min_tcb = SnpTcb {
        snp: reported.snp + 1,
        ..reported
    };
    let v = verify(policy.clone(), &evidence);
    assert!(!v.ok);
    assert!(
        v.reasons[0].contains("below the policy's minimum"),
        "{:?}",
        v.reasons
    );

    policy.sev_snp.min_tcb = reported;
    assert!(verify(policy, &evidence).ok);
}

#[test]
fn binding_is_checked_on_the_real_report_data() {
    let v = verify(Policy::default(), &snp_evidence(&snp_report()));
    assert!(!v.ok);
    assert!(v.hardware);
    assert!(
        v.reasons.iter().any(|r| r.contains("report data")),
        "{:?}",
        v.reasons
    );
}

#[test]
fn a_report_relabelled_as_tdx_is_refused() {
    let mut evidence = snp_evidence(&snp_report());
    evidence.kind = EvidenceKind::Tdx;
    let v = Verifier::new(sample_policy()).unwrap().verify(
        &evidence,
        None,
        Some(&collateral(TDX_COLLATERAL)),
        TDX_SAMPLE_TIME,
    );
    assert!(!v.ok);
    assert!(!v.hardware);
}
