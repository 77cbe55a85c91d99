//! Tenants, keys, quotas, secrets and the audit log, as the orchestrator
//! enforces them.
//!
//! - Keys are checked from memory (loaded at start, updated on create and
//!   revoke): a request costs one map lookup and one MAC, no database read.
//! - Two node keys live in the data directory, mode 0600: `auth.key` keys the
//!   stored key hashes (never rotated: rotating it would invalidate every API
//!   key), `secrets.key` seals secrets (rotated by `rotate_secrets_key`).
//! - Quotas are cached with a token bucket per tenant for the invocation rate.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use faas_auth::{Caller, KeyRecord, NodeKey, Scope, TenantId, Token, TokenBucket};
use faas_common::api::{AuditEntry, CreateKey, KeyInfo, TenantQuota};

use crate::store::Store;
use crate::OrchestratorError;

/// Refusals (auth failures, policy denials) written to the audit log per
/// second, at most: a flood of bad keys must not fill the disk with entries.
const REFUSALS_PER_SEC: f64 = 10.0;

/// Whose requests are checked, and how.
pub struct Tenancy {
    enabled: bool,
    auth_key: NodeKey,
    secrets_key: RwLock<NodeKey>,
    secrets_key_path: PathBuf,
    keys: RwLock<HashMap<String, (KeyRecord, String)>>,
    quotas: Mutex<HashMap<TenantId, (TenantQuota, Option<TokenBucket>)>>,
    refusals: Mutex<(TokenBucket, u64)>,
    /// Decrypted secrets per function id, for instance starts and scrubbing.
    secrets: Mutex<HashMap<String, Arc<BTreeMap<String, String>>>>,
}

impl Tenancy {
    /// Open the node keys in `data_dir` (created at first start) and load
    /// keys and quotas. `enabled: false` is `--insecure-no-auth`.
    pub async fn open(
        data_dir: &Path,
        store: &Store,
        enabled: bool,
    ) -> Result<Tenancy, OrchestratorError> {
        let key = |name: &str| {
            NodeKey::load_or_create(&data_dir.join(name))
                .map_err(|e| OrchestratorError::Internal(e.to_string()))
        };
        let auth_key = key("auth.key")?;
        let secrets_key_path = data_dir.join("secrets.key");
        let secrets_key = key("secrets.key")?;
        let secrets_key = finish_rotation(&secrets_key_path, secrets_key, store).await?;
        let keys = store
            .keys()
            .await?
            .into_iter()
            .filter(|(_, _, revoked)| revoked.is_none())
            .map(|(record, hash, _)| (record.id.clone(), (record, hash)))
            .collect();
        let quotas = store
            .quotas()
            .await?
            .into_iter()
            .map(|(t, q)| {
                let bucket = bucket_of(&q);
                (t, (q, bucket))
            })
            .collect();
        Ok(Tenancy {
            enabled,
            auth_key,
            secrets_key: RwLock::new(secrets_key),
            secrets_key_path,
            keys: RwLock::new(keys),
            quotas: Mutex::new(quotas),
            refusals: Mutex::new((TokenBucket::new(REFUSALS_PER_SEC, REFUSALS_PER_SEC), 0)),
            secrets: Mutex::new(HashMap::new()),
        })
    }

    /// Whether requests must present a key.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The caller a bearer token stands for.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Caller, OrchestratorError> {
        if !self.enabled {
            return Ok(Caller::unauthenticated());
        }
        let refused = || OrchestratorError::Unauthorized("a valid API key is required".into());
        let token = token.and_then(Token::parse).ok_or_else(refused)?;
        let keys = self.keys.read().expect("keys lock");
        let (record, hash) = keys.get(&token.id).ok_or_else(refused)?;
        if !token.matches(&self.auth_key, hash) {
            return Err(refused());
        }
        Ok(Caller::of(record))
    }

    /// Whether a refusal should be written to the audit log now (and how
    /// many were dropped since the last one written).
    pub fn refusal_budget(&self) -> Option<u64> {
        let mut f = self.refusals.lock().expect("refusals lock");
        if f.0.take(Instant::now()).is_ok() {
            Some(std::mem::take(&mut f.1))
        } else {
            f.1 += 1;
            None
        }
    }

    /// Create a key as `request` says; returns it with its secret, once.
    pub async fn create_key(
        &self,
        store: &Store,
        request: CreateKey,
    ) -> Result<KeyInfo, OrchestratorError> {
        let tenant = TenantId::try_from(request.tenant)
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        let mut scopes = request
            .scopes
            .iter()
            .map(|s| s.parse::<Scope>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(OrchestratorError::Invalid(
                "a key needs at least one scope".into(),
            ));
        }
        if let Some(functions) = &request.functions {
            if functions.is_empty() || functions.len() > 100 {
                return Err(OrchestratorError::Invalid(
                    "functions, when given, lists 1 to 100 names".into(),
                ));
            }
            for f in functions {
                faas_common::validate::function_name(f)
                    .map_err(|e| OrchestratorError::Invalid(e.to_string()))?;
            }
        }
        let token = Token::generate().map_err(|e| OrchestratorError::Internal(e.to_string()))?;
        let record = KeyRecord {
            id: token.id.clone(),
            tenant,
            scopes,
            functions: request.functions,
            created_at: crate::now_rfc3339(),
        };
        let hash = token.hash(&self.auth_key);
        store.add_key(record.clone(), hash.clone()).await?;
        self.keys
            .write()
            .expect("keys lock")
            .insert(record.id.clone(), (record.clone(), hash));
        let mut info = key_info(&record);
        info.key = Some(token.reveal());
        Ok(info)
    }

    /// Every live key, without secrets.
    pub fn keys(&self) -> Vec<KeyInfo> {
        let keys = self.keys.read().expect("keys lock");
        let mut list: Vec<KeyInfo> = keys.values().map(|(r, _)| key_info(r)).collect();
        list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        list
    }

    /// Revoke a key; it stops working at once.
    pub async fn revoke_key(
        &self,
        store: &Store,
        id: &str,
    ) -> Result<KeyRecord, OrchestratorError> {
        let record = store.revoke_key(id).await?;
        self.keys.write().expect("keys lock").remove(id);
        Ok(record)
    }

    /// The admin key, created (and written to `path`, mode 0600) when the
    /// node has no key at all: the first start of an empty data directory.
    /// Returns the key when it was made now.
    pub async fn bootstrap_admin(
        &self,
        store: &Store,
        path: &Path,
    ) -> Result<Option<String>, OrchestratorError> {
        // At the first start, and again at a start after every admin key was
        // revoked: the operator can always get back in through the data
        // directory (whoever can read it owns the node anyway).
        let live_admin =
            store.keys().await?.iter().any(|(record, _, revoked)| {
                revoked.is_none() && record.scopes.contains(&Scope::Admin)
            });
        if !self.enabled || live_admin {
            return Ok(None);
        }
        let info = self
            .create_key(
                store,
                CreateKey {
                    tenant: TenantId::default_tenant().to_string(),
                    scopes: vec!["admin".into()],
                    functions: None,
                },
            )
            .await?;
        let key = info.key.expect("a new key carries its secret");
        write_private(path, &key)
            .map_err(|e| OrchestratorError::Internal(format!("write {}: {e}", path.display())))?;
        Ok(Some(key))
    }

    /// `tenant`'s quota (the default: none).
    pub fn quota(&self, tenant: &TenantId) -> TenantQuota {
        self.quotas
            .lock()
            .expect("quotas lock")
            .get(tenant)
            .map(|(q, _)| q.clone())
            .unwrap_or_default()
    }

    /// Replace `tenant`'s quota.
    pub async fn set_quota(
        &self,
        store: &Store,
        tenant: &TenantId,
        quota: TenantQuota,
    ) -> Result<(), OrchestratorError> {
        if quota
            .invocations_per_sec
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
        {
            return Err(OrchestratorError::Invalid(
                "invocations_per_sec must be a positive number".into(),
            ));
        }
        store.set_quota(tenant, &quota).await?;
        let bucket = bucket_of(&quota);
        self.quotas
            .lock()
            .expect("quotas lock")
            .insert(tenant.clone(), (quota, bucket));
        Ok(())
    }

    /// Count one invocation against `tenant`'s rate quota.
    pub fn admit_invocation(&self, tenant: &TenantId) -> Result<(), OrchestratorError> {
        let mut quotas = self.quotas.lock().expect("quotas lock");
        let Some((quota, Some(bucket))) = quotas.get_mut(tenant) else {
            return Ok(());
        };
        bucket
            .take(Instant::now())
            .map_err(|wait| OrchestratorError::RateLimited {
                message: format!(
                    "tenant {tenant} is over its quota of {} invocations per second",
                    quota.invocations_per_sec.unwrap_or_default()
                ),
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            })
    }

    /// The context a secret is sealed in: moving a sealed value to another
    /// tenant, function or name makes it unopenable.
    fn context(function_id: &str, name: &str) -> Vec<u8> {
        format!("{function_id}\0{name}").into_bytes()
    }

    /// Seal a secret's value.
    pub fn seal(
        &self,
        function_id: &str,
        name: &str,
        value: &[u8],
    ) -> Result<Vec<u8>, OrchestratorError> {
        self.secrets_key
            .read()
            .expect("secrets key lock")
            .seal(&Self::context(function_id, name), value)
            .map_err(|e| OrchestratorError::Internal(e.to_string()))
    }

    /// A function's secrets in clear, from the cache or the store.
    pub async fn secrets_of(
        &self,
        store: &Store,
        function_id: &str,
    ) -> Result<Arc<BTreeMap<String, String>>, OrchestratorError> {
        if let Some(s) = self.secrets.lock().expect("secrets lock").get(function_id) {
            return Ok(s.clone());
        }
        let sealed = store.secrets(Some(function_id)).await?;
        let mut open = BTreeMap::new();
        {
            let key = self.secrets_key.read().expect("secrets key lock");
            for (id, name, value) in sealed {
                let plain = key
                    .open(&Self::context(&id, &name), &value)
                    .map_err(|e| OrchestratorError::Internal(format!("secret {name}: {e}")))?;
                open.insert(name, String::from_utf8_lossy(&plain).into_owned());
            }
        }
        let open = Arc::new(open);
        self.secrets
            .lock()
            .expect("secrets lock")
            .insert(function_id.to_string(), open.clone());
        Ok(open)
    }

    /// Forget the cached secrets of a function (they changed).
    pub fn forget_secrets(&self, function_id: &str) {
        self.secrets
            .lock()
            .expect("secrets lock")
            .remove(function_id);
    }

    /// Re-seal every secret under a new secrets key, then use it.
    pub async fn rotate_secrets_key(&self, store: &Store) -> Result<usize, OrchestratorError> {
        let new = NodeKey::generate().map_err(|e| OrchestratorError::Internal(e.to_string()))?;
        let sealed = store.secrets(None).await?;
        let mut resealed = Vec::with_capacity(sealed.len());
        {
            let old = self.secrets_key.read().expect("secrets key lock");
            for (id, name, value) in sealed {
                let context = Self::context(&id, &name);
                let plain = old
                    .open(&context, &value)
                    .map_err(|e| OrchestratorError::Internal(format!("secret {name}: {e}")))?;
                let again = new
                    .seal(&context, &plain)
                    .map_err(|e| OrchestratorError::Internal(e.to_string()))?;
                resealed.push((id, name, again));
            }
        }
        let count = resealed.len();
        // The new key is written beside the old one, the database switches in
        // one transaction, then the new key takes the old one's place. A crash
        // in between leaves both keys on disk, and `open` keeps the one that
        // opens the stored secrets.
        let pending = pending_path(&self.secrets_key_path);
        new.write(&pending)
            .map_err(|e| OrchestratorError::Internal(format!("write the new secrets key: {e}")))?;
        store.reseal_all(resealed).await?;
        std::fs::rename(&pending, &self.secrets_key_path).map_err(|e| {
            OrchestratorError::Internal(format!("install the new secrets key: {e}"))
        })?;
        *self.secrets_key.write().expect("secrets key lock") = new;
        self.secrets.lock().expect("secrets lock").clear();
        Ok(count)
    }
}

/// Where a rotation writes the new secrets key before the database switches.
fn pending_path(key: &Path) -> PathBuf {
    key.with_extension("key.new")
}

/// After a rotation interrupted between its steps, keep whichever of the
/// two keys opens the stored secrets.
async fn finish_rotation(
    path: &Path,
    current: NodeKey,
    store: &Store,
) -> Result<NodeKey, OrchestratorError> {
    let pending = pending_path(path);
    if !pending.exists() {
        return Ok(current);
    }
    let new = NodeKey::load(&pending).map_err(|e| OrchestratorError::Internal(e.to_string()))?;
    let sample = store.secrets(None).await?.into_iter().next();
    let new_opens = sample
        .is_some_and(|(id, name, sealed)| new.open(&Tenancy::context(&id, &name), &sealed).is_ok());
    if new_opens {
        std::fs::rename(&pending, path).map_err(|e| {
            OrchestratorError::Internal(format!("install the new secrets key: {e}"))
        })?;
        Ok(new)
    } else {
        let _ = std::fs::remove_file(&pending);
        Ok(current)
    }
}

fn bucket_of(quota: &TenantQuota) -> Option<TokenBucket> {
    quota.invocations_per_sec.map(|rate| {
        let burst = quota.burst.map_or(rate.max(1.0), f64::from);
        TokenBucket::new(rate, burst)
    })
}

fn key_info(record: &KeyRecord) -> KeyInfo {
    KeyInfo {
        id: record.id.clone(),
        key: None,
        tenant: record.tenant.to_string(),
        scopes: record
            .scopes
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        functions: record.functions.clone(),
        created_at: record.created_at.clone(),
    }
}

/// Write `text` to `path`, mode 0600, replacing any file there.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{text}")
}

/// An audit entry made now.
pub fn entry(
    caller: &Caller,
    action: &str,
    target: Option<&str>,
    detail: Option<String>,
) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: crate::now_rfc3339(),
        tenant: Some(caller.tenant.to_string()),
        key_id: caller.key_id.clone(),
        source: caller.source.clone(),
        action: action.to_string(),
        target: target.map(str::to_string),
        detail,
    }
}

/// `text` with every secret value (of four bytes or more) replaced by its
/// name: a function printing its secrets does not get them into the logs.
pub fn scrub(text: &str, secrets: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (name, value) in secrets {
        if value.len() >= 4 && out.contains(value.as_str()) {
            out = out.replace(value.as_str(), &format!("[secret {name}]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbing_replaces_values_by_names() {
        let secrets = BTreeMap::from([
            ("DB".to_string(), "hunter2pass".to_string()),
            ("X".to_string(), "ab".to_string()),
        ]);
        assert_eq!(
            scrub("connecting with hunter2pass as ab", &secrets),
            "connecting with [secret DB] as ab"
        );
    }

    #[tokio::test]
    async fn keys_check_revoke_and_bootstrap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let t = Tenancy::open(dir.path(), &store, true).await.unwrap();
        let admin_file = dir.path().join("admin.key");
        let admin = t
            .bootstrap_admin(&store, &admin_file)
            .await
            .unwrap()
            .unwrap();
        assert!(
            t.bootstrap_admin(&store, &admin_file)
                .await
                .unwrap()
                .is_none(),
            "once"
        );
        assert_eq!(std::fs::read_to_string(&admin_file).unwrap().trim(), admin);
        let caller = t.authenticate(Some(&admin)).unwrap();
        assert!(caller.may(Scope::Admin));
        assert!(matches!(
            t.authenticate(None),
            Err(OrchestratorError::Unauthorized(_))
        ));
        assert!(t.authenticate(Some("faas_000000000000_00")).is_err());
        let k = t
            .create_key(
                &store,
                CreateKey {
                    tenant: "acme".into(),
                    scopes: vec!["invoke".into(), "read".into()],
                    functions: Some(vec!["f".into()]),
                },
            )
            .await
            .unwrap();
        let token = k.key.clone().unwrap();
        let c = t.authenticate(Some(&token)).unwrap();
        assert_eq!(c.tenant.as_str(), "acme");
        assert!(c.may(Scope::Read) && !c.may(Scope::Deploy));
        assert!(
            t.keys().iter().all(|k| k.key.is_none()),
            "listing shows no secret"
        );
        t.revoke_key(&store, &k.id).await.unwrap();
        assert!(t.authenticate(Some(&token)).is_err(), "revoked at once");
        // A restarted node knows the same keys.
        let again = Tenancy::open(dir.path(), &store, true).await.unwrap();
        assert!(again.authenticate(Some(&admin)).is_ok());
        assert!(again.authenticate(Some(&token)).is_err());
    }

    #[tokio::test]
    async fn secrets_survive_a_key_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let t = Tenancy::open(dir.path(), &store, true).await.unwrap();
        let f = store
            .add_version(
                TenantId::default_tenant(),
                "f".into(),
                false,
                Default::default(),
                |id, v| crate::store::tests::version_of(id, v, "c"),
            )
            .await
            .unwrap();
        let sealed = t.seal(&f.id, "DB", b"hunter2").unwrap();
        store.put_secret(&f.id, "DB", sealed).await.unwrap();
        assert_eq!(t.secrets_of(&store, &f.id).await.unwrap()["DB"], "hunter2");
        let before = std::fs::read(dir.path().join("secrets.key")).unwrap();
        assert_eq!(t.rotate_secrets_key(&store).await.unwrap(), 1);
        assert_ne!(
            std::fs::read(dir.path().join("secrets.key")).unwrap(),
            before
        );
        t.forget_secrets(&f.id);
        assert_eq!(t.secrets_of(&store, &f.id).await.unwrap()["DB"], "hunter2");
        let db = std::fs::read(dir.path().join("state.db")).unwrap();
        assert!(!db.windows(7).any(|w| w == b"hunter2"), "never in clear");
    }

    #[test]
    fn rate_quota_answers_with_a_retry_after() {
        let mut q = HashMap::new();
        let quota = TenantQuota {
            invocations_per_sec: Some(1.0),
            burst: Some(1),
            ..TenantQuota::default()
        };
        let bucket = bucket_of(&quota);
        q.insert(TenantId::default_tenant(), (quota, bucket));
        let t = Tenancy {
            enabled: true,
            auth_key: NodeKey::generate().unwrap(),
            secrets_key: RwLock::new(NodeKey::generate().unwrap()),
            secrets_key_path: PathBuf::from("/nonexistent"),
            keys: RwLock::new(HashMap::new()),
            quotas: Mutex::new(q),
            refusals: Mutex::new((TokenBucket::new(1.0, 1.0), 0)),
            secrets: Mutex::new(HashMap::new()),
        };
        let tenant = TenantId::default_tenant();
        assert!(t.admit_invocation(&tenant).is_ok());
        match t.admit_invocation(&tenant) {
            Err(OrchestratorError::RateLimited { retry_after, .. }) => assert_eq!(retry_after, 1),
            other => panic!("{other:?}"),
        }
        let other = TenantId::try_from("other".to_string()).unwrap();
        assert!(
            t.admit_invocation(&other).is_ok(),
            "other tenants are unaffected"
        );
    }
}
