//! The worker's ed25519 key: bound into evidence, used to sign results.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

/// Why a key could not be made or a signature checked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// The bytes are not a valid ed25519 public key.
    #[error("invalid ed25519 public key")]
    InvalidPublicKey,
    /// The signature does not verify under the public key.
    #[error("signature does not verify")]
    BadSignature,
}

/// An ed25519 signing key held by one worker for its lifetime (generate one per start; never
/// persist it, so evidence about a key always describes the running worker).
pub struct WorkerKey {
    signing: SigningKey,
}

impl WorkerKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// The 32-byte public key, as bound into evidence.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs `message` (64-byte ed25519 signature).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for WorkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerKey")
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

/// Verifies an ed25519 signature over `message` under `public_key` (strict verification:
/// rejects malleable and small-order encodings).
pub fn verify_signature(
    public_key: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), KeyError> {
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| KeyError::InvalidPublicKey)?;
    key.verify_strict(message, &Signature::from_bytes(signature))
        .map_err(|_| KeyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let key = WorkerKey::generate().unwrap();
        let sig = key.sign(b"hello");
        verify_signature(&key.public_key(), b"hello", &sig).unwrap();
        assert!(verify_signature(&key.public_key(), b"hellO", &sig).is_err());
        let other = WorkerKey::generate().unwrap();
        assert!(verify_signature(&other.public_key(), b"hello", &sig).is_err());
    }
}
