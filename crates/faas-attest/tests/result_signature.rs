//! Signed results, checked with the key the evidence binds.

mod common;

use common::*;
use faas_attest::{
    collect_evidence, verify_result, Evidence, EvidenceKind, Nonce, Policy, ResultFields,
    ResultSignature, SimulatedAttester, Verdict, Verifier, WorkerKey,
};

const BODY: &[u8] = br#"{"answer":42}"#;

fn fields(body: &[u8]) -> ResultFields<'_> {
    ResultFields {
        request_id: "req-0001",
        function: "hello",
        version: 3,
        body,
    }
}

fn worker() -> (WorkerKey, Evidence) {
    let key = WorkerKey::generate().unwrap();
    let sim = SimulatedAttester::generate().unwrap();
    let evidence = collect_evidence(&sim, key.public_key(), Nonce::random().unwrap()).unwrap();
    (key, evidence)
}

fn check(
    sig: &ResultSignature,
    evidence: &Evidence,
    policy: Policy,
    f: &ResultFields<'_>,
) -> Verdict {
    verify_result(
        sig,
        evidence,
        &Verifier::new(policy).unwrap(),
        None,
        f,
        faas_attest::unix_now(),
    )
}

#[test]
fn a_valid_signature_verifies() {
    let (key, evidence) = worker();
    let sig = ResultSignature::sign(&key, &fields(BODY));
    let header = sig.to_header();
    let parsed = ResultSignature::from_header(&header).unwrap();
    let v = check(
        &parsed,
        &evidence,
        Policy::allowing_simulated(),
        &fields(BODY),
    );
    assert!(v.ok, "{:?}", v.reasons);
    assert!(v.simulated && !v.hardware);
    assert_eq!(v.bound_worker_key, Some(hex::encode(key.public_key())));
}

#[test]
fn a_tampered_body_or_request_id_fails() {
    let (key, evidence) = worker();
    let sig = ResultSignature::sign(&key, &fields(BODY));

    let v = check(
        &sig,
        &evidence,
        Policy::allowing_simulated(),
        &fields(br#"{"answer":43}"#),
    );
    assert!(!v.ok);
    assert!(
        v.reasons
            .iter()
            .any(|r| r.contains("signature does not verify")),
        "{:?}",
        v.reasons
    );

    let other_request = ResultFields {
        request_id: "req-0002",
        ..fields(BODY)
    };
    let v = check(
        &sig,
        &evidence,
        Policy::allowing_simulated(),
        &other_request,
    );
    assert!(!v.ok);

    let other_version = ResultFields {
        version: 4,
        ..fields(BODY)
    };
    assert!(
        !check(
            &sig,
            &evidence,
            Policy::allowing_simulated(),
            &other_version
        )
        .ok
    );
}

#[test]
fn a_signature_by_another_key_fails() {
    let (_, evidence) = worker();
    let intruder = WorkerKey::generate().unwrap();

    let sig = ResultSignature::sign(&intruder, &fields(BODY));
    let v = check(&sig, &evidence, Policy::allowing_simulated(), &fields(BODY));
    assert!(!v.ok);
    assert!(
        v.reasons.iter().any(|r| r.contains("different key")),
        "{:?}",
        v.reasons
    );

    // Claiming the attested key does not help: the signature is checked under it.
    let forged = ResultSignature {
        worker_public_key: evidence.worker_public_key,
        ..sig
    };
    let v = check(
        &forged,
        &evidence,
        Policy::allowing_simulated(),
        &fields(BODY),
    );
    assert!(!v.ok);
    assert!(
        v.reasons
            .iter()
            .any(|r| r.contains("signature does not verify")),
        "{:?}",
        v.reasons
    );
}

#[test]
fn the_signing_key_must_be_bound_even_if_the_policy_skips_binding() {
    let (_, mut evidence) = worker();
    let intruder = WorkerKey::generate().unwrap();
    evidence.worker_public_key = intruder.public_key();
    let sig = ResultSignature::sign(&intruder, &fields(BODY));
    let policy = Policy {
        require_binding: false,
        ..Policy::allowing_simulated()
    };
    let v = check(&sig, &evidence, policy, &fields(BODY));
    assert!(!v.ok);
    assert!(
        v.reasons.iter().any(|r| r.contains("report data")),
        "{:?}",
        v.reasons
    );
}

#[test]
fn a_valid_signature_does_not_rescue_refused_evidence() {
    let (key, evidence) = worker();
    let sig = ResultSignature::sign(&key, &fields(BODY));
    let v = check(&sig, &evidence, Policy::default(), &fields(BODY));
    assert!(!v.ok);
    assert!(v.simulated && !v.hardware);

    let relabelled = Evidence {
        kind: EvidenceKind::Tdx,
        ..evidence
    };
    let v = verify_result(
        &sig,
        &relabelled,
        &Verifier::new(Policy::allowing_simulated()).unwrap(),
        Some(&collateral(TDX_COLLATERAL)),
        &fields(BODY),
        TDX_SAMPLE_TIME,
    );
    assert!(!v.ok);
    assert!(v.simulated && !v.hardware);
}
