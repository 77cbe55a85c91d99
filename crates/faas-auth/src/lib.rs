//! Who may do what: API keys, scopes, tenants, rate limits, and the node key
//! that keys the stored hashes and seals secrets.
//!
//! Nothing here reaches a database or the network; the orchestrator stores
//! [`KeyRecord`]s and sealed secrets, the gateway turns a bearer token into a
//! [`Caller`].

#![forbid(unsafe_code)]

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Why an auth operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A token, scope or tenant name is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The node key file could not be read or written.
    #[error("node key {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Sealed data did not open (wrong key, or tampered with).
    #[error("sealed data does not open with this node key")]
    Unseal,
    /// The system's randomness failed.
    #[error("no randomness: {0}")]
    Random(String),
}

/// What a key lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Deploy, update and delete functions, bind jobs, manage secrets.
    Deploy,
    /// Invoke functions (HTTP, async, jobs).
    Invoke,
    /// Read functions, status, logs, results.
    Read,
    /// The node's administration across tenants (keys, quotas, the audit
    /// log, metrics, the secrets key), and every scope in its own tenant.
    Admin,
}

impl Scope {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Deploy => "deploy",
            Scope::Invoke => "invoke",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deploy" => Ok(Scope::Deploy),
            "invoke" => Ok(Scope::Invoke),
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(AuthError::Invalid(format!(
                "unknown scope {other:?} (deploy, invoke, read, admin)"
            ))),
        }
    }
}

/// A tenant: everything a tenant owns is invisible to every other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// The tenant of the admin key and of `--insecure-no-auth` requests.
    pub fn default_tenant() -> TenantId {
        TenantId("default".into())
    }

    /// The tenant of jobs called on chain by `address` (`0x` + 40 hex digits).
    pub fn of_chain_caller(address: &str) -> Result<TenantId, AuthError> {
        let hex = address.strip_prefix("0x").unwrap_or(address);
        if hex.len() != 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(AuthError::Invalid(format!("{address:?} is not an address")));
        }
        Ok(TenantId(format!("tangle:0x{}", hex.to_ascii_lowercase())))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = AuthError;

    /// 1-100 of `a-z A-Z 0-9 - _ . :`, starting with a letter or digit.
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = !s.is_empty()
            && s.len() <= 100
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if ok {
            Ok(TenantId(s))
        } else {
            Err(AuthError::Invalid(format!(
                "invalid tenant {:?}: use 1-100 of a-z A-Z 0-9 - _ . : starting with a letter or digit",
                s.chars().take(100).collect::<String>()
            )))
        }
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 32 bytes of randomness.
fn random32() -> Result<[u8; 32], AuthError> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(b)
}

/// The node's secret: keys the stored key hashes and seals secrets at rest.
#[derive(Clone)]
pub struct NodeKey([u8; 32]);

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

impl NodeKey {
    /// A new random key.
    pub fn generate() -> Result<NodeKey, AuthError> {
        random32().map(NodeKey)
    }

    /// The key in `path` (64 hex digits), created (mode 0600) if absent.
    pub fn load_or_create(path: &Path) -> Result<NodeKey, AuthError> {
        let io = |source| AuthError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => NodeKey::from_hex(text.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = NodeKey::generate()?;
                key.write(path).map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key in `path`, which must exist.
    pub fn load(path: &Path) -> Result<NodeKey, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::KeyFile {
            path: path.display().to_string(),
            source,
        })?;
        NodeKey::from_hex(text.trim())
    }

    /// Write the key to `path` (mode 0600; written aside and renamed).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(hex::encode(self.0).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    fn from_hex(text: &str) -> Result<NodeKey, AuthError> {
        let bytes = hex::decode(text)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| AuthError::Invalid("the node key file is not 64 hex digits".into()))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        Ok(NodeKey(k))
    }

    fn mac(&self, label: &[u8], data: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(label);
        mac.update(data);
        mac
    }

    /// Seal `plain` (a secret's value): a random nonce, then the ciphertext
    /// with its tag. `context` (the function id and the secret name) is bound in, so a
    /// sealed value cannot be moved to another secret.
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, AuthError> {
        let cipher = ChaCha20Poly1305::new_from_slice(&self.0).expect("32-byte key");
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut nonce).map_err(|e| AuthError::Random(e.to_string()))?;
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                chacha20poly1305::aead::Payload {
                    msg: plain,
                    aad: context,
                },
            )
            .map_err(|_| AuthError::Unseal)?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(out)
    }

    /// Open what [`NodeKey::seal`] sealed with the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        if sealed.len() < 12 + 16 {
            return Err(AuthError::Unseal);
        }
        let cipher = ChaCha20Poly1305::new_from_slice(&self.0).expect("32-byte key");
        cipher
            .decrypt(
                Nonce::from_slice(&sealed[..12]),
                chacha20poly1305::aead::Payload {
                    msg: &sealed[12..],
                    aad: context,
                },
            )
            .map_err(|_| AuthError::Unseal)
    }
}

/// An API key as its holder has it: `faas_<id>_<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Public part: finds the record.
    pub id: String,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, ..)", self.id)
    }
}

impl Token {
    /// A new key: 12 hex digits of id, 64 of secret.
    pub fn generate() -> Result<Token, AuthError> {
        let r = random32()?;
        let s = random32()?;
        Ok(Token {
            id: hex::encode(&r[..6]),
            secret: hex::encode(s),
        })
    }

    /// Parse what a client sent; `None` unless it has the key's shape.
    pub fn parse(text: &str) -> Option<Token> {
        let rest = text.strip_prefix("faas_")?;
        let (id, secret) = rest.split_once('_')?;
        let hexish = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
        (hexish(id, 12) && hexish(secret, 64)).then(|| Token {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The string the holder uses (shown once, never stored).
    pub fn reveal(&self) -> String {
        format!("faas_{}_{}", self.id, self.secret)
    }

    /// The keyed hash stored for it.
    pub fn hash(&self, node: &NodeKey) -> String {
        hex::encode(
            node.mac(b"faas-key", self.secret.as_bytes())
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `stored` (a [`Token::hash`]) is this token's, in constant time.
    pub fn matches(&self, node: &NodeKey, stored: &str) -> bool {
        match hex::decode(stored) {
            Ok(expected) => node
                .mac(b"faas-key", self.secret.as_bytes())
                .verify_slice(&expected)
                .is_ok(),
            Err(_) => false,
        }
    }
}

/// A key as stored: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id.
    pub id: String,
    /// The tenant it acts in.
    pub tenant: TenantId,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// The only functions it may touch, if restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<String>>,
    /// When it was made (RFC 3339).
    pub created_at: String,
}

/// Who is asking, once their key checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Their tenant.
    pub tenant: TenantId,
    /// Their key's id (`None`: authentication is off).
    pub key_id: Option<String>,
    /// What they may do.
    pub scopes: Vec<Scope>,
    /// The functions they are limited to, if any.
    pub functions: Option<Vec<String>>,
    /// Where the request came from (for the audit log).
    pub source: Option<String>,
}

impl Caller {
    /// The caller of a key.
    pub fn of(key: &KeyRecord) -> Caller {
        Caller {
            tenant: key.tenant.clone(),
            key_id: Some(key.id.clone()),
            scopes: key.scopes.clone(),
            functions: key.functions.clone(),
            source: None,
        }
    }

    /// Everyone, when authentication is off: an admin of the default tenant.
    pub fn unauthenticated() -> Caller {
        Caller {
            tenant: TenantId::default_tenant(),
            key_id: None,
            scopes: vec![Scope::Admin],
            functions: None,
            source: None,
        }
    }

    /// A tenant's own caller with every tenant-level scope: a job called on
    /// chain, whose tenant is derived from the caller's address.
    pub fn tenant_member(tenant: TenantId) -> Caller {
        Caller {
            tenant,
            key_id: None,
            scopes: vec![Scope::Deploy, Scope::Invoke, Scope::Read],
            functions: None,
            source: None,
        }
    }

    /// The same caller, seen coming from `source`.
    pub fn from_source(mut self, source: impl Into<String>) -> Caller {
        self.source = Some(source.into());
        self
    }

    /// Whether the caller holds `scope` (admin holds every scope).
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Whether the caller may touch function `name` (its key's list, if any).
    pub fn may_touch(&self, name: &str) -> bool {
        self.functions
            .as_ref()
            .is_none_or(|list| list.iter().any(|f| f == name))
    }
}

/// A token bucket: `rate` per second on average, bursts of `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Take one token; when there is none, how long until there is one.
    pub fn take(&mut self, now: Instant) -> Result<(), std::time::Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(std::time::Duration::from_secs_f64(
                missing / self.rate.max(1e-9),
            ))
        }
    }

    /// Change the rate and burst, keeping what is in the bucket.
    pub fn set(&mut self, rate: f64, burst: f64) {
        self.rate = rate;
        self.burst = burst;
        self.tokens = self.tokens.min(burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_only_their_hash_matches() {
        let node = NodeKey::generate().unwrap();
        let t = Token::generate().unwrap();
        let parsed = Token::parse(&t.reveal()).unwrap();
        assert_eq!(parsed, t);
        let stored = t.hash(&node);
        assert!(t.matches(&node, &stored));
        let other = Token::generate().unwrap();
        assert!(!other.matches(&node, &stored));
        assert!(!t.matches(&NodeKey::generate().unwrap(), &stored), "keyed");
        assert!(
            !stored.contains(&t.reveal()[18..]),
            "the secret is not stored"
        );
        for bad in [
            "",
            "faas_",
            "faas_12_34",
            "Bearer x",
            &format!("{}x", t.reveal()),
        ] {
            assert!(Token::parse(bad).is_none(), "{bad}");
        }
        assert!(!format!("{t:?}").contains(&t.reveal()[18..]));
    }

    #[test]
    fn sealed_secrets_open_only_in_their_context() {
        let node = NodeKey::generate().unwrap();
        let sealed = node.seal(b"acme/f/DB", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(node.open(b"acme/f/DB", &sealed).unwrap(), b"hunter2");
        assert!(node.open(b"other/f/DB", &sealed).is_err());
        assert!(NodeKey::generate()
            .unwrap()
            .open(b"acme/f/DB", &sealed)
            .is_err());
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(node.open(b"acme/f/DB", &tampered).is_err());
    }

    #[test]
    fn node_key_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let a = NodeKey::load_or_create(&path).unwrap();
        let b = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(a.0, b.0);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn scopes_tenants_and_callers() {
        assert_eq!("read".parse::<Scope>().unwrap(), Scope::Read);
        assert!("root".parse::<Scope>().is_err());
        assert!(TenantId::try_from("acme".to_string()).is_ok());
        assert!(TenantId::try_from("../x".to_string()).is_err());
        assert_eq!(
            TenantId::of_chain_caller("0xAbCd000000000000000000000000000000000001")
                .unwrap()
                .as_str(),
            "tangle:0xabcd000000000000000000000000000000000001"
        );
        let caller = Caller {
            tenant: TenantId::default_tenant(),
            key_id: Some("k".into()),
            scopes: vec![Scope::Invoke],
            functions: Some(vec!["f".into()]),
            source: None,
        };
        assert!(caller.may(Scope::Invoke) && !caller.may(Scope::Deploy));
        assert!(caller.may_touch("f") && !caller.may_touch("g"));
        assert!(Caller::unauthenticated().may(Scope::Deploy));
    }

    #[test]
    fn buckets_refill_at_their_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10.0, 2.0);
        assert!(b.take(start).is_ok());
        assert!(b.take(start).is_ok());
        let wait = b.take(start).unwrap_err();
        assert!(
            wait.as_millis() >= 90 && wait.as_millis() <= 110,
            "{wait:?}"
        );
        assert!(b
            .take(start + std::time::Duration::from_millis(100))
            .is_ok());
    }
}
