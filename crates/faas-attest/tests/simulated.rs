//! Simulated evidence: accepted only where simulation is allowed, never taken for hardware.

mod common;

use common::*;
use faas_attest::{
    collect_evidence, Attester, Evidence, EvidenceKind, Nonce, Policy, SimulatedAttester, Verdict,
    Verifier, WorkerKey,
};

fn simulated_evidence() -> (Evidence, WorkerKey) {
    let key = WorkerKey::generate().unwrap();
    let sim = SimulatedAttester::generate().unwrap();
    assert_eq!(sim.kind(), EvidenceKind::Simulated);
    let evidence = collect_evidence(&sim, key.public_key(), Nonce::random().unwrap()).unwrap();
    (evidence, key)
}

fn verify(policy: Policy, evidence: &Evidence) -> Verdict {
    Verifier::new(policy).unwrap().verify(
        evidence,
        None,
        Some(&collateral(TDX_COLLATERAL)),
        TDX_SAMPLE_TIME,
    )
}

fn assert_simulated(v: &Verdict) {
    assert!(v.simulated, "{v:?}");
    assert!(!v.hardware, "{v:?}");
}

#[test]
fn verifies_only_where_simulation_is_allowed() {
    let (evidence, key) = simulated_evidence();
    assert_eq!(evidence.kind, EvidenceKind::Simulated);
    assert!(!evidence.kind.is_hardware());
    assert!(evidence.raw.starts_with(b"SIMULATED"));

    let v = verify(Policy::allowing_simulated(), &evidence);
    assert!(v.ok, "{:?}", v.reasons);
    assert_simulated(&v);
    assert_eq!(v.bound_worker_key, Some(hex::encode(key.public_key())));
    assert!(v.measurements.simulator_key.is_some());
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["simulated"], true);
    assert_eq!(json["hardware"], false);
}

#[test]
fn never_satisfies_a_hardware_policy() {
    let (evidence, _) = simulated_evidence();
    for policy in [Policy::default(), sample_policy()] {
        let v = verify(policy, &evidence);
        assert!(!v.ok);
        assert_simulated(&v);
        assert!(
            v.reasons[0].contains("requires hardware"),
            "{:?}",
            v.reasons
        );
    }
}

#[test]
fn relabelled_as_hardware_it_fails() {
    let (evidence, _) = simulated_evidence();
    for kind in [EvidenceKind::Tdx, EvidenceKind::SevSnp] {
        let relabelled = Evidence {
            kind,
            ..evidence.clone()
        };
        for policy in [
            Policy::default(),
            Policy::allowing_simulated(),
            sample_policy(),
        ] {
            let v = verify(policy, &relabelled);
            assert!(!v.ok, "{kind} accepted");
            assert_simulated(&v);
            assert!(
                v.reasons
                    .iter()
                    .any(|r| r.contains("simulated quote labelled as")),
                "{:?}",
                v.reasons
            );
        }
    }
}

#[test]
fn tampering_and_wrong_binding_are_refused() {
    let (evidence, _) = simulated_evidence();

    let mut tampered = evidence.clone();
    tampered.raw[20] ^= 1;
    let v = verify(Policy::allowing_simulated(), &tampered);
    assert!(!v.ok);
    assert_simulated(&v);

    let mut other_key = evidence.clone();
    other_key.worker_public_key = WorkerKey::generate().unwrap().public_key();
    let v = verify(Policy::allowing_simulated(), &other_key);
    assert!(!v.ok);
    assert_simulated(&v);
    assert!(
        v.reasons.iter().any(|r| r.contains("report data")),
        "{:?}",
        v.reasons
    );

    let v = Verifier::new(Policy::allowing_simulated()).unwrap().verify(
        &evidence,
        Some(&Nonce::random().unwrap()),
        None,
        TDX_SAMPLE_TIME,
    );
    assert!(!v.ok);
    assert_simulated(&v);
    assert!(v.reasons.iter().any(|r| r.contains("different nonce")));

    let v = Verifier::new(Policy::allowing_simulated()).unwrap().verify(
        &evidence,
        Some(&evidence.nonce),
        None,
        TDX_SAMPLE_TIME,
    );
    assert!(v.ok, "{:?}", v.reasons);
}
