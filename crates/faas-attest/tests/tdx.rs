//! Intel TDX verification against dcap-qvl's real samples.

mod common;

use common::*;
use faas_attest::{EvidenceKind, Nonce, Policy, TdxPolicy, Verifier};

fn tdx_evidence(raw: &[u8]) -> faas_attest::Evidence {
    sample_evidence(EvidenceKind::Tdx, raw, TDX_REPORT_DATA_OFFSET)
}

fn verifier(policy: Policy) -> Verifier {
    Verifier::new(policy).unwrap()
}

#[test]
fn sample_offsets_match_the_parsed_quote() {
    let quote = dcap_qvl::quote::Quote::parse(TDX_QUOTE).unwrap();
    let td = quote.report.as_td10().unwrap();
    assert_eq!(&TDX_QUOTE[TDX_MRTD_OFFSET..TDX_MRTD_OFFSET + 48], &td.mr_td);
    assert_eq!(
        &TDX_QUOTE[TDX_REPORT_DATA_OFFSET..TDX_REPORT_DATA_OFFSET + 64],
        &td.report_data
    );
}

#[test]
fn tdx_quote_verifies_as_hardware_up_to_date() {
    let evidence = tdx_evidence(TDX_QUOTE);
    let v = verifier(sample_policy()).verify(
        &evidence,
        None,
        Some(&collateral(TDX_COLLATERAL)),
        TDX_SAMPLE_TIME,
    );
    assert!(v.ok, "{:?}", v.reasons);
    assert!(v.hardware);
    assert!(!v.simulated);
    assert_eq!(v.kind, EvidenceKind::Tdx);
    assert_eq!(v.tcb_status.as_deref(), Some("UpToDate"));
    assert_eq!(v.verified_at, TDX_SAMPLE_TIME);
    let mr_td = hex::encode(&TDX_QUOTE[TDX_MRTD_OFFSET..TDX_MRTD_OFFSET + 48]);
    assert_eq!(v.measurements.mr_td.as_deref(), Some(mr_td.as_str()));
    assert_eq!(v.measurements.rtmr.len(), 4);
    assert_eq!(v.bound_worker_key, None, "binding was not checked");
    let json: serde_json::Value = serde_json::to_value(&v).unwrap();
    assert_eq!(json["hardware"], true);
    assert_eq!(json["measurements"]["mr_td"], mr_td);
}

#[test]
fn other_dates_fail_on_collateral_validity() {
    let evidence = tdx_evidence(TDX_QUOTE);
    let v = verifier(sample_policy()).verify(
        &evidence,
        None,
        Some(&collateral(TDX_COLLATERAL)),
        TDX_SAMPLE_TIME + 365 * 86_400,
    );
    assert!(!v.ok);
    assert!(!v.hardware);
}

#[test]
fn flipped_report_data_byte_fails() {
    let evidence = tdx_evidence(TDX_QUOTE);
    let mut tampered = evidence.clone();
    tampered.raw[TDX_REPORT_DATA_OFFSET + 5] ^= 0x01;
    let v = verifier(sample_policy()).verify(
        &tampered,
        None,
        Some(&collateral(TDX_COLLATERAL)),
        TDX_SAMPLE_TIME,
    );
    assert!(!v.ok);
    assert!(!v.hardware);
    assert!(
        v.reasons[0].contains("TDX quote verification failed"),
        "{:?}",
        v.reasons
    );
}

#[test]
fn flipped_mrtd_byte_fails() {
    let mut evidence = tdx_evidence(TDX_QUOTE);
    evidence.raw[TDX_MRTD_OFFSET] ^= 0x80;
    let v = verifier(sample_policy()).verify(
        &evidence,
        None,
        Some(&collateral(TDX_COLLATERAL)),
        TDX_SAMPLE_TIME,
    );
    assert!(!v.ok);
    assert!(!v.hardware);
    assert_eq!(v.measurements.mr_td, None);
}

#[test]
fn outdated_quote_is_refused() {
    // The outdated sample's TCB is below every level in Intel's TCB info for its platform,
    // so dcap-qvl finds no matching level: it is refused under the default policy, and no
    // list of accepted TCB statuses can let it through.
    let collateral = collateral(TDX_OUTDATED_COLLATERAL);
    let now = collateral.next_update().unwrap() - 86_400;
    let evidence = tdx_evidence(TDX_QUOTE_OUTDATED);

    let v = verifier(sample_policy()).verify(&evidence, None, Some(&collateral), now);
    assert!(!v.ok);
    assert!(!v.hardware);
    assert_eq!(v.tcb_status, None);
    assert!(v.reasons[0].contains("TCB level"), "{:?}", v.reasons);

    let mut lenient = sample_policy();
    lenient.tdx.accepted_tcb_statuses = [
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
    ]
    .map(String::from)
    .to_vec();
    let v = verifier(lenient).verify(&evidence, None, Some(&collateral), now);
    assert!(!v.ok);
}

#[test]
fn a_tcb_status_outside_the_accepted_list_is_refused() {
    let evidence = tdx_evidence(TDX_QUOTE);
    let mut policy = sample_policy();
    policy.tdx.accepted_tcb_statuses = vec!["SWHardeningNeeded".into()];
    let v = verifier(policy).verify(
        &evidence,
        None,
        Some(&collateral(TDX_COLLATERAL)),
        TDX_SAMPLE_TIME,
    );
    assert!(!v.ok);
    assert!(v.hardware);
    assert_eq!(v.tcb_status.as_deref(), Some("UpToDate"));
    assert_eq!(v.reasons.len(), 1);
    assert!(
        v.reasons[0].starts_with("TCB status UpToDate is not accepted"),
        "{:?}",
        v.reasons
    );
}

#[test]
fn sgx_collateral_against_the_tdx_quote_is_refused() {
    let evidence = tdx_evidence(TDX_QUOTE);
    let v = verifier(sample_policy()).verify(
        &evidence,
        None,
        Some(&collateral(SGX_COLLATERAL)),
        TDX_SAMPLE_TIME,
    );
    assert!(!v.ok);
    assert!(!v.hardware);
    assert!(
        v.reasons[0].contains("TDX quote verification failed"),
        "{:?}",
        v.reasons
    );
}

#[test]
fn missing_collateral_is_refused() {
    let v = verifier(sample_policy()).verify(&tdx_evidence(TDX_QUOTE), None, None, TDX_SAMPLE_TIME);
    assert!(!v.ok);
    assert!(v.reasons[0].contains("collateral"), "{:?}", v.reasons);
}

#[test]
fn mrtd_outside_the_allowlist_is_refused() {
    let evidence = tdx_evidence(TDX_QUOTE);
    let actual = hex::encode(&TDX_QUOTE[TDX_MRTD_OFFSET..TDX_MRTD_OFFSET + 48]);
    let collateral = collateral(TDX_COLLATERAL);

    let mut policy = sample_policy();
    policy.tdx = TdxPolicy {
        mrtd: Some(vec!["00".repeat(48)]),
        ..TdxPolicy::default()
    };
    let v = verifier(policy.clone()).verify(&evidence, None, Some(&collateral), TDX_SAMPLE_TIME);
    assert!(!v.ok);
    assert!(v.hardware);
    assert_eq!(v.reasons.len(), 1);
    assert!(v.reasons[0].starts_with("MRTD"), "{:?}", v.reasons);

    policy.tdx.mrtd = Some(vec!["00".repeat(48), actual.to_uppercase()]);
    let v = verifier(policy.clone()).verify(&evidence, None, Some(&collateral), TDX_SAMPLE_TIME);
    assert!(v.ok, "{:?}", v.reasons);

    policy.tdx.rtmr3 = Some(vec![]);
    let v = verifier(policy).verify(&evidence, None, Some(&collateral), TDX_SAMPLE_TIME);
    assert!(!v.ok);
    assert!(v.reasons[0].starts_with("RTMR3"), "{:?}", v.reasons);
}

#[test]
fn report_data_not_binding_nonce_and_key_is_refused() {
    // A real quote cannot be re-signed, so the binding check runs on its real report data:
    // SHA-512(tag || nonce || key) for any nonce and key will not match it.
    let evidence = tdx_evidence(TDX_QUOTE);
    let collateral = collateral(TDX_COLLATERAL);
    let binding = verifier(Policy::default());

    let v = binding.verify(&evidence, None, Some(&collateral), TDX_SAMPLE_TIME);
    assert!(!v.ok);
    assert!(v.hardware);
    assert_eq!(v.bound_worker_key, None);
    assert!(
        v.reasons.iter().any(|r| r.contains("report data")),
        "{:?}",
        v.reasons
    );

    // An expected nonce forces the check even when the policy does not require it, and a
    // different nonce is refused on its own.
    let other = Nonce::random().unwrap();
    let v = verifier(sample_policy()).verify(
        &evidence,
        Some(&other),
        Some(&collateral),
        TDX_SAMPLE_TIME,
    );
    assert!(!v.ok);
    assert!(
        v.reasons.iter().any(|r| r.contains("report data")),
        "{:?}",
        v.reasons
    );
    assert!(
        v.reasons.iter().any(|r| r.contains("different nonce")),
        "{:?}",
        v.reasons
    );
}

#[test]
fn claimed_report_data_must_match_the_quote() {
    let mut evidence = tdx_evidence(TDX_QUOTE);
    evidence.report_data[0] ^= 1;
    let v = verifier(sample_policy()).verify(
        &evidence,
        None,
        Some(&collateral(TDX_COLLATERAL)),
        TDX_SAMPLE_TIME,
    );
    assert!(!v.ok);
    assert!(
        v.reasons[0].contains("report_data differs"),
        "{:?}",
        v.reasons
    );
}

#[test]
fn a_tdx_quote_relabelled_is_refused() {
    let evidence = tdx_evidence(TDX_QUOTE);
    let mut policy = sample_policy();
    policy.allow_simulated = true;
    for kind in [EvidenceKind::SevSnp, EvidenceKind::Simulated] {
        let relabelled = faas_attest::Evidence {
            kind,
            ..evidence.clone()
        };
        let v = verifier(policy.clone()).verify(
            &relabelled,
            None,
            Some(&collateral(TDX_COLLATERAL)),
            TDX_SAMPLE_TIME,
        );
        assert!(!v.ok, "{kind}");
        assert!(!v.hardware, "{kind}");
    }
}

#[test]
fn a_kind_outside_accepted_kinds_is_refused() {
    let mut policy = sample_policy();
    policy.accepted_kinds = vec![EvidenceKind::SevSnp];
    let v = verifier(policy).verify(
        &tdx_evidence(TDX_QUOTE),
        None,
        Some(&collateral(TDX_COLLATERAL)),
        TDX_SAMPLE_TIME,
    );
    assert!(!v.ok);
    assert!(v.hardware);
    assert!(v.reasons[0].contains("not accepted"), "{:?}", v.reasons);
}

#[test]
fn evidence_json_round_trips() {
    let mut evidence = tdx_evidence(TDX_QUOTE);
    evidence.certs = Some(vec![1, 2, 3]);
    let json = evidence.to_json();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["kind"], "tdx");
    assert_eq!(value["nonce"].as_str().unwrap().len(), 64);
    assert_eq!(value["report_data"].as_str().unwrap().len(), 128);
    assert_eq!(faas_attest::Evidence::from_json(&json).unwrap(), evidence);
}

#[test]
fn bare_quote_wraps_with_its_own_report_data() {
    let evidence =
        faas_attest::Evidence::from_raw(EvidenceKind::Tdx, TDX_QUOTE.to_vec(), None).unwrap();
    assert_eq!(
        &evidence.report_data[..],
        &TDX_QUOTE[TDX_REPORT_DATA_OFFSET..TDX_REPORT_DATA_OFFSET + 64]
    );
    let v = verifier(sample_policy()).verify(
        &evidence,
        None,
        Some(&collateral(TDX_COLLATERAL)),
        TDX_SAMPLE_TIME,
    );
    assert!(v.ok, "{:?}", v.reasons);
    assert!(faas_attest::Evidence::from_raw(EvidenceKind::Tdx, vec![0; 100], None).is_err());
    assert!(
        faas_attest::Evidence::from_raw(EvidenceKind::Simulated, TDX_QUOTE.to_vec(), None).is_err()
    );
}
