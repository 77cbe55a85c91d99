//! Serde helpers: fixed-size byte arrays as lowercase hex, byte vectors as base64.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serializer};

/// `[u8; N]` as a lowercase hex string of exactly `2 * N` digits.
pub(crate) mod hex_array {
    use super::*;

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(deserializer)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(text.trim(), &mut out)
            .map_err(|e| serde::de::Error::custom(format!("expected {} hex digits: {e}", 2 * N)))?;
        Ok(out)
    }
}

/// `Vec<u8>` as standard base64.
pub(crate) mod base64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text.trim())
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

/// `Option<Vec<u8>>` as standard base64 or `null`.
pub(crate) mod base64_opt {
    use super::*;

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => serializer.serialize_str(&STANDARD.encode(b)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| {
                STANDARD
                    .decode(text.trim())
                    .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
            })
            .transpose()
    }
}

/// `[u8; 64]` as standard base64 (signatures).
pub(crate) mod base64_sig {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 64], D::Error> {
        let raw = base64_bytes::deserialize(deserializer)?;
        <[u8; 64]>::try_from(raw.as_slice())
            .map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))
    }
}
