//! The node's attestation: a worker key it holds, evidence that binds that key
//! to this machine's TEE (or, where the operator allows, simulated evidence,
//! marked as such everywhere), the verdict of our own verifier on it, refreshed
//! on a schedule. Functions deployed with `"attestation": "tdx"|"sev-snp"` run
//! only while that verdict satisfies them, and their results are signed by the key.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use faas_attest::{
    collect_evidence, unix_now, Attester, CollateralSource, Evidence, EvidenceKind, Nonce,
    NonceStore, Policy, ResultFields, ResultSignature, SimulatedAttester, TdxCollateral, Verdict,
    Verifier, WorkerKey,
};
use serde::Serialize;

use crate::OrchestratorError;

/// How a node attests itself.
pub struct AttestationConfig {
    /// Use simulated evidence when the machine has no TEE. Simulated evidence is
    /// reported as simulated everywhere and satisfies only a policy with
    /// `allow_simulated = true`.
    pub simulate: bool,
    /// What the node's own evidence must satisfy for attested functions to run.
    pub policy: Policy,
    /// Where TDX collateral comes from (a file or a PCCS).
    pub collateral: Option<CollateralSource>,
    /// How often evidence is produced and verified again.
    pub refresh: Duration,
}

/// Evidence and its verdict at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Attested {
    /// The evidence, binding the worker key to a fresh nonce.
    pub evidence: Evidence,
    /// Our verifier's verdict on it.
    pub verdict: Verdict,
    /// The TDX collateral it was verified with (Intel-signed; safe to hand out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collateral: Option<serde_json::Value>,
}

/// What an attested invocation carries back to its caller.
#[derive(Debug, Clone)]
pub struct Proof {
    /// Evidence kind behind the signing key (`tdx`, `sev_snp`, `simulated`).
    pub kind: EvidenceKind,
    /// `x-faas-result-signature` header value.
    pub signature: String,
}

/// The node's attestation state.
pub struct NodeAttestation {
    key: WorkerKey,
    attester: Arc<dyn Attester>,
    verifier: Verifier,
    collateral: Option<CollateralSource>,
    nonces: NonceStore,
    current: RwLock<Option<Attested>>,
    /// One quote at a time: callers asking for fresh evidence queue, they do not
    /// pile onto the TEE.
    quoting: tokio::sync::Semaphore,
}

impl NodeAttestation {
    /// Pick an attester (the TEE if configfs-tsm offers one, else simulated if
    /// allowed), attest once, and keep refreshing. `None` when neither is possible.
    pub async fn start(config: AttestationConfig) -> Result<Option<Arc<Self>>, OrchestratorError> {
        let attester: Arc<dyn Attester> = match faas_attest::detect() {
            Some(tsm) => Arc::new(tsm),
            None if config.simulate => {
                tracing::warn!("attestation: no TEE here; using SIMULATED evidence (not hardware)");
                Arc::new(SimulatedAttester::generate().map_err(internal)?)
            }
            None => return Ok(None),
        };
        let node = Arc::new(NodeAttestation {
            key: WorkerKey::generate().map_err(internal)?,
            attester,
            verifier: Verifier::new(config.policy)
                .map_err(|e| OrchestratorError::Invalid(format!("attestation policy: {e}")))?,
            collateral: config.collateral,
            nonces: NonceStore::new(Duration::from_secs(60)),
            current: RwLock::new(None),
            quoting: tokio::sync::Semaphore::new(1),
        });
        node.refresh().await;
        let weak = Arc::downgrade(&node);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(config.refresh);
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(node) => node.refresh().await,
                    None => return,
                }
            }
        });
        Ok(Some(node))
    }

    /// Produce evidence over a fresh nonce of ours and verify it.
    pub async fn refresh(&self) {
        let outcome = match self.nonces.issue() {
            Ok(nonce) => {
                let attested = self.attest(nonce).await;
                // Single use: the nonce is spent whether or not attesting worked.
                let _ = self.nonces.consume(&nonce);
                attested.map(|(evidence, collateral)| {
                    let verdict = self.verifier.verify(
                        &evidence,
                        Some(&nonce),
                        collateral.as_ref(),
                        unix_now(),
                    );
                    Attested {
                        evidence,
                        verdict,
                        collateral: collateral
                            .map(|c| serde_json::from_str(&c.to_json()).unwrap_or_default()),
                    }
                })
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(a) => {
                if a.verdict.ok {
                    tracing::info!(
                        kind = %a.evidence.kind,
                        simulated = a.verdict.simulated,
                        "attestation verified{}",
                        if a.verdict.simulated { " (SIMULATED, not hardware)" } else { "" }
                    );
                } else {
                    tracing::warn!(kind = %a.evidence.kind, reasons = ?a.verdict.reasons, "attestation refused");
                }
                *self.current.write().expect("attestation lock") = Some(a);
            }
            Err(e) => {
                tracing::warn!("attestation failed: {e}");
                *self.current.write().expect("attestation lock") = None;
            }
        }
    }

    /// Evidence bound to `nonce` (and our key), with collateral for TDX.
    async fn attest(&self, nonce: Nonce) -> Result<(Evidence, Option<TdxCollateral>), String> {
        let _turn = self.quoting.acquire().await.map_err(|e| e.to_string())?;
        let attester = self.attester.clone();
        let key = self.key.public_key();
        // Producing a quote blocks on the TEE.
        let evidence =
            tokio::task::spawn_blocking(move || collect_evidence(attester.as_ref(), key, nonce))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        let collateral = match (&self.collateral, evidence.kind) {
            (Some(source), EvidenceKind::Tdx) => Some(
                source
                    .for_quote(&evidence.raw, unix_now())
                    .await
                    .map_err(|e| format!("TDX collateral: {e}"))?,
            ),
            _ => None,
        };
        Ok((evidence, collateral))
    }

    /// Fresh evidence over a caller's nonce, so the caller can check freshness itself.
    pub async fn evidence_for(&self, nonce: Nonce) -> Result<Attested, OrchestratorError> {
        let (evidence, collateral) = self
            .attest(nonce)
            .await
            .map_err(OrchestratorError::Internal)?;
        let verdict =
            self.verifier
                .verify(&evidence, Some(&nonce), collateral.as_ref(), unix_now());
        Ok(Attested {
            evidence,
            verdict,
            collateral: collateral.map(|c| serde_json::from_str(&c.to_json()).unwrap_or_default()),
        })
    }

    /// The latest evidence and verdict.
    pub fn current(&self) -> Option<Attested> {
        self.current.read().expect("attestation lock").clone()
    }

    /// Whether functions requiring `required` may run here; the reason when not.
    pub fn admit(&self, required: EvidenceKind) -> Result<EvidenceKind, String> {
        let current = self.current.read().expect("attestation lock");
        let Some(a) = current.as_ref() else {
            return Err("this node has no attestation evidence".into());
        };
        if !a.verdict.ok {
            return Err(format!(
                "this node's {} evidence did not verify: {}",
                a.evidence.kind,
                a.verdict.reasons.join("; ")
            ));
        }
        // The verifier passes simulated evidence only under a policy that allows
        // it explicitly; then it stands in for any hardware kind, marked simulated.
        if a.verdict.simulated || a.evidence.kind == required {
            Ok(a.evidence.kind)
        } else {
            Err(format!(
                "this node has verified {} evidence, not {required}",
                a.evidence.kind
            ))
        }
    }

    /// Sign an attested invocation's result.
    pub fn sign(&self, kind: EvidenceKind, fields: &ResultFields<'_>) -> Proof {
        Proof {
            kind,
            signature: ResultSignature::sign(&self.key, fields).to_header(),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> OrchestratorError {
    OrchestratorError::Internal(format!("attestation: {e}"))
}

/// Parse a deploy's `attestation` field.
pub fn parse_requirement(value: &str) -> Result<EvidenceKind, OrchestratorError> {
    match value {
        "tdx" => Ok(EvidenceKind::Tdx),
        "sev-snp" | "sev_snp" | "snp" => Ok(EvidenceKind::SevSnp),
        other => Err(OrchestratorError::Invalid(format!(
            "attestation must be \"tdx\" or \"sev-snp\", not {other:?}"
        ))),
    }
}
