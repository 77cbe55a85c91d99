//! Intel collateral for TDX quotes: PCK CRL, root CA CRL, TCB info and QE identity, each
//! signed by Intel. Loaded from a file or fetched from a PCCS/PCS, cached per platform in
//! memory and on disk, and refetched before it expires.
//!
//! TLS to the PCCS only protects privacy: every item is verified against Intel's root
//! during quote verification, so a tampered cache or server cannot make a quote pass.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use dcap_qvl::quote::Quote;
use dcap_qvl::QuoteCollateralV3;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use x509_cert::der::Decode;

/// Why collateral could not be loaded or fetched.
#[derive(Debug, thiserror::Error)]
pub enum CollateralError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Collateral JSON did not parse.
    #[error("collateral JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The HTTP request failed.
    #[error("GET {url}: {detail}")]
    Http {
        /// The URL.
        url: String,
        /// The error and its causes.
        detail: String,
    },
    /// The server answered with a non-success status.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The response lacked something the PCS API promises.
    #[error("GET {url}: {detail}")]
    BadResponse {
        /// The URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The quote could not be read (to learn its FMSPC and PCK CA).
    #[error("quote: {0}")]
    Quote(String),
    /// The collateral is structurally unusable (dates, CRLs).
    #[error("invalid collateral: {0}")]
    Invalid(String),
}

/// Collateral for one platform, in the JSON layout of dcap-qvl's
/// `sample/tdx_quote_collateral.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxCollateral(QuoteCollateralV3);

impl TdxCollateral {
    /// Parses collateral JSON.
    pub fn from_json(text: &str) -> Result<Self, CollateralError> {
        Ok(Self(serde_json::from_str(text)?))
    }

    /// Reads a collateral JSON file.
    pub fn load(path: &Path) -> Result<Self, CollateralError> {
        let text = std::fs::read_to_string(path).map_err(|source| CollateralError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// The JSON form (the same layout [`Self::from_json`] reads).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.0).expect("collateral always serializes")
    }

    /// The earliest `nextUpdate` of the TCB info, QE identity and both CRLs, in Unix
    /// seconds: past it, quote verification fails and the collateral must be refetched.
    pub fn next_update(&self) -> Result<u64, CollateralError> {
        #[derive(Deserialize)]
        struct Dated {
            #[serde(rename = "nextUpdate")]
            next_update: String,
        }
        let mut earliest = u64::MAX;
        for (name, json) in [
            ("TCB info", &self.0.tcb_info),
            ("QE identity", &self.0.qe_identity),
        ] {
            let dated: Dated = serde_json::from_str(json)
                .map_err(|e| CollateralError::Invalid(format!("{name}: {e}")))?;
            let at = humantime::parse_rfc3339_weak(&dated.next_update).map_err(|e| {
                CollateralError::Invalid(format!("{name} nextUpdate {:?}: {e}", dated.next_update))
            })?;
            earliest = earliest.min(crate::unix_secs(at));
        }
        for (name, der) in [
            ("root CA CRL", &self.0.root_ca_crl),
            ("PCK CRL", &self.0.pck_crl),
        ] {
            let crl = x509_cert::crl::CertificateList::from_der(der)
                .map_err(|e| CollateralError::Invalid(format!("{name}: {e}")))?;
            if let Some(next) = crl.tbs_cert_list.next_update {
                earliest = earliest.min(next.to_unix_duration().as_secs());
            }
        }
        Ok(earliest)
    }

    pub(crate) fn inner(&self) -> &QuoteCollateralV3 {
        &self.0
    }
}

/// Settings for fetching collateral from a PCCS or Intel's PCS.
#[derive(Debug, Clone)]
pub struct PccsConfig {
    /// Base URL, e.g. `https://pccs.internal:8081` or `https://api.trustedservices.intel.com`
    /// (a trailing `/sgx/certification/v4` or `/tdx/certification/v4` is accepted).
    pub base_url: String,
    /// Directory for the on-disk cache (`<tee>-<FMSPC>-<ca>.json`); `None` keeps memory only.
    pub cache_dir: Option<PathBuf>,
    /// Refetch this long before `nextUpdate`.
    pub refresh_before: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Accept a PCCS's self-signed TLS certificate (safe for integrity, see module docs).
    pub accept_invalid_certs: bool,
}

impl PccsConfig {
    /// Defaults: no disk cache, refresh a day before expiry, 30 s timeout, strict TLS.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            cache_dir: None,
            refresh_before: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(30),
            accept_invalid_certs: false,
        }
    }
}

/// Identifies one platform's collateral.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PlatformKey {
    tee: &'static str,
    fmspc: String,
    ca: &'static str,
}

impl PlatformKey {
    fn file_name(&self) -> String {
        format!("{}-{}-{}.json", self.tee, self.fmspc, self.ca)
    }
}

/// Where TDX collateral comes from.
pub struct CollateralSource {
    kind: SourceKind,
}

enum SourceKind {
    File(PathBuf),
    Pccs(Box<Pccs>),
}

struct Pccs {
    config: PccsConfig,
    base: String,
    http: reqwest::Client,
    memory: Mutex<HashMap<PlatformKey, TdxCollateral>>,
}

impl CollateralSource {
    /// Collateral from one JSON file (read on each use), whatever the quote's platform.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            kind: SourceKind::File(path.into()),
        }
    }

    /// Collateral fetched from a PCCS/PCS and cached per platform (FMSPC and PCK CA).
    pub fn pccs(config: PccsConfig) -> Result<Self, CollateralError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .danger_accept_invalid_certs(config.accept_invalid_certs)
            .build()
            .map_err(|e| CollateralError::Http {
                url: config.base_url.clone(),
                detail: error_chain(&e),
            })?;
        let base = config
            .base_url
            .trim_end_matches('/')
            .trim_end_matches("/sgx/certification/v4")
            .trim_end_matches("/tdx/certification/v4")
            .to_owned();
        Ok(Self {
            kind: SourceKind::Pccs(Box::new(Pccs {
                config,
                base,
                http,
                memory: Mutex::new(HashMap::new()),
            })),
        })
    }

    /// Collateral for the platform that produced `raw_quote`, valid at `now_secs` if it
    /// can be had: cached when fresh (more than `refresh_before` from `nextUpdate`),
    /// refetched otherwise. If a refetch fails, a cached entry that has not yet expired is
    /// returned instead (with a warning).
    pub async fn for_quote(
        &self,
        raw_quote: &[u8],
        now_secs: u64,
    ) -> Result<TdxCollateral, CollateralError> {
        match &self.kind {
            SourceKind::File(path) => TdxCollateral::load(path),
            SourceKind::Pccs(pccs) => pccs.for_quote(raw_quote, now_secs).await,
        }
    }
}

impl std::fmt::Debug for CollateralSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            SourceKind::File(path) => f.debug_tuple("CollateralSource::File").field(path).finish(),
            SourceKind::Pccs(pccs) => f
                .debug_tuple("CollateralSource::Pccs")
                .field(&pccs.config)
                .finish(),
        }
    }
}

impl Pccs {
    async fn for_quote(
        &self,
        raw_quote: &[u8],
        now: u64,
    ) -> Result<TdxCollateral, CollateralError> {
        let key = platform_key(raw_quote)?;
        let margin = self.config.refresh_before.as_secs();
        let expiry = |c: &TdxCollateral| c.next_update().unwrap_or(0);

        let cached = match self.memory_get(&key) {
            Some(c) => Some(c),
            None => self.disk_get(&key),
        };
        if let Some(c) = &cached {
            if now.saturating_add(margin) < expiry(c) {
                self.memory_put(&key, c);
                return Ok(c.clone());
            }
        }
        match self.fetch(&key).await {
            Ok(fresh) => {
                tracing::info!(fmspc = %key.fmspc, ca = key.ca, next_update = expiry(&fresh), "fetched TDX collateral");
                self.disk_put(&key, &fresh);
                self.memory_put(&key, &fresh);
                Ok(fresh)
            }
            Err(e) => match cached {
                Some(c) if now < expiry(&c) => {
                    tracing::warn!(fmspc = %key.fmspc, error = %e, "collateral refresh failed; using cached collateral until it expires");
                    Ok(c)
                }
                _ => Err(e),
            },
        }
    }

    fn memory_get(&self, key: &PlatformKey) -> Option<TdxCollateral> {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn memory_put(&self, key: &PlatformKey, c: &TdxCollateral) {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), c.clone());
    }

    fn disk_get(&self, key: &PlatformKey) -> Option<TdxCollateral> {
        let path = self.config.cache_dir.as_ref()?.join(key.file_name());
        match TdxCollateral::load(&path) {
            Ok(c) => Some(c),
            Err(CollateralError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable collateral cache");
                None
            }
        }
    }

    fn disk_put(&self, key: &PlatformKey, c: &TdxCollateral) {
        let Some(dir) = &self.config.cache_dir else {
            return;
        };
        let path = dir.join(key.file_name());
        let tmp = dir.join(format!(".{}.tmp", key.file_name()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, c.to_json()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not write collateral cache");
        }
    }

    async fn fetch(&self, key: &PlatformKey) -> Result<TdxCollateral, CollateralError> {
        let base = &self.base;
        let (tee, fmspc, ca) = (key.tee, &key.fmspc, key.ca);

        let url = format!("{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der");
        let (headers, body) = self.get(&url).await?;
        let pck_crl_issuer_chain = header(&headers, &url, &["SGX-PCK-CRL-Issuer-Chain"])?;
        let pck_crl = der_or_hex(body, &url)?;

        let url = format!("{base}/{tee}/certification/v4/tcb?fmspc={fmspc}");
        let (headers, body) = self.get(&url).await?;
        let tcb_info_issuer_chain = header(
            &headers,
            &url,
            &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"],
        )?;
        let (tcb_info, tcb_info_signature) = signed_json(&body, &url, "tcbInfo")?;

        let url = format!("{base}/{tee}/certification/v4/qe/identity");
        let (headers, body) = self.get(&url).await?;
        let qe_identity_issuer_chain =
            header(&headers, &url, &["SGX-Enclave-Identity-Issuer-Chain"])?;
        let (qe_identity, qe_identity_signature) = signed_json(&body, &url, "enclaveIdentity")?;

        let root_ca_crl = self.root_ca_crl(&qe_identity_issuer_chain).await?;

        Ok(TdxCollateral(QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        }))
    }

    /// A PCCS serves the root CA CRL itself; Intel's PCS does not, so fall back to the
    /// CRL distribution point named in Intel's root certificate.
    async fn root_ca_crl(&self, issuer_chain: &str) -> Result<Vec<u8>, CollateralError> {
        let url = format!("{}/sgx/certification/v4/rootcacrl", self.base);
        let pccs_error = match self.get(&url).await {
            Ok((_, body)) => return der_or_hex(body, &url),
            Err(e) => e,
        };
        let Some(cdp) = root_crl_distribution_point(issuer_chain) else {
            return Err(pccs_error);
        };
        tracing::debug!(%cdp, error = %pccs_error, "no rootcacrl endpoint; using the root certificate's CRL distribution point");
        let (_, body) = self.get(&cdp).await?;
        der_or_hex(body, &cdp)
    }

    async fn get(&self, url: &str) -> Result<(HeaderMap, Vec<u8>), CollateralError> {
        let http_error = |e: reqwest::Error| CollateralError::Http {
            url: url.to_owned(),
            detail: error_chain(&e),
        };
        let response = self.http.get(url).send().await.map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(CollateralError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(http_error)?;
        Ok((headers, body.to_vec()))
    }
}

/// FMSPC, PCK CA and TEE of the quote's PCK leaf certificate.
fn platform_key(raw_quote: &[u8]) -> Result<PlatformKey, CollateralError> {
    let quote = Quote::parse(raw_quote).map_err(|e| CollateralError::Quote(format!("{e:#}")))?;
    let fmspc = dcap_qvl::intel::quote_fmspc(&quote).map_err(|e| {
        CollateralError::Quote(format!(
            "no FMSPC (the quote must embed its PCK certificate chain): {e:#}"
        ))
    })?;
    let ca = dcap_qvl::intel::quote_ca(&quote)
        .map_err(|e| CollateralError::Quote(format!("PCK CA: {e:#}")))?;
    Ok(PlatformKey {
        tee: if quote.header.is_sgx() { "sgx" } else { "tdx" },
        fmspc: hex::encode_upper(fmspc),
        ca: ca.as_id_str(),
    })
}

/// The first of `names` present, percent-decoded (the PCS URL-encodes PEM chains).
fn header(headers: &HeaderMap, url: &str, names: &[&str]) -> Result<String, CollateralError> {
    let bad = |detail: String| CollateralError::BadResponse {
        url: url.to_owned(),
        detail,
    };
    let value = names
        .iter()
        .find_map(|n| headers.get(*n))
        .ok_or_else(|| bad(format!("missing header {}", names.join(" or "))))?;
    let value = value
        .to_str()
        .map_err(|_| bad(format!("header {} is not ASCII", names[0])))?;
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| bad(format!("header {} is not UTF-8", names[0])))
}

/// A CRL body: DER as is, or hex text (what a PCCS returns for some endpoints).
fn der_or_hex(body: Vec<u8>, url: &str) -> Result<Vec<u8>, CollateralError> {
    if body.first() == Some(&0x30) {
        return Ok(body);
    }
    let text = String::from_utf8_lossy(&body);
    hex::decode(text.trim()).map_err(|_| CollateralError::BadResponse {
        url: url.to_owned(),
        detail: "CRL is neither DER nor hex".into(),
    })
}

/// Splits `{"<field>": {...}, "signature": "<hex>"}` keeping the signed object's exact
/// bytes (re-serializing could change them and break Intel's signature).
fn signed_json(body: &[u8], url: &str, field: &str) -> Result<(String, Vec<u8>), CollateralError> {
    let bad = |detail: String| CollateralError::BadResponse {
        url: url.to_owned(),
        detail,
    };
    let map: HashMap<String, Box<RawValue>> =
        serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let signed = map
        .get(field)
        .ok_or_else(|| bad(format!("no {field}")))?
        .get()
        .to_owned();
    let signature: String = map
        .get("signature")
        .ok_or_else(|| bad("no signature".into()))
        .and_then(|s| serde_json::from_str(s.get()).map_err(|e| bad(format!("signature: {e}"))))?;
    let signature = hex::decode(signature).map_err(|_| bad("signature is not hex".into()))?;
    Ok((signed, signature))
}

/// The CRL distribution point URL of the last (root) certificate in a PEM chain.
fn root_crl_distribution_point(pem_chain: &str) -> Option<String> {
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    use x509_cert::ext::pkix::CrlDistributionPoints;

    let certs = x509_cert::Certificate::load_pem_chain(pem_chain.as_bytes()).ok()?;
    let root = certs.last()?;
    let cdp_oid = x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.29.31");
    let ext = root
        .tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == cdp_oid)?;
    let points = CrlDistributionPoints::from_der(ext.extn_value.as_bytes()).ok()?;
    points.0.iter().find_map(|p| match &p.distribution_point {
        Some(DistributionPointName::FullName(names)) => names.iter().find_map(|n| match n {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
            _ => None,
        }),
        _ => None,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../tests/data/tdx_quote_collateral.json");

    #[test]
    fn sample_round_trips_and_has_a_next_update() {
        let c = TdxCollateral::from_json(SAMPLE).unwrap();
        assert_eq!(TdxCollateral::from_json(&c.to_json()).unwrap(), c);
        let next = c.next_update().unwrap();
        // TCB info and QE identity say 2025-07-19; the CRLs may end earlier.
        assert!(next > 1_750_377_600 && next <= 1_752_920_163, "{next}");
    }

    #[test]
    fn root_crl_distribution_point_is_intels() {
        let c = TdxCollateral::from_json(SAMPLE).unwrap();
        let url = root_crl_distribution_point(&c.inner().qe_identity_issuer_chain).unwrap();
        assert!(
            url.starts_with("https://certificates.trustedservices.intel.com/"),
            "{url}"
        );
    }

    #[test]
    fn signed_json_keeps_exact_bytes() {
        let body = br#"{"tcbInfo":{"b":1,  "a":2},"signature":"0aff"}"#;
        let (signed, sig) = signed_json(body, "u", "tcbInfo").unwrap();
        assert_eq!(signed, r#"{"b":1,  "a":2}"#);
        assert_eq!(sig, [0x0a, 0xff]);
    }

    #[test]
    fn crl_body_may_be_der_or_hex() {
        assert_eq!(der_or_hex(vec![0x30, 1], "u").unwrap(), [0x30, 1]);
        assert_eq!(der_or_hex(b"3001\n".to_vec(), "u").unwrap(), [0x30, 1]);
        assert!(der_or_hex(b"nope".to_vec(), "u").is_err());
    }
}
