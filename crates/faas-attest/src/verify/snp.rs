//! AMD SEV-SNP: the VCEK must chain to AMD's built-in ARK/ASK (Milan, Genoa or Turin),
//! sign the report, and have been issued for the TCB and chip the report names; then the
//! policy is applied.

use sev::certs::snp::{builtin, ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::TcbVersion;
use sev::parser::ByteParser;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;

use super::Verdict;
use crate::policy::{allowed, SevSnpPolicy, SnpTcb};

/// Bytes of the report covered by its signature.
const SIGNED_LEN: usize = 0x2a0;
/// KEY_INFO.SIGNING_KEY value for the VCEK.
const SIGNING_KEY_VCEK: u32 = 0;

/// VCEK extension OIDs (AMD, "VCEK Certificate and KDS Interface Specification").
const OID_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const OID_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const OID_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const OID_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const OID_FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
const OID_HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");

type BuiltinFn = fn() -> std::io::Result<Certificate>;

/// AMD's product lines with their built-in ARK and ASK.
const PRODUCTS: [(&str, BuiltinFn, BuiltinFn); 3] = [
    ("Milan", builtin::milan::ark, builtin::milan::ask),
    ("Genoa", builtin::genoa::ark, builtin::genoa::ask),
    ("Turin", builtin::turin::ark, builtin::turin::ask),
];

/// Verifies a SEV-SNP report; on success sets `hardware` and returns its report data.
pub(super) fn verify(
    raw: &[u8],
    vcek: Option<&[u8]>,
    policy: &SevSnpPolicy,
    v: &mut Verdict,
) -> Option<[u8; 64]> {
    match verify_chain_and_signature(raw, vcek) {
        Ok((report, product)) => {
            v.hardware = true;
            apply_policy(&report, product, policy, v);
            Some(report.report_data)
        }
        Err(reason) => {
            v.refuse(reason);
            None
        }
    }
}

fn verify_chain_and_signature(
    raw: &[u8],
    vcek: Option<&[u8]>,
) -> Result<(AttestationReport, &'static str), String> {
    let report = AttestationReport::from_bytes(raw)
        .map_err(|e| format!("not a SEV-SNP attestation report: {e}"))?;
    let canonical = report
        .to_bytes()
        .map_err(|e| format!("SEV-SNP report does not re-encode: {e}"))?;
    if canonical[..SIGNED_LEN] != raw[..SIGNED_LEN] {
        return Err("SEV-SNP report has non-canonical signed bytes (reserved fields set)".into());
    }
    if report.key_info.signing_key() != SIGNING_KEY_VCEK {
        return Err(format!(
            "SEV-SNP report is signed by key type {} (only VCEK-signed reports are supported)",
            report.key_info.signing_key()
        ));
    }
    let vcek = vcek.ok_or("SEV-SNP evidence carries no VCEK certificate")?;
    let vcek = if vcek.starts_with(b"-----BEGIN") {
        Certificate::from_pem(vcek)
    } else {
        Certificate::from_der(vcek)
    }
    .map_err(|e| format!("VCEK certificate does not parse: {e}"))?;

    let (product, chain) = PRODUCTS
        .iter()
        .find_map(|(name, ark, ask)| {
            let chain = Chain {
                ca: ca::Chain {
                    ark: ark().ok()?,
                    ask: ask().ok()?,
                },
                vek: vcek.clone(),
            };
            (&chain).verify().ok()?;
            Some((*name, chain))
        })
        .ok_or("VCEK is not signed by AMD's Milan, Genoa or Turin ARK/ASK")?;
    (&chain, &report)
        .verify()
        .map_err(|e| format!("SEV-SNP report signature does not verify under the VCEK: {e}"))?;
    check_vcek_matches_report(&vcek, &report)?;
    Ok((report, product))
}

/// The VCEK is issued for one chip at one TCB: both must be the report's, or an old
/// (possibly compromised) firmware's key could vouch for a newer TCB.
fn check_vcek_matches_report(vcek: &Certificate, report: &AttestationReport) -> Result<(), String> {
    let cert: x509_cert::Certificate = vcek.clone().into();
    let extensions = cert.tbs_certificate.extensions.unwrap_or_default();
    let value = |oid: ObjectIdentifier| {
        extensions
            .iter()
            .find(|e| e.extn_id == oid)
            .map(|e| e.extn_value.as_bytes().to_vec())
    };
    let spl = |oid: ObjectIdentifier, name: &str| -> Result<Option<u8>, String> {
        value(oid)
            .map(|der| u8::from_der(&der).map_err(|e| format!("VCEK {name} extension: {e}")))
            .transpose()
    };
    let tcb = &report.reported_tcb;
    let components = [
        (OID_BL_SPL, "bootloader", Some(tcb.bootloader)),
        (OID_TEE_SPL, "tee", Some(tcb.tee)),
        (OID_SNP_SPL, "snp", Some(tcb.snp)),
        (OID_UCODE_SPL, "microcode", Some(tcb.microcode)),
        (OID_FMC_SPL, "fmc", tcb.fmc),
    ];
    for (oid, name, reported) in components {
        let certified = spl(oid, name)?;
        if certified != reported {
            return Err(format!(
                "VCEK was issued for {name} SVN {certified:?} but the report's reported TCB has {reported:?}"
            ));
        }
    }
    if report.chip_id != [0u8; 64] {
        let hw_id = value(OID_HW_ID).ok_or("VCEK has no hwID extension")?;
        let matches = !hw_id.is_empty()
            && hw_id.len() <= report.chip_id.len()
            && report.chip_id[..hw_id.len()] == hw_id[..];
        if !matches {
            return Err("VCEK was issued for a different chip than the report's CHIP_ID".into());
        }
    }
    Ok(())
}

fn apply_policy(report: &AttestationReport, product: &str, policy: &SevSnpPolicy, v: &mut Verdict) {
    let tcb = snp_tcb(&report.reported_tcb);
    let m = &mut v.measurements;
    m.measurement = Some(hex::encode(report.measurement));
    m.host_data = Some(hex::encode(report.host_data));
    m.snp_policy = Some(format!("{:#x}", u64::from(report.policy)));
    m.reported_tcb = Some(tcb);
    m.amd_product = Some(product.to_owned());

    if report.policy.debug_allowed() {
        v.refuse("the guest policy allows debugging (SEV-SNP policy DEBUG bit set)");
    }
    let measurement = hex::encode(report.measurement);
    if !allowed(&policy.measurements, &measurement) {
        v.refuse(format!(
            "measurement {measurement} is not in the policy's allowlist"
        ));
    }
    let min = policy.min_tcb;
    let below: Vec<String> = [
        ("bootloader", tcb.bootloader, min.bootloader),
        ("tee", tcb.tee, min.tee),
        ("snp", tcb.snp, min.snp),
        ("microcode", tcb.microcode, min.microcode),
    ]
    .into_iter()
    .filter(|(_, have, want)| have < want)
    .map(|(name, have, want)| format!("{name} {have} < {want}"))
    .collect();
    if !below.is_empty() {
        v.refuse(format!(
            "reported TCB is below the policy's minimum: {}",
            below.join(", ")
        ));
    }
}

fn snp_tcb(tcb: &TcbVersion) -> SnpTcb {
    SnpTcb {
        bootloader: tcb.bootloader,
        tee: tcb.tee,
        snp: tcb.snp,
        microcode: tcb.microcode,
    }
}
