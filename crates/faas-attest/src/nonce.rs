//! Single-use challenge nonces.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A 32-byte random challenge. Serialized as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Nonce(#[serde(with = "crate::encoding::hex_array")] pub [u8; 32]);

impl Nonce {
    /// A fresh nonce from the operating system's random source.
    pub fn random() -> Result<Self, NonceError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| NonceError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, NonceError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| NonceError::Malformed)?;
        Ok(Self(bytes))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", self.to_hex())
    }
}

/// Why a nonce could not be issued or consumed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NonceError {
    /// Never issued by this store, or already consumed (a replay).
    #[error("unknown or already used nonce")]
    Unknown,
    /// Issued, but its lifetime ran out before it was used.
    #[error("nonce expired")]
    Expired,
    /// Too many outstanding nonces; callers are requesting challenges without using them.
    #[error("too many outstanding nonces ({0}); try again later")]
    StoreFull(usize),
    /// Not 64 hex digits.
    #[error("a nonce is 64 hex digits")]
    Malformed,
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

/// Issues random nonces that expire after a fixed lifetime and can be consumed exactly once.
///
/// Thread-safe; share it behind an `Arc`.
pub struct NonceStore {
    ttl: Duration,
    capacity: usize,
    outstanding: Mutex<HashMap<Nonce, Instant>>,
}

impl NonceStore {
    /// Default cap on outstanding nonces.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    /// A store whose nonces live for `ttl`, with [`Self::DEFAULT_CAPACITY`].
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, Self::DEFAULT_CAPACITY)
    }

    /// A store whose nonces live for `ttl`, holding at most `capacity` unused ones.
    pub fn with_capacity(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            outstanding: Mutex::new(HashMap::new()),
        }
    }

    /// Issues a fresh nonce. Expired nonces are dropped first.
    pub fn issue(&self) -> Result<Nonce, NonceError> {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, expires| *expires > now);
        if map.len() >= self.capacity {
            return Err(NonceError::StoreFull(map.len()));
        }
        let nonce = Nonce::random()?;
        map.insert(nonce, now + self.ttl);
        Ok(nonce)
    }

    /// Consumes a nonce: succeeds once for a nonce issued here and still alive; a second
    /// use fails with [`NonceError::Unknown`].
    pub fn consume(&self, nonce: &Nonce) -> Result<(), NonceError> {
        let expires = self.lock().remove(nonce).ok_or(NonceError::Unknown)?;
        if Instant::now() >= expires {
            return Err(NonceError::Expired);
        }
        Ok(())
    }

    /// Number of issued nonces not yet consumed (expired ones included until the next issue).
    pub fn outstanding(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Nonce, Instant>> {
        self.outstanding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
