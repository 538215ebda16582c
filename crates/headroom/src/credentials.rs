//! Per-tenant credentials, encrypted at rest and injected by the proxy; and API tokens scoped
//! to a tenant.
//!
//! A credential is sealed with XChaCha20-Poly1305 under the secret key, with a fresh random
//! 24-byte nonce per write and `tenant \0 upstream` as associated data, so that a ciphertext
//! copied to another row does not open. The key comes from `HEADROOM_SECRET_KEY` (32 bytes as
//! base64 or 64 hex digits), else from `secret.key` next to the SQLite database, generated on
//! first start with mode 0600. The store keeps a sealed check value so that a server started
//! with another key refuses to start instead of failing on every proxied call.
//!
//! Decrypted credentials are cached in memory per (tenant, upstream), so the proxy does not
//! read the database on every call; a write or delete through this type updates the cache.
//! API tokens are stored as their SHA-256 only and shown once, when created.
//!
//! No credential value is ever logged, returned by the API, or printed by `Debug`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{AnyStore, CredentialInfo, SealedCredential, TokenInfo};

/// The environment variable that holds the secret key.
pub const SECRET_KEY_ENV: &str = "HEADROOM_SECRET_KEY";
/// The key file's name, in the database's directory.
pub const KEY_FILE_NAME: &str = "secret.key";
/// Where a tenant's webhook signing secret is kept, sealed like a credential: a name no
/// upstream can have (upstream names are letters, digits, '-', '_' and '.').
pub const WEBHOOK_SECRET: &str = ":webhook-signing";
/// The secret a rotation replaced, kept as `{valid until, Unix ms} {secret}`: callbacks are
/// signed with both until then, so that receivers can switch secrets without dropping any.
pub const WEBHOOK_SECRET_PREVIOUS: &str = ":webhook-signing-previous";
/// How long a replaced webhook secret still signs (beside the new one).
pub const WEBHOOK_SECRET_OVERLAP: crate::clock::Millis = 24 * 3_600_000;

/// The replaced secret kept at `WEBHOOK_SECRET_PREVIOUS`, if it still signs at `now`.
pub fn previous_webhook_secret(kept: &str, now: crate::clock::Millis) -> Option<&str> {
    let (until, secret) = kept.split_once(' ')?;
    (until.parse::<crate::clock::Millis>().ok()? > now).then_some(secret)
}
/// The longest credential accepted, in bytes.
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;
/// Cached (tenant, upstream) entries beyond which the cache starts over.
const MAX_CACHED: usize = 100_000;
/// Prefix of API tokens, so that they are recognisable (and secret scanners can find them).
pub const TOKEN_PREFIX: &str = "hr_";

const NONCE_LEN: usize = 24;
const KEY_CHECK_META: &str = "secret_key_check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"headroom secret key check v1";
const KEY_CHECK_AAD: &[u8] = b"headroom\0key-check";

/// The 32-byte key credentials are sealed with. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// The expected form, for error messages.
    pub const FORM: &'static str =
        "32 random bytes as base64 (44 characters) or as 64 hex digits; make one with \
         `openssl rand -base64 32`";

    /// Reads a key written as 64 hex digits or as base64 (standard or URL-safe, padded or
    /// not) of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<SecretKey, String> {
        let text = text.trim();
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut key = [0u8; 32];
            for (i, pair) in text.as_bytes().chunks(2).enumerate() {
                let hex = std::str::from_utf8(pair).expect("hex digits are ASCII");
                key[i] = u8::from_str_radix(hex, 16).expect("checked hex digits");
            }
            return Ok(SecretKey(key));
        }
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            if let Ok(bytes) = engine.decode(text) {
                return match <[u8; 32]>::try_from(bytes.as_slice()) {
                    Ok(key) => Ok(SecretKey(key)),
                    Err(_) => Err(format!(
                        "it decodes to {} bytes, not 32; expected {}",
                        bytes.len(),
                        Self::FORM
                    )),
                };
            }
        }
        Err(format!(
            "it is neither hex nor base64; expected {}",
            Self::FORM
        ))
    }

    pub fn generate() -> SecretKey {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        SecretKey(key)
    }

    fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the key came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(PathBuf),
    /// An in-memory store with no configured key: a random key that lives as long as the
    /// process, like the credentials.
    Ephemeral,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env => write!(f, "{SECRET_KEY_ENV}"),
            KeySource::File(p) => write!(f, "the key file {}", p.display()),
            KeySource::Ephemeral => f.write_str("a key generated for this process"),
        }
    }
}

/// The key file that goes with a database file: `secret.key` in the same directory.
pub fn key_file_for(db: &Path) -> PathBuf {
    match db.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(KEY_FILE_NAME),
        _ => PathBuf::from(KEY_FILE_NAME),
    }
}

/// Reads a file of secrets (the key file, the admin token file), refusing one that others
/// may read. `what` names it in errors.
pub(crate) fn read_private(path: &Path, what: &str) -> anyhow::Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read the {what} {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "the {what} {path} is readable by group or others (mode {:03o}); \
                 run `chmod 600 {path}` and start again",
                mode & 0o777,
                path = path.display()
            );
        }
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// Writes a new file of secrets, readable by its owner only; fails if one appeared meanwhile.
pub(crate) fn write_private(path: &Path, text: &str, what: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create the {what} {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the {what} {}", path.display()))
}

/// Reads an existing key file, refusing one that others may read.
fn read_key_file(path: &Path) -> anyhow::Result<SecretKey> {
    let text = read_private(path, "secret key file")?;
    SecretKey::parse(&text)
        .map_err(|e| anyhow::anyhow!("the secret key file {} is not valid: {e}", path.display()))
}

/// Writes a new key file, readable by its owner only.
fn write_key_file(path: &Path, key: &SecretKey) -> anyhow::Result<()> {
    write_private(path, &format!("{}\n", key.to_hex()), "secret key file")
}

/// A cache of decrypted credentials. `generation` changes on every write, so that a read of
/// the database that raced with a write does not put a stale value in the cache.
#[derive(Default)]
struct Cache {
    generation: u64,
    /// tenant → upstream → credential (`None`: known to have none).
    entries: HashMap<String, HashMap<String, Option<Arc<str>>>>,
    len: usize,
}

impl Cache {
    fn get(&self, tenant: &str, upstream: &str) -> Option<Option<Arc<str>>> {
        self.entries.get(tenant)?.get(upstream).cloned()
    }

    fn set(&mut self, tenant: &str, upstream: &str, value: Option<Arc<str>>) {
        if self.len >= MAX_CACHED {
            self.entries.clear();
            self.len = 0;
        }
        let previous = self
            .entries
            .entry(tenant.to_string())
            .or_default()
            .insert(upstream.to_string(), value);
        if previous.is_none() {
            self.len += 1;
        }
    }
}

/// Which tenants hold a credential for which upstreams (names only), so that a call for a
/// tenant with none — most of them, when a team sends calls for 100,000 customers — is
/// answered without a store read. Unset (every miss reads the store) above `MAX_INDEXED`
/// credentials, or after a reload failed.
#[derive(Default)]
struct Holders {
    /// Changes on every write, so that a reload that raced with one is dropped.
    generation: u64,
    /// tenant → upstreams.
    pairs: Option<HashMap<String, HashSet<String>>>,
}

/// The most credentials whose holders are kept in memory (about 100 bytes each).
const MAX_INDEXED: i64 = 1_000_000;

/// Scoped API tokens known to be valid, by SHA-256.
#[derive(Default)]
struct TokenCache {
    generation: u64,
    tenants: HashMap<[u8; 32], Arc<str>>,
}

pub struct Credentials {
    store: AnyStore,
    cipher: XChaCha20Poly1305,
    key_source: KeySource,
    cache: RwLock<Cache>,
    holders: RwLock<Holders>,
    tokens: RwLock<TokenCache>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("store", &self.store)
            .field("key_source", &self.key_source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The credentials kept in `store`, sealed with the key from `HEADROOM_SECRET_KEY` or the
    /// key file next to the database.
    pub async fn open(store: AnyStore) -> anyhow::Result<Self> {
        let env_key = match std::env::var(SECRET_KEY_ENV) {
            Ok(v) if v.trim().is_empty() => None,
            Ok(v) => Some(v),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!(
                "{SECRET_KEY_ENV} is not valid text; expected {}",
                SecretKey::FORM
            ),
        };
        Self::open_with_key(store, env_key.as_deref()).await
    }

    /// Opens with the key written in `key` (the form of `HEADROOM_SECRET_KEY`), else the key
    /// file next to the database (generated if the store holds no credentials yet).
    pub async fn open_with_key(
        store: impl Into<AnyStore>,
        key: Option<&str>,
    ) -> anyhow::Result<Self> {
        let store = store.into();
        if key.is_none() && store.is_shared() {
            // Every node must seal and open with the same key; a key per node would lose
            // the credentials another node stored.
            anyhow::bail!(
                "a PostgreSQL store is shared by several nodes: set {SECRET_KEY_ENV} to the \
                 same key on every node ({})",
                SecretKey::FORM
            );
        }
        let (key, key_source) = match key {
            Some(text) => (
                SecretKey::parse(text)
                    .map_err(|e| anyhow::anyhow!("{SECRET_KEY_ENV} is not a valid key: {e}"))?,
                KeySource::Env,
            ),
            None => match store.path() {
                None => (SecretKey::generate(), KeySource::Ephemeral),
                Some(db) => {
                    let path = key_file_for(db);
                    if path.exists() {
                        (read_key_file(&path)?, KeySource::File(path))
                    } else {
                        if store.count_credentials().await? > 0 {
                            anyhow::bail!(
                                "the store {} holds credentials but the secret key file {} is \
                                 missing; restore it, or set {SECRET_KEY_ENV} to the key they \
                                 were encrypted with",
                                db.display(),
                                path.display()
                            );
                        }
                        let key = SecretKey::generate();
                        write_key_file(&path, &key)?;
                        tracing::info!(
                            path = %path.display(),
                            "generated a secret key for credentials; back it up with the database"
                        );
                        (key, KeySource::File(path))
                    }
                }
            },
        };
        let credentials = Credentials {
            store,
            cipher: XChaCha20Poly1305::new((&key.0).into()),
            key_source,
            cache: RwLock::new(Cache::default()),
            holders: RwLock::new(Holders::default()),
            tokens: RwLock::new(TokenCache::default()),
        };
        credentials.check_key().await?;
        credentials.reload_holders().await?;
        Ok(credentials)
    }

    /// Refuses a key that differs from the one the stored credentials were sealed with.
    async fn check_key(&self) -> anyhow::Result<()> {
        if let Some(check) = self.store.get_meta(KEY_CHECK_META).await? {
            let opens = check.len() > NONCE_LEN
                && self
                    .open_raw(&check[..NONCE_LEN], &check[NONCE_LEN..], KEY_CHECK_AAD)
                    .is_some_and(|p| p == KEY_CHECK_PLAINTEXT);
            if opens {
                return Ok(());
            }
            if self.store.count_credentials().await? > 0 {
                anyhow::bail!(
                    "the secret key from {} is not the one the stored credentials were \
                     encrypted with; start with the original key ({SECRET_KEY_ENV} or the key \
                     file next to the database)",
                    self.key_source
                );
            }
            tracing::warn!(source = %self.key_source, "the secret key changed; no credentials were stored, so the new key is kept");
        }
        let (nonce, ciphertext) = self.seal_raw(KEY_CHECK_PLAINTEXT, KEY_CHECK_AAD)?;
        let mut value = nonce.to_vec();
        value.extend_from_slice(&ciphertext);
        Ok(self.store.put_meta(KEY_CHECK_META, &value).await?)
    }

    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    fn seal_raw(&self, plaintext: &[u8], aad: &[u8]) -> anyhow::Result<([u8; NONCE_LEN], Vec<u8>)> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("cannot encrypt"))?;
        Ok((nonce, ciphertext))
    }

    fn open_raw(&self, nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if nonce.len() != NONCE_LEN {
            return None;
        }
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }

    fn seal(
        &self,
        tenant: &str,
        upstream: &str,
        credential: &str,
    ) -> anyhow::Result<SealedCredential> {
        let (nonce, ciphertext) = self.seal_raw(credential.as_bytes(), &aad(tenant, upstream))?;
        Ok(SealedCredential {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    fn unseal(
        &self,
        tenant: &str,
        upstream: &str,
        sealed: &SealedCredential,
    ) -> anyhow::Result<Arc<str>> {
        let plain = self
            .open_raw(&sealed.nonce, &sealed.ciphertext, &aad(tenant, upstream))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the stored credential of tenant \"{tenant}\" for upstream \"{upstream}\" \
                     does not decrypt with the secret key from {}: it was written with another \
                     key or altered; set it again",
                    self.key_source
                )
            })?;
        let text = String::from_utf8(plain).map_err(|_| {
            anyhow::anyhow!(
                "the stored credential of tenant \"{tenant}\" for upstream \"{upstream}\" is \
                 not text; set it again"
            )
        })?;
        Ok(Arc::from(text))
    }

    /// The decrypted credential `tenant` holds for `upstream`, if any.
    pub async fn get(&self, tenant: &str, upstream: &str) -> anyhow::Result<Option<Arc<str>>> {
        let generation = {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache.get(tenant, upstream) {
                return Ok(hit);
            }
            cache.generation
        };
        {
            let holders = self.holders.read().unwrap_or_else(|e| e.into_inner());
            if let Some(pairs) = &holders.pairs {
                if !pairs.get(tenant).is_some_and(|u| u.contains(upstream)) {
                    return Ok(None);
                }
            }
        }
        let value = match self.store.get_credential(tenant, upstream).await? {
            Some(sealed) => Some(self.unseal(tenant, upstream, &sealed)?),
            None => None,
        };
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.generation == generation {
            cache.set(tenant, upstream, value.clone());
        }
        Ok(value)
    }

    /// Encrypts and stores `credential` for (tenant, upstream), replacing any earlier one.
    /// The caller has checked the names and the value.
    pub async fn set(&self, tenant: &str, upstream: &str, credential: &str) -> anyhow::Result<()> {
        let sealed = self.seal(tenant, upstream, credential)?;
        self.store.put_credential(tenant, upstream, &sealed).await?;
        self.note_holder(tenant, upstream, true);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.generation += 1;
        cache.set(tenant, upstream, Some(Arc::from(credential)));
        Ok(())
    }

    /// Reads again which tenants hold credentials (another node may have written some). On a
    /// failure, or above `MAX_INDEXED`, every miss reads the store until the next reload.
    pub async fn reload_holders(&self) -> anyhow::Result<()> {
        let generation = self
            .holders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .generation;
        let read = async {
            if self.store.count_credentials().await? > MAX_INDEXED {
                return Ok(None);
            }
            let mut pairs: HashMap<String, HashSet<String>> = HashMap::new();
            for (tenant, upstream) in self.store.credential_holders().await? {
                pairs.entry(tenant).or_default().insert(upstream);
            }
            Ok::<_, headroom_store::StoreError>(Some(pairs))
        };
        let result = read.await;
        let mut holders = self.holders.write().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(pairs) if holders.generation == generation => holders.pairs = pairs,
            Ok(_) => {} // a write came in between: the next reload sees it
            Err(e) => {
                holders.pairs = None;
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn note_holder(&self, tenant: &str, upstream: &str, holds: bool) {
        let mut holders = self.holders.write().unwrap_or_else(|e| e.into_inner());
        holders.generation += 1;
        if let Some(pairs) = &mut holders.pairs {
            if holds {
                pairs
                    .entry(tenant.to_string())
                    .or_default()
                    .insert(upstream.to_string());
            } else if let Some(upstreams) = pairs.get_mut(tenant) {
                upstreams.remove(upstream);
                if upstreams.is_empty() {
                    pairs.remove(tenant);
                }
            }
        }
    }

    /// Forgets every cached credential and token. On a store shared by several nodes, a
    /// change made through another node is seen after the next call of this.
    pub fn forget_cached(&self) {
        {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            cache.generation += 1;
            cache.entries.clear();
            cache.len = 0;
        }
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        tokens.generation += 1;
        tokens.tenants.clear();
    }

    /// Deletes the credential of (tenant, upstream); false if there was none.
    pub async fn remove(&self, tenant: &str, upstream: &str) -> anyhow::Result<bool> {
        let removed = self.store.delete_credential(tenant, upstream).await?;
        self.note_holder(tenant, upstream, false);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.generation += 1;
        cache.set(tenant, upstream, None);
        Ok(removed)
    }

    /// Which upstreams `tenant` holds a credential for, and when each was set.
    pub async fn list(&self, tenant: &str) -> anyhow::Result<Vec<CredentialInfo>> {
        Ok(self.store.list_credentials(tenant).await?)
    }

    /// Creates an API token scoped to `tenant`. The token is in the result and nowhere else.
    pub async fn create_token(&self, tenant: &str) -> anyhow::Result<(TokenInfo, String)> {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let id = format!("tok_{}", hex(&id));
        let info = self
            .store
            .insert_token(&id, tenant, &Sha256::digest(token.as_bytes()))
            .await?;
        Ok((info, token))
    }

    /// Revokes a token; false if there was none with this id.
    pub async fn revoke_token(&self, id: &str) -> anyhow::Result<bool> {
        let hash = self.store.delete_token(id).await?;
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        tokens.generation += 1;
        if let Some(hash) = hash.as_deref().and_then(|h| <[u8; 32]>::try_from(h).ok()) {
            tokens.tenants.remove(&hash);
        }
        Ok(hash.is_some())
    }

    pub async fn list_tokens(&self, tenant: Option<&str>) -> anyhow::Result<Vec<TokenInfo>> {
        Ok(self.store.list_tokens(tenant).await?)
    }

    /// The tenant an API token is scoped to, if it is a scoped token.
    pub async fn tenant_of_token(&self, token: &str) -> anyhow::Result<Option<String>> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = {
            let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
            if let Some(tenant) = tokens.tenants.get(&hash) {
                return Ok(Some(tenant.to_string()));
            }
            tokens.generation
        };
        let tenant = self.store.token_tenant(&hash).await?;
        if let Some(t) = &tenant {
            let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
            if tokens.generation == generation {
                if tokens.tenants.len() >= MAX_CACHED {
                    tokens.tenants.clear();
                }
                tokens.tenants.insert(hash, Arc::from(t.as_str()));
            }
        }
        Ok(tenant)
    }
}

/// Request fields sealed at rest (`jobs::secrets`): the same cipher and key as
/// credentials, bound by their associated data to the job or batch and the field.
impl Credentials {
    /// Seals `value` as text safe in a header value or a query string: `SEALED_PREFIX`
    /// then base64url of nonce and ciphertext.
    pub fn seal_field(&self, context: &str, value: &str) -> anyhow::Result<String> {
        let (nonce, ciphertext) = self.seal_raw(value.as_bytes(), &field_aad(context))?;
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&ciphertext);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        ))
    }

    /// Opens what `seal_field` made for the same `context`; any other text (a value stored
    /// before sealing existed) is returned as it is.
    pub fn open_field(&self, context: &str, stored: &str) -> anyhow::Result<String> {
        let Some(b64) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_string());
        };
        let fail = || {
            anyhow::anyhow!(
                "a sealed request field does not open with the secret key from {}: it was \
                 written with another key or altered",
                self.key_source
            )
        };
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| fail())?;
        if raw.len() < NONCE_LEN {
            return Err(fail());
        }
        let plain = self
            .open_raw(&raw[..NONCE_LEN], &raw[NONCE_LEN..], &field_aad(context))
            .ok_or_else(fail)?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

/// OAuth grants: their tokens sealed like a credential, bound to (tenant, upstream) and to
/// being a grant (a grant's ciphertext does not open as a credential, nor the reverse).
impl Credentials {
    pub(crate) fn seal_grant(
        &self,
        tenant: &str,
        upstream: &str,
        plain: &[u8],
    ) -> anyhow::Result<SealedCredential> {
        let (nonce, ciphertext) = self.seal_raw(plain, &grant_aad(tenant, upstream))?;
        Ok(SealedCredential {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    pub(crate) fn open_grant(
        &self,
        tenant: &str,
        upstream: &str,
        sealed: &SealedCredential,
    ) -> anyhow::Result<Vec<u8>> {
        self.open_raw(
            &sealed.nonce,
            &sealed.ciphertext,
            &grant_aad(tenant, upstream),
        )
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the OAuth grant of tenant \"{tenant}\" for upstream \"{upstream}\" does \
                     not decrypt with the secret key from {}: connect it again",
                self.key_source
            )
        })
    }
}

fn grant_aad(tenant: &str, upstream: &str) -> Vec<u8> {
    let mut aad = b"headroom\0oauth\0".to_vec();
    aad.extend_from_slice(&self::aad(tenant, upstream));
    aad
}

/// What a sealed request field's text starts with.
pub const SEALED_PREFIX: &str = "hr-sealed.v1.";

fn field_aad(context: &str) -> Vec<u8> {
    let mut aad = b"headroom\0field\0".to_vec();
    aad.extend_from_slice(context.as_bytes());
    aad
}

/// The associated data that binds a ciphertext to its row.
fn aad(tenant: &str, upstream: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tenant.len() + 1 + upstream.len());
    aad.extend_from_slice(tenant.as_bytes());
    aad.push(0);
    aad.extend_from_slice(upstream.as_bytes());
    aad
}

// ---- checks ----------------------------------------------------------------------------

/// `[A-Za-z0-9._:@-]{1,128}`, the same rule as the proxy's `Headroom-Tenant`.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 128
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:@-".contains(c))
}

/// Why a credential cannot go in an HTTP header, if it cannot. Never echoes the value.
pub fn check_credential_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("credential: must not be empty".into());
    }
    if value.len() > MAX_CREDENTIAL_LEN {
        return Err(format!(
            "credential: is {} bytes; at most {MAX_CREDENTIAL_LEN} (8 KiB) are accepted",
            value.len()
        ));
    }
    if let Some((i, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
        let what = match c {
            '\n' | '\r' => "a line break",
            '\t' => "a tab",
            _ => "a control character",
        };
        return Err(format!(
            "credential: has {what} at byte {i}; it must be a valid HTTP header value (a \
             trailing newline from a file or `echo` is a common cause)"
        ));
    }
    if let Some(i) = value.find(|c: char| !c.is_ascii()) {
        return Err(format!(
            "credential: has a non-ASCII character at byte {i}; HTTP header values must be \
             ASCII"
        ));
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        return Err(
            "credential: starts or ends with a space, which HTTP would strip; remove it".into(),
        );
    }
    Ok(())
}

// ---- the admin API ---------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_webhook_secret_signs_until_its_time() {
        let kept = "1000 whsec_b2xk";
        assert_eq!(previous_webhook_secret(kept, 999), Some("whsec_b2xk"));
        assert_eq!(previous_webhook_secret(kept, 1000), None);
        assert_eq!(previous_webhook_secret("soon whsec_b2xk", 0), None);
        assert_eq!(previous_webhook_secret("whsec_b2xk", 0), None);
    }
    use crate::store::Store;

    const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    async fn memory(key: Option<&str>) -> Credentials {
        let store = Store::open("sqlite::memory:").await.unwrap();
        Credentials::open_with_key(store, key).await.unwrap()
    }

    #[test]
    fn keys_are_read_as_hex_or_base64_and_never_shown() {
        let k = SecretKey::parse(HEX_KEY).unwrap();
        assert_eq!(k.0[31], 0x1f);
        let b64 = base64::engine::general_purpose::STANDARD.encode(k.0);
        assert_eq!(SecretKey::parse(&b64).unwrap(), k);
        assert_eq!(SecretKey::parse(b64.trim_end_matches('=')).unwrap(), k);
        assert_eq!(SecretKey::parse(&format!(" {HEX_KEY}\n")).unwrap(), k);
        let e = SecretKey::parse("c2hvcnQ=").unwrap_err();
        assert!(
            e.contains("5 bytes, not 32") && e.contains("64 hex digits"),
            "{e}"
        );
        let e = SecretKey::parse("not a key!").unwrap_err();
        assert!(e.contains("base64 (44 characters)"), "{e}");
        assert_eq!(format!("{k:?}"), "SecretKey(<redacted>)");
    }

    #[tokio::test]
    async fn a_bad_key_is_a_startup_error_that_says_the_form() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let e = Credentials::open_with_key(store, Some("hunter2"))
            .await
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("HEADROOM_SECRET_KEY") && e.contains("64 hex digits"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn credentials_round_trip_and_are_sealed_to_their_row() {
        let c = memory(Some(HEX_KEY)).await;
        assert_eq!(c.get("acme", "crm").await.unwrap(), None);
        c.set("acme", "crm", "sk_live_abc").await.unwrap();
        assert_eq!(
            c.get("acme", "crm").await.unwrap().as_deref(),
            Some("sk_live_abc")
        );
        let sealed = c
            .store
            .get_credential("acme", "crm")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sealed.nonce.len(), 24);
        assert!(!sealed.ciphertext.windows(11).any(|w| w == b"sk_live_abc"));
        // The same ciphertext under another tenant (or upstream) does not open (written
        // behind `Credentials`' back, as another node would, and seen after a reload).
        c.store
            .put_credential("globex", "crm", &sealed)
            .await
            .unwrap();
        c.reload_holders().await.unwrap();
        assert!(c.get("globex", "crm").await.is_err());
        c.store
            .put_credential("acme", "erp", &sealed)
            .await
            .unwrap();
        c.reload_holders().await.unwrap();
        assert!(c.get("acme", "erp").await.is_err());
        // A fresh nonce per write.
        c.set("acme", "crm", "sk_live_abc").await.unwrap();
        let again = c
            .store
            .get_credential("acme", "crm")
            .await
            .unwrap()
            .unwrap();
        assert_ne!(again.nonce, sealed.nonce);
        assert!(!format!("{c:?}").contains("sk_live"));
    }

    #[tokio::test]
    async fn a_tenant_without_a_credential_is_answered_from_memory() {
        let c = memory(Some(HEX_KEY)).await;
        c.set("acme", "crm", "sk_live_abc").await.unwrap();
        let sealed = c
            .store
            .get_credential("acme", "crm")
            .await
            .unwrap()
            .unwrap();
        // Written behind `Credentials`' back (as another node would): the index of holders
        // says globex has none, so no store read finds it…
        c.store
            .put_credential("globex", "erp", &sealed)
            .await
            .unwrap();
        assert_eq!(c.get("globex", "erp").await.unwrap(), None);
        // …until the holders are read again (every 5 s on a shared store). The row then
        // does not open: it was sealed for acme/crm.
        c.reload_holders().await.unwrap();
        assert!(c.get("globex", "erp").await.is_err());
        // Writes and deletes through `Credentials` keep the index right at once.
        c.set("initech", "crm", "k").await.unwrap();
        assert_eq!(c.get("initech", "crm").await.unwrap().as_deref(), Some("k"));
        c.remove("initech", "crm").await.unwrap();
        assert_eq!(c.get("initech", "crm").await.unwrap(), None);
        c.set("initech", "crm", "k2").await.unwrap();
        assert_eq!(
            c.get("initech", "crm").await.unwrap().as_deref(),
            Some("k2")
        );
    }

    #[tokio::test]
    async fn writes_and_deletes_update_the_cache() {
        let c = memory(None).await;
        assert_eq!(c.get("acme", "crm").await.unwrap(), None); // cached as none
        c.set("acme", "crm", "one").await.unwrap();
        assert_eq!(c.get("acme", "crm").await.unwrap().as_deref(), Some("one"));
        c.set("acme", "crm", "two").await.unwrap();
        assert_eq!(c.get("acme", "crm").await.unwrap().as_deref(), Some("two"));
        // Served from the cache: the database row is gone but the value is still known...
        c.store.delete_credential("acme", "crm").await.unwrap();
        assert_eq!(c.get("acme", "crm").await.unwrap().as_deref(), Some("two"));
        // ...until a write through `Credentials`.
        assert!(!c.remove("acme", "crm").await.unwrap());
        assert_eq!(c.get("acme", "crm").await.unwrap(), None);
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_scoped_and_revocable() {
        let c = memory(None).await;
        let (info, token) = c.create_token("acme").await.unwrap();
        assert!(token.starts_with("hr_") && token.len() > 40);
        assert_eq!(
            c.tenant_of_token(&token).await.unwrap().as_deref(),
            Some("acme")
        );
        assert_eq!(
            c.tenant_of_token(&token).await.unwrap().as_deref(),
            Some("acme")
        );
        assert_eq!(c.tenant_of_token("hr_nope").await.unwrap(), None);
        assert_eq!(c.tenant_of_token("admin").await.unwrap(), None);
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT token_sha256 FROM api_tokens")
            .fetch_all(c.store.sqlite().unwrap().pool())
            .await
            .unwrap();
        assert_eq!(rows[0].0, Sha256::digest(token.as_bytes()).to_vec());
        assert_eq!(
            c.list_tokens(Some("acme")).await.unwrap(),
            vec![info.clone()]
        );
        assert!(c.revoke_token(&info.id).await.unwrap());
        assert!(!c.revoke_token(&info.id).await.unwrap());
        assert_eq!(c.tenant_of_token(&token).await.unwrap(), None);
    }

    #[test]
    fn credential_values_must_fit_in_a_header() {
        assert!(check_credential_value("sk_live_123 abc").is_ok());
        for (bad, says) in [
            ("", "empty"),
            ("abc\n", "line break"),
            ("a\rb", "line break"),
            ("a\tb", "tab"),
            ("a\u{7f}b", "control"),
            ("é", "non-ASCII"),
            (" abc", "space"),
        ] {
            let e = check_credential_value(bad).unwrap_err();
            assert!(
                e.starts_with("credential: ") && e.contains(says),
                "{bad:?}: {e}"
            );
        }
        let long = "a".repeat(MAX_CREDENTIAL_LEN + 1);
        assert!(check_credential_value(&long).unwrap_err().contains("8 KiB"));
        assert!(valid_tenant("acme-1.eu:x@y_z"));
        assert!(!valid_tenant("acme corp") && !valid_tenant("") && !valid_tenant(&"a".repeat(129)));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_key_file_is_private_reused_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let key_path = dir.path().join(KEY_FILE_NAME);

        let c = Credentials::open_with_key(Store::open(&url).await.unwrap(), None)
            .await
            .unwrap();
        assert_eq!(c.key_source(), &KeySource::File(key_path.clone()));
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        c.set("acme", "crm", "secret-1").await.unwrap();
        drop(c);

        // The same key on the next start.
        let c = Credentials::open_with_key(Store::open(&url).await.unwrap(), None)
            .await
            .unwrap();
        assert_eq!(
            c.get("acme", "crm").await.unwrap().as_deref(),
            Some("secret-1")
        );
        drop(c);

        // Another key while credentials are stored: refused at startup.
        let e = Credentials::open_with_key(Store::open(&url).await.unwrap(), Some(HEX_KEY))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("not the one the stored credentials"),
            "{e}"
        );

        // A key file others can read: refused, saying how to fix it.
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::open_with_key(Store::open(&url).await.unwrap(), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");

        // A lost key file while credentials are stored: refused, not silently replaced.
        std::fs::remove_file(&key_path).unwrap();
        let e = Credentials::open_with_key(Store::open(&url).await.unwrap(), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(!key_path.exists());
    }
}
