//! What a verifier accepts. Loadable from JSON or TOML; unknown keys are errors.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::evidence::EvidenceKind;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("reading policy {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid policy JSON.
    #[error("policy JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Not valid policy TOML.
    #[error("policy TOML: {0}")]
    Toml(#[from] toml::de::Error),
    /// Parsed, but inconsistent (bad hex, wrong lengths, …).
    #[error("invalid policy: {0}")]
    Invalid(String),
}

/// Acceptance rules for evidence.
///
/// The default accepts hardware evidence of either kind at TCB status `UpToDate`, requires
/// the report-data binding, checks no measurements and refuses simulated evidence.
/// Allowlists are `None` for "not checked" and `Some(list)` for "must be one of", so
/// `Some([])` accepts nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Hardware kinds accepted (`tdx`, `sev_snp`). Simulated evidence is governed by
    /// `allow_simulated` alone and may not be listed here.
    pub accepted_kinds: Vec<EvidenceKind>,
    /// Accept simulated evidence (development only). A policy with this `false` requires
    /// hardware, and simulated evidence never satisfies it.
    pub allow_simulated: bool,
    /// Require REPORTDATA = SHA-512(tag || nonce || worker key) for the evidence's own nonce
    /// and key. Only evidence produced elsewhere (for example a vendor sample) lacks it.
    pub require_binding: bool,
    /// Intel TDX rules.
    pub tdx: TdxPolicy,
    /// AMD SEV-SNP rules.
    pub sev_snp: SevSnpPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            accepted_kinds: vec![EvidenceKind::Tdx, EvidenceKind::SevSnp],
            allow_simulated: false,
            require_binding: true,
            tdx: TdxPolicy::default(),
            sev_snp: SevSnpPolicy::default(),
        }
    }
}

/// Intel TDX rules. Debug TDs are always refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TdxPolicy {
    /// Accepted MRTD values (96 hex digits each).
    pub mrtd: Option<Vec<String>>,
    /// Accepted RTMR0 values.
    pub rtmr0: Option<Vec<String>>,
    /// Accepted RTMR1 values.
    pub rtmr1: Option<Vec<String>>,
    /// Accepted RTMR2 values.
    pub rtmr2: Option<Vec<String>>,
    /// Accepted RTMR3 values.
    pub rtmr3: Option<Vec<String>>,
    /// Accepted MRCONFIGID values (see `TdxLaunchConfig::mr_config_id`).
    pub mr_config_id: Option<Vec<String>>,
    /// Accepted platform TCB statuses as reported by Intel's collateral (`UpToDate`,
    /// `SWHardeningNeeded`, `ConfigurationNeeded`, `OutOfDate`, …).
    pub accepted_tcb_statuses: Vec<String>,
}

impl Default for TdxPolicy {
    fn default() -> Self {
        Self {
            mrtd: None,
            rtmr0: None,
            rtmr1: None,
            rtmr2: None,
            rtmr3: None,
            mr_config_id: None,
            accepted_tcb_statuses: vec!["UpToDate".into()],
        }
    }
}

/// AMD SEV-SNP rules. Guests whose policy allows debugging are always refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SevSnpPolicy {
    /// Accepted launch measurements (96 hex digits each).
    pub measurements: Option<Vec<String>>,
    /// Lowest acceptable reported TCB, component by component.
    pub min_tcb: SnpTcb,
}

/// SEV-SNP TCB security version numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnpTcb {
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
}

impl Policy {
    /// Reads a policy file: `.toml` as TOML, anything else as JSON.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
        {
            Self::from_toml_str(&text)
        } else {
            Self::from_json_str(&text)
        }
    }

    /// Parses and validates a JSON policy.
    pub fn from_json_str(text: &str) -> Result<Self, PolicyError> {
        let policy: Self = serde_json::from_str(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Parses and validates a TOML policy.
    pub fn from_toml_str(text: &str) -> Result<Self, PolicyError> {
        let policy: Self = toml::from_str(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// A policy for development machines: accepts simulated evidence (and hardware
    /// evidence under the default rules).
    pub fn allowing_simulated() -> Self {
        Self {
            allow_simulated: true,
            ..Self::default()
        }
    }

    /// Checks internal consistency: measurement hex, and no `simulated` in
    /// `accepted_kinds`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.accepted_kinds.contains(&EvidenceKind::Simulated) {
            return Err(PolicyError::Invalid(
                "accepted_kinds lists only hardware kinds; use allow_simulated for simulation"
                    .into(),
            ));
        }
        let lists = [
            ("tdx.mrtd", &self.tdx.mrtd),
            ("tdx.rtmr0", &self.tdx.rtmr0),
            ("tdx.rtmr1", &self.tdx.rtmr1),
            ("tdx.rtmr2", &self.tdx.rtmr2),
            ("tdx.rtmr3", &self.tdx.rtmr3),
            ("tdx.mr_config_id", &self.tdx.mr_config_id),
            ("sev_snp.measurements", &self.sev_snp.measurements),
        ];
        for (name, list) in lists {
            for value in list.iter().flatten() {
                let ok = value.len() == 96 && value.bytes().all(|b| b.is_ascii_hexdigit());
                if !ok {
                    return Err(PolicyError::Invalid(format!(
                        "{name}: {value:?} is not 96 hex digits (48 bytes)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// True when `list` is `None` or contains `value` (hex, case-insensitive).
pub(crate) fn allowed(list: &Option<Vec<String>>, value: &str) -> bool {
    list.as_ref()
        .is_none_or(|l| l.iter().any(|v| v.eq_ignore_ascii_case(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_refuse_simulation_and_require_binding() {
        let p = Policy::default();
        assert!(!p.allow_simulated);
        assert!(p.require_binding);
        assert_eq!(p.tdx.accepted_tcb_statuses, ["UpToDate"]);
        assert_eq!(Policy::from_json_str("{}").unwrap(), p);
        assert_eq!(Policy::from_toml_str("").unwrap(), p);
    }

    #[test]
    fn toml_and_json_agree() {
        let m = "ab".repeat(48);
        let toml = format!(
            "accepted_kinds = [\"tdx\"]\n[tdx]\nmrtd = [\"{m}\"]\naccepted_tcb_statuses = [\"UpToDate\", \"SWHardeningNeeded\"]\n[sev_snp.min_tcb]\nsnp = 8\n"
        );
        let json = format!(
            r#"{{"accepted_kinds":["tdx"],"tdx":{{"mrtd":["{m}"],"accepted_tcb_statuses":["UpToDate","SWHardeningNeeded"]}},"sev_snp":{{"min_tcb":{{"snp":8}}}}}}"#
        );
        let a = Policy::from_toml_str(&toml).unwrap();
        assert_eq!(a, Policy::from_json_str(&json).unwrap());
        assert_eq!(a.sev_snp.min_tcb.snp, 8);
        assert!(allowed(&a.tdx.mrtd, &m.to_uppercase()));
        assert!(!allowed(&a.tdx.mrtd, &"cd".repeat(48)));
        assert!(allowed(&a.tdx.rtmr0, "anything"));
    }

    #[test]
    fn rejects_unknown_keys_bad_hex_and_simulated_kind() {
        assert!(Policy::from_json_str(r#"{"allow_simulation":true}"#).is_err());
        assert!(Policy::from_json_str(r#"{"tdx":{"mrtd":["abcd"]}}"#).is_err());
        assert!(Policy::from_json_str(r#"{"accepted_kinds":["simulated"]}"#).is_err());
    }
}
