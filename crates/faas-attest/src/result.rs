//! Signed invocation results: the worker key signs what it answered, and a caller checks
//! the signature with the key that attestation evidence binds.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::collateral::TdxCollateral;
use crate::evidence::Evidence;
use crate::key::{verify_signature, WorkerKey};
use crate::verify::{Verdict, Verifier};

/// Domain tag hashed in front of a result digest.
pub const RESULT_DOMAIN: &[u8] = b"faas-blueprint/result/v1\0";

/// Suggested HTTP response header carrying [`ResultSignature::to_header`].
pub const RESULT_SIGNATURE_HEADER: &str = "x-faas-result-signature";

/// The parts of an invocation response that a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct ResultFields<'a> {
    /// The platform's request id (`x-faas-request-id`).
    pub request_id: &'a str,
    /// Function name.
    pub function: &'a str,
    /// Function version that ran (`x-faas-version`).
    pub version: u32,
    /// The response body, byte for byte.
    pub body: &'a [u8],
}

impl ResultFields<'_> {
    /// SHA-256(RESULT_DOMAIN || len32(request_id) || request_id || len32(function) ||
    /// function || version as u32 big-endian || SHA-256(body)), lengths big-endian.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(RESULT_DOMAIN);
        for field in [self.request_id, self.function] {
            h.update((field.len() as u32).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.update(self.version.to_be_bytes());
        h.update(Sha256::digest(self.body));
        h.finalize().into()
    }
}

/// A worker's ed25519 signature over [`ResultFields::digest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultSignature {
    /// The signing worker's public key (hex in JSON).
    #[serde(with = "crate::encoding::hex_array")]
    pub worker_public_key: [u8; 32],
    /// The signature (base64 in JSON).
    #[serde(with = "crate::encoding::base64_sig")]
    pub signature: [u8; 64],
}

/// A signature header that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed result signature header: {0}")]
pub struct SignatureHeaderError(String);

impl ResultSignature {
    /// Signs `fields` with the worker key.
    pub fn sign(key: &WorkerKey, fields: &ResultFields<'_>) -> Self {
        Self {
            worker_public_key: key.public_key(),
            signature: key.sign(&fields.digest()),
        }
    }

    /// Header form: `ed25519;key=<64 hex>;sig=<base64>`.
    pub fn to_header(&self) -> String {
        format!(
            "ed25519;key={};sig={}",
            hex::encode(self.worker_public_key),
            STANDARD.encode(self.signature)
        )
    }

    /// Parses [`Self::to_header`]'s form.
    pub fn from_header(value: &str) -> Result<Self, SignatureHeaderError> {
        let mut parts = value.trim().split(';').map(str::trim);
        if parts.next() != Some("ed25519") {
            return Err(SignatureHeaderError("expected the ed25519 scheme".into()));
        }
        let (mut key, mut sig) = (None, None);
        for part in parts {
            match part.split_once('=') {
                Some(("key", v)) => key = Some(v),
                Some(("sig", v)) => sig = Some(v),
                _ => return Err(SignatureHeaderError(format!("unexpected part {part:?}"))),
            }
        }
        let mut worker_public_key = [0u8; 32];
        hex::decode_to_slice(
            key.ok_or_else(|| SignatureHeaderError("no key".into()))?,
            &mut worker_public_key,
        )
        .map_err(|_| SignatureHeaderError("key is not 64 hex digits".into()))?;
        let signature = STANDARD
            .decode(sig.ok_or_else(|| SignatureHeaderError("no sig".into()))?)
            .ok()
            .and_then(|s| <[u8; 64]>::try_from(s.as_slice()).ok())
            .ok_or_else(|| SignatureHeaderError("sig is not 64 bytes of base64".into()))?;
        Ok(Self {
            worker_public_key,
            signature,
        })
    }
}

/// What a caller checks about a response (`faas verify`): the evidence against the policy,
/// that the evidence binds the signing key (always required here, whatever the policy's
/// `require_binding`), and the signature over `fields`. Problems with the signature are
/// reasons in the returned verdict, like problems with the evidence.
pub fn verify_result(
    signature: &ResultSignature,
    evidence: &Evidence,
    verifier: &Verifier,
    collateral: Option<&TdxCollateral>,
    fields: &ResultFields<'_>,
    now_secs: u64,
) -> Verdict {
    let allow_simulated = verifier.policy().allow_simulated;
    let mut verdict = verifier.verify_inner(evidence, None, collateral, now_secs, true);
    if signature.worker_public_key != evidence.worker_public_key {
        verdict.refuse_and_settle(
            "the result was signed by a different key than the one the evidence binds",
            allow_simulated,
        );
    } else if verify_signature(
        &evidence.worker_public_key,
        &fields.digest(),
        &signature.signature,
    )
    .is_err()
    {
        verdict.refuse_and_settle(
            "the result signature does not verify (request id, function, version or body \
             differ from what the worker signed)",
            allow_simulated,
        );
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let key = WorkerKey::generate().unwrap();
        let fields = ResultFields {
            request_id: "r",
            function: "f",
            version: 1,
            body: b"{}",
        };
        let sig = ResultSignature::sign(&key, &fields);
        assert_eq!(ResultSignature::from_header(&sig.to_header()).unwrap(), sig);
        assert!(ResultSignature::from_header("rsa;key=00").is_err());
        assert!(ResultSignature::from_header("ed25519;key=00;sig=AA==").is_err());
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = ResultFields {
            request_id: "ab",
            function: "c",
            version: 1,
            body: b"",
        };
        let b = ResultFields {
            request_id: "a",
            function: "bc",
            ..a
        };
        assert_ne!(a.digest(), b.digest());
    }
}
