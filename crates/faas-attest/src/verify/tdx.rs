//! Intel TDX: dcap-qvl verifies the quote, PCK chain, CRLs, TCB info and QE identity
//! offline against Intel's root; then the policy is applied to the TD report.

use dcap_qvl::QuoteCollateralV3;

use super::Verdict;
use crate::policy::{allowed, TdxPolicy};

/// TUD bit 0 of TD attributes: off-TD debug.
const TD_ATTRIBUTE_DEBUG: u8 = 0x01;

/// Verifies a TDX quote; on a verified TD quote sets `hardware` and returns its report
/// data. Policy refusals are added to the verdict.
pub(super) fn verify(
    raw: &[u8],
    collateral: &QuoteCollateralV3,
    now_secs: u64,
    policy: &TdxPolicy,
    v: &mut Verdict,
) -> Option<[u8; 64]> {
    let verified = match dcap_qvl::verify::rustcrypto::verify(raw, collateral, now_secs) {
        Ok(r) => r,
        Err(e) => {
            v.refuse(format!("TDX quote verification failed: {e:#}"));
            return None;
        }
    };
    let Some(td) = verified.report.as_td10() else {
        v.refuse("the quote is an SGX enclave quote, not a TD quote");
        return None;
    };
    v.hardware = true;
    v.tcb_status = Some(verified.status.clone());

    let m = &mut v.measurements;
    m.mr_td = Some(hex::encode(td.mr_td));
    m.rtmr = [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3]
        .iter()
        .map(hex::encode)
        .collect();
    m.mr_config_id = Some(hex::encode(td.mr_config_id));
    m.td_attributes = Some(hex::encode(td.td_attributes));

    if !policy
        .accepted_tcb_statuses
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&verified.status))
    {
        let advisories = if verified.advisory_ids.is_empty() {
            String::new()
        } else {
            format!(" (advisories: {})", verified.advisory_ids.join(", "))
        };
        v.refuse(format!(
            "TCB status {} is not accepted (accepted: {}){advisories}",
            verified.status,
            policy.accepted_tcb_statuses.join(", ")
        ));
    }
    for reason in td_policy_refusals(
        policy,
        &td.td_attributes,
        &td.mr_td,
        [&td.rt_mr0, &td.rt_mr1, &td.rt_mr2, &td.rt_mr3],
        &td.mr_config_id,
    ) {
        v.refuse(reason);
    }
    Some(td.report_data)
}

/// The policy's verdict on a TD's attributes and measurements, as refusal reasons.
fn td_policy_refusals(
    policy: &TdxPolicy,
    td_attributes: &[u8; 8],
    mr_td: &[u8; 48],
    rtmrs: [&[u8; 48]; 4],
    mr_config_id: &[u8; 48],
) -> Vec<String> {
    let mut reasons = Vec::new();
    if td_attributes[0] & TD_ATTRIBUTE_DEBUG != 0 {
        reasons.push("the TD runs in debug mode (TD attributes DEBUG bit set)".to_owned());
    }
    let mr_td = hex::encode(mr_td);
    if !allowed(&policy.mrtd, &mr_td) {
        reasons.push(format!("MRTD {mr_td} is not in the policy's allowlist"));
    }
    let rtmr_lists = [&policy.rtmr0, &policy.rtmr1, &policy.rtmr2, &policy.rtmr3];
    for (i, (list, value)) in rtmr_lists.into_iter().zip(rtmrs).enumerate() {
        let value = hex::encode(value);
        if !allowed(list, &value) {
            reasons.push(format!("RTMR{i} {value} is not in the policy's allowlist"));
        }
    }
    let config = hex::encode(mr_config_id);
    if !allowed(&policy.mr_config_id, &config) {
        reasons.push(format!(
            "MRCONFIGID {config} is not in the policy's allowlist"
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_td_is_refused_and_allowlists_apply() {
        let policy = TdxPolicy {
            mrtd: Some(vec!["11".repeat(48)]),
            rtmr2: Some(vec!["22".repeat(48)]),
            ..TdxPolicy::default()
        };
        let zero = [0u8; 48];
        let ok = td_policy_refusals(
            &policy,
            &[0u8; 8],
            &[0x11; 48],
            [&zero, &zero, &[0x22; 48], &zero],
            &zero,
        );
        assert!(ok.is_empty(), "{ok:?}");

        let debug = td_policy_refusals(
            &policy,
            &[0x01, 0, 0, 0, 0, 0, 0, 0],
            &[0x11; 48],
            [&zero, &zero, &[0x22; 48], &zero],
            &zero,
        );
        assert_eq!(debug.len(), 1);
        assert!(debug[0].contains("debug"));

        let bad = td_policy_refusals(&policy, &[0u8; 8], &zero, [&zero; 4], &zero);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].starts_with("MRTD"));
        assert!(bad[1].starts_with("RTMR2"));
    }
}
