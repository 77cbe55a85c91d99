//! Checking evidence against a [`Policy`], producing a [`Verdict`].

mod snp;
mod tdx;

use serde::{Deserialize, Serialize};

use crate::attester::{is_simulated_quote, parse_simulated_quote};
use crate::collateral::TdxCollateral;
use crate::evidence::{Evidence, EvidenceKind};
use crate::nonce::Nonce;
use crate::policy::{Policy, PolicyError, SnpTcb};

/// What was measured, as lowercase hex. Fields that do not apply to the evidence's kind are
/// absent from the JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Measurements {
    /// TDX: MRTD (initial TD contents, i.e. the firmware).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mr_td: Option<String>,
    /// TDX: RTMR0..RTMR3.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rtmr: Vec<String>,
    /// TDX: MRCONFIGID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mr_config_id: Option<String>,
    /// TDX: TD attributes (8 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub td_attributes: Option<String>,
    /// SEV-SNP: launch measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    /// SEV-SNP: host data supplied at launch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
    /// SEV-SNP: guest policy (64-bit value, hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snp_policy: Option<String>,
    /// SEV-SNP: the TCB the VCEK was derived for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_tcb: Option<SnpTcb>,
    /// SEV-SNP: the AMD product line whose root signed the VCEK (`Milan`, `Genoa`, `Turin`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amd_product: Option<String>,
    /// The report data signed in the evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_data: Option<String>,
    /// Simulated: the simulator's public key (no trust attached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulator_key: Option<String>,
}

/// The outcome of verifying one piece of evidence. Printed as JSON by the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Accepted: no reasons to refuse, and either hardware-verified or simulated under a
    /// policy that allows simulation.
    pub ok: bool,
    /// The kind the evidence claimed.
    pub kind: EvidenceKind,
    /// The evidence's signature chain verified to a hardware vendor's root (Intel or AMD).
    /// Independent of the policy's allowlists; never true for simulated evidence.
    pub hardware: bool,
    /// The evidence is simulated (no root of trust): labelled so, or carrying the
    /// simulated-quote marker under a hardware label.
    pub simulated: bool,
    /// TDX: Intel's TCB status for the platform (`UpToDate`, `OutOfDate`, …).
    pub tcb_status: Option<String>,
    /// Measured values.
    pub measurements: Measurements,
    /// The worker public key (hex) that the report data was verified to bind; `None` when
    /// the binding was not checked or did not hold.
    pub bound_worker_key: Option<String>,
    /// The nonce the evidence claims to answer (hex).
    pub nonce: String,
    /// Why the evidence was refused; empty when `ok`.
    pub reasons: Vec<String>,
    /// When the verification ran (Unix seconds; the time collateral was checked against).
    pub verified_at: u64,
}

impl Verdict {
    fn refuse(&mut self, reason: impl Into<String>) {
        self.reasons.push(reason.into());
    }

    fn settle(&mut self, allow_simulated: bool) {
        self.ok = self.reasons.is_empty() && (self.hardware || (self.simulated && allow_simulated));
    }

    /// Adds a reason after the fact (used by result verification) and re-evaluates `ok`.
    pub(crate) fn refuse_and_settle(&mut self, reason: impl Into<String>, allow_simulated: bool) {
        self.refuse(reason);
        self.settle(allow_simulated);
    }
}

/// Checks evidence against a policy.
#[derive(Debug, Clone)]
pub struct Verifier {
    policy: Policy,
}

impl Verifier {
    /// A verifier for `policy` (validated first).
    pub fn new(policy: Policy) -> Result<Self, PolicyError> {
        policy.validate()?;
        Ok(Self { policy })
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Verifies `evidence` at time `now_secs` (Unix seconds).
    ///
    /// * TDX quotes need `collateral` (see [`crate::CollateralSource`]); other kinds ignore it.
    /// * `expected_nonce`: the nonce this verifier issued for the evidence. When given, the
    ///   evidence must answer exactly this nonce and the binding is checked even if the
    ///   policy does not require it. Consume it from a [`crate::NonceStore`] first.
    ///
    /// Never panics and never returns early: every refusal is a reason in the verdict.
    pub fn verify(
        &self,
        evidence: &Evidence,
        expected_nonce: Option<&Nonce>,
        collateral: Option<&TdxCollateral>,
        now_secs: u64,
    ) -> Verdict {
        let check_binding = self.policy.require_binding || expected_nonce.is_some();
        self.verify_inner(
            evidence,
            expected_nonce,
            collateral,
            now_secs,
            check_binding,
        )
    }

    pub(crate) fn verify_inner(
        &self,
        evidence: &Evidence,
        expected_nonce: Option<&Nonce>,
        collateral: Option<&TdxCollateral>,
        now_secs: u64,
        check_binding: bool,
    ) -> Verdict {
        let policy = &self.policy;
        let mut v = Verdict {
            ok: false,
            kind: evidence.kind,
            hardware: false,
            simulated: evidence.kind == EvidenceKind::Simulated
                || is_simulated_quote(&evidence.raw),
            tcb_status: None,
            measurements: Measurements::default(),
            bound_worker_key: None,
            nonce: evidence.nonce.to_hex(),
            reasons: Vec::new(),
            verified_at: now_secs,
        };

        match evidence.kind {
            EvidenceKind::Simulated if !policy.allow_simulated => v.refuse(
                "simulated evidence is not accepted: the policy requires hardware evidence",
            ),
            EvidenceKind::Simulated => {}
            kind if !policy.accepted_kinds.contains(&kind) => v.refuse(format!(
                "evidence kind {kind} is not accepted by the policy"
            )),
            _ => {}
        }

        if evidence.kind.is_hardware() && v.simulated {
            v.refuse(format!(
                "the raw bytes are a simulated quote labelled as {}",
                evidence.kind
            ));
        }

        let signed_report_data = match evidence.kind {
            EvidenceKind::Tdx => match collateral {
                Some(c) => tdx::verify(&evidence.raw, c.inner(), now_secs, &policy.tdx, &mut v),
                None => {
                    v.refuse("TDX evidence needs collateral and none was supplied");
                    None
                }
            },
            EvidenceKind::SevSnp => snp::verify(
                &evidence.raw,
                evidence.certs.as_deref(),
                &policy.sev_snp,
                &mut v,
            ),
            EvidenceKind::Simulated => match parse_simulated_quote(&evidence.raw) {
                Ok(q) => {
                    v.measurements.simulator_key = Some(hex::encode(q.signer));
                    Some(q.report_data)
                }
                Err(e) => {
                    v.refuse(format!("not a valid simulated quote: {e}"));
                    None
                }
            },
        };

        if let Some(signed) = signed_report_data {
            v.measurements.report_data = Some(hex::encode(signed));
            if signed != evidence.report_data {
                v.refuse("evidence report_data differs from the report data signed in the quote");
            }
            if check_binding {
                if signed == evidence.expected_report_data() {
                    v.bound_worker_key = Some(hex::encode(evidence.worker_public_key));
                } else {
                    v.refuse(
                        "report data does not bind the evidence's nonce and worker key \
                         (expected SHA-512(tag || nonce || key))",
                    );
                }
            }
        }
        if let Some(expected) = expected_nonce {
            if *expected != evidence.nonce {
                v.bound_worker_key = None;
                v.refuse("evidence answers a different nonce than the one issued");
            }
        }

        v.settle(policy.allow_simulated);
        v
    }
}
