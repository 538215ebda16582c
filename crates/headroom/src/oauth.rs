//! OAuth access tokens for upstream calls: got from a tenant's stored grant (or the app's
//! client-credentials grant), refreshed before they expire and when an answer says they did,
//! one refresh per grant at a time across every call and every node.
//!
//! A refresh on this node is single-flight behind a per-grant lock; across nodes, the node
//! that takes the grant's lease in the store refreshes, the others read the store until the
//! new tokens are there. The new tokens (a rotated refresh token included) are stored, in
//! one statement over the version the refresh started from, before any call uses them.
//! A process killed between the token endpoint's answer and that statement loses the
//! rotated refresh token: its lease expires and the next refresh sends the previous one,
//! which providers that rotate accept for a grace period (Atlassian's reuse interval,
//! Okta's grace period); one that does not answers `invalid_grant`, and the grant is marked
//! broken so that the customer connects again. No token ever reaches a log, an event, an
//! answer or a metric.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use base64::Engine;
use headroom_core::{Lane, Outcome, Signals};
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

use crate::cfg::{ClientAuth, GrantKind, OAuthConfig, Upstream};
use crate::clock::{system_millis, Millis};
use crate::credentials::Credentials;
use crate::metrics::{Metrics, OAuthLabels};
use crate::outbound::client::UpstreamClient;
use crate::outbound::governor::SharedGovernor;
use crate::store::{OAuthGrantRow, OAuthTokens};

/// The tenant name an app's own (client-credentials) grant is kept under.
/// (Not a valid tenant name, so that no tenant can be given the app's token.)
pub const APP_GRANT: &str = "*app";
/// The most of a token endpoint's answer read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;
/// A token said to live longer than this is refreshed after this anyway.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(366 * 24 * 3600);
/// How often a node waiting for another node's refresh reads the grant again.
const POLL: Duration = Duration::from_millis(50);
/// How long a node uses a token it holds before reading the store again.
const CACHE_FOR: Millis = 60_000;
/// An answer that says a token younger than this expired does not refresh it.
const MIN_TOKEN_AGE: Millis = 10_000;
/// After a failed refresh, how long the token held serves before the next try…
const RETRY_REFRESH_AFTER: Millis = 10_000;
/// …and, with no token that works, how long calls are told so at once.
const RETRY_WITHOUT_TOKEN_AFTER: Millis = 2_000;

/// The tokens sealed in a grant.
#[derive(Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// Why no access token can be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The grant no longer works: the customer must connect again.
    #[error("the OAuth connection of tenant \"{tenant}\" to \"{upstream}\" is broken ({reason}); the customer must connect again (PUT /v1/tenants/{tenant}/oauth/{upstream} with a new grant)")]
    Broken {
        tenant: String,
        upstream: String,
        reason: String,
    },
    /// The token endpoint could not give a token now, and the one held has expired.
    #[error("cannot refresh the OAuth token of tenant \"{tenant}\" for \"{upstream}\": {why}")]
    Unavailable {
        tenant: String,
        upstream: String,
        why: String,
    },
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

#[derive(Clone)]
struct Cached {
    access: Arc<str>,
    /// When to refresh, Unix ms (`None`: only when an answer says it expired).
    refresh_at: Option<Millis>,
    expires_at: Option<Millis>,
    /// When it was stored.
    issued_at: Millis,
    /// When to read the store again.
    check_at: Millis,
}

/// After a failed refresh: when it failed, until when the token held serves, and why.
#[derive(Clone)]
struct Backoff {
    failed_at: Millis,
    until: Millis,
    why: String,
}

/// The upstream a refresh is for (owned: the refresh runs in a task of its own).
struct Target {
    name: String,
    index: u32,
}

type GrantKey = (String, String);

/// Told (tenant, upstream, reason) when a grant breaks.
pub type OnBroken = Box<dyn Fn(&str, &str, &str) + Send + Sync>;

/// What a refresh attempt at the token endpoint came to.
enum Refreshed {
    Tokens {
        tokens: Tokens,
        expires_at: Option<Millis>,
        scopes: Option<String>,
    },
    /// `invalid_grant`: the refresh token is revoked, expired or already used.
    Invalid(String),
    /// Anything else: try again later.
    Failed(String),
}

pub struct OAuth {
    credentials: Arc<Credentials>,
    governor: Arc<SharedGovernor>,
    client: UpstreamClient,
    /// This node's name in refresh leases.
    node: String,
    cache: Mutex<HashMap<GrantKey, Cached>>,
    flights: Mutex<HashMap<GrantKey, Arc<tokio::sync::Mutex<()>>>>,
    /// After a failed refresh: not before this time again, and why it failed.
    backoff: Mutex<HashMap<GrantKey, Backoff>>,
    metrics: Arc<Metrics>,
    /// A refresh in flight holds the server's stop until it has stored what it got.
    shutdown: crate::shutdown::Shutdown,
    /// Called with (tenant, upstream, reason) when a grant breaks.
    on_broken: OnBroken,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl OAuth {
    pub fn new(
        credentials: Arc<Credentials>,
        governor: Arc<SharedGovernor>,
        client: UpstreamClient,
        metrics: Arc<Metrics>,
        shutdown: crate::shutdown::Shutdown,
        on_broken: OnBroken,
    ) -> OAuth {
        OAuth {
            credentials,
            governor,
            client,
            node: format!("node-{:016x}", rand::random::<u64>()),
            cache: Mutex::default(),
            flights: Mutex::default(),
            backoff: Mutex::default(),
            metrics,
            shutdown,
            on_broken,
        }
    }

    /// Stores a grant a tenant connected (replacing any earlier one, mending a broken one).
    pub async fn connect(
        &self,
        tenant: &str,
        upstream: &str,
        tokens: &Tokens,
        expires_at: Option<Millis>,
        scopes: &str,
    ) -> anyhow::Result<()> {
        let plain = serde_json::to_vec(tokens)?;
        let sealed = self.credentials.seal_grant(tenant, upstream, &plain)?;
        let row = OAuthTokens {
            sealed: &sealed,
            expires_at,
            scopes,
        };
        self.credentials
            .store()
            .put_oauth_grant(tenant, upstream, &row)
            .await?;
        self.forget(tenant, upstream);
        Ok(())
    }

    /// Deletes a tenant's grant; false if there was none.
    pub async fn disconnect(&self, tenant: &str, upstream: &str) -> anyhow::Result<bool> {
        let deleted = self
            .credentials
            .store()
            .delete_oauth_grant(tenant, upstream)
            .await?;
        self.forget(tenant, upstream);
        Ok(deleted)
    }

    fn forget(&self, tenant: &str, upstream: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(tenant.to_string(), upstream.to_string()));
    }

    /// The access token a call of `tenant` to `upstream` carries: `None` when the tenant has
    /// connected no grant. `rejected` is the token an answer just said expired: a token
    /// other than it is good, it itself is refreshed (unless it was got moments ago).
    pub async fn access_token(
        self: &Arc<Self>,
        upstream: &Upstream,
        config: &Arc<OAuthConfig>,
        tenant: &str,
        rejected: Option<&str>,
    ) -> Result<Option<Arc<str>>, TokenError> {
        let tenant = match config.grant {
            GrantKind::ClientCredentials => APP_GRANT,
            GrantKind::RefreshToken => tenant,
        };
        let key = (tenant.to_string(), upstream.name.clone());
        let fresh = |c: &Cached, now: Millis| {
            now < c.check_at
                && c.refresh_at.is_none_or(|at| now < at)
                && rejected != Some(&*c.access)
        };
        if let Some(c) = self.cached(&key) {
            if fresh(&c, system_millis()) {
                return Ok(Some(c.access));
            }
        }
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            if flights.len() > 100_000 {
                flights.retain(|_, f| Arc::strong_count(f) > 1);
            }
            Arc::clone(flights.entry(key.clone()).or_default())
        };
        let _one = flight.lock().await;
        // Another call on this node may have refreshed it while this one waited.
        if let Some(c) = self.cached(&key) {
            if fresh(&c, system_millis()) {
                return Ok(Some(c.access));
            }
        }
        // A refresh may take the token endpoint's budget wait and its answer: the lease
        // outlasts both, and a node waiting for another's refresh outlasts the lease (so
        // that it takes over from a node that died holding it).
        let lease = config.token_timeout * 2 + Duration::from_secs(5);
        let deadline = tokio::time::Instant::now() + lease + Duration::from_secs(2);
        let store = self.credentials.store();
        loop {
            let row = match store.get_oauth_grant(tenant, &upstream.name).await {
                Ok(Some(row)) => row,
                Ok(None) if config.grant == GrantKind::ClientCredentials => {
                    // The app's first token: a grant with nothing in it, refreshed at once.
                    let empty = Tokens {
                        access_token: String::new(),
                        refresh_token: None,
                    };
                    let sealed = self.credentials.seal_grant(
                        tenant,
                        &upstream.name,
                        &serde_json::to_vec(&empty).map_err(anyhow::Error::from)?,
                    )?;
                    let row = OAuthTokens {
                        sealed: &sealed,
                        expires_at: Some(0),
                        scopes: "",
                    };
                    store
                        .add_oauth_grant(tenant, &upstream.name, &row)
                        .await
                        .map_err(anyhow::Error::from)?;
                    continue;
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(TokenError::Store(e.into())),
            };
            if let Some(reason) = &row.broken {
                return Err(self.broken(tenant, &upstream.name, reason));
            }
            let tokens = self.open(&row)?;
            let now = system_millis();
            let held = self.remember(&key, &row, &tokens, config, now);
            if !held.access.is_empty() {
                let due = held.refresh_at.is_some_and(|at| now >= at);
                if !due && rejected != Some(&*held.access) {
                    return Ok(Some(held.access));
                }
                // An answer called a token expired that was got moments ago: something else is
                // wrong (a scope, a revoked app), and refreshing on every such answer would
                // spend the token endpoint's budget for nothing.
                if !due && now - held.issued_at < MIN_TOKEN_AGE {
                    return Ok(Some(held.access));
                }
            }
            let usable = !held.access.is_empty() && held.expires_at.is_none_or(|at| now < at);
            // A refresh failed moments ago: the token held serves until the next try (even
            // one an answer called expired: a 401 passed on beats a stampede on the token
            // endpoint); without one, the call is told at once why.
            if let Some(b) = self.backed_off(&key, now) {
                if usable {
                    return Ok(Some(held.access));
                }
                if now < b.failed_at + RETRY_WITHOUT_TOKEN_AFTER {
                    return Err(TokenError::Unavailable {
                        tenant: tenant.to_string(),
                        upstream: upstream.name.clone(),
                        why: b.why,
                    });
                }
            }
            // It needs a refresh: this node's, if it takes the lease. Each attempt owns the
            // lease under a name of its own, so not even this node takes it while it runs.
            let owner = format!("{}-{:08x}", self.node, rand::random::<u32>());
            let until = now + lease.as_millis() as Millis;
            let leased = store
                .lease_oauth_refresh(tenant, &upstream.name, row.version, &owner, now, until)
                .await
                .map_err(anyhow::Error::from)?;
            if leased {
                tracing::debug!(%tenant, upstream = %upstream.name, "OAuth refresh lease taken; asking the token endpoint");
                // In a task of its own: a caller that goes away (a proxy client hanging up)
                // must not cut a refresh off between the token endpoint's answer, which may
                // have rotated the refresh token, and storing it.
                let this = Arc::clone(self);
                let working = self.shutdown.working();
                let target = Target {
                    name: upstream.name.clone(),
                    index: upstream.index,
                };
                let (config, tenant, owner) = (Arc::clone(config), tenant.to_string(), owner);
                let refresh = tokio::spawn(async move {
                    let _working = working;
                    this.refresh(&target, &config, &tenant, row, tokens, &owner)
                        .await
                });
                return match refresh.await {
                    Ok(result) => result,
                    Err(e) => Err(TokenError::Store(anyhow::anyhow!(
                        "the OAuth refresh task ended: {e}"
                    ))),
                };
            }
            // Another node refreshes. A token that still works goes on being used meanwhile;
            // without one, wait for its tokens (or for its lease to run out).
            if usable && rejected != Some(&*held.access) {
                return Ok(Some(held.access));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TokenError::Unavailable {
                    tenant: tenant.to_string(),
                    upstream: upstream.name.clone(),
                    why: "another node's refresh did not finish in time".into(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The last failed refresh of `key`, while its backoff lasts.
    fn backed_off(&self, key: &GrantKey, now: Millis) -> Option<Backoff> {
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        match backoff.get(key) {
            Some(b) if now < b.until => Some(b.clone()),
            Some(_) => {
                backoff.remove(key);
                None
            }
            None => None,
        }
    }

    fn back_off(&self, key: &GrantKey, now: Millis, until: Millis, why: &str) {
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        if backoff.len() > 100_000 {
            backoff.clear();
        }
        let b = Backoff {
            failed_at: now,
            until,
            why: why.to_string(),
        };
        backoff.insert(key.clone(), b);
    }

    fn count(&self, upstream: &str, outcome: &'static str) {
        self.metrics
            .oauth_refreshes
            .get_or_create(&OAuthLabels {
                upstream: upstream.to_string(),
                outcome,
            })
            .inc();
    }

    fn cached(&self, key: &GrantKey) -> Option<Cached> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn open(&self, row: &OAuthGrantRow) -> Result<Tokens, TokenError> {
        let plain = self
            .credentials
            .open_grant(&row.tenant, &row.upstream, &row.sealed)?;
        serde_json::from_slice(&plain).map_err(|_| {
            TokenError::Store(anyhow::anyhow!(
                "the OAuth grant of tenant \"{}\" for \"{}\" is not readable; connect it again",
                row.tenant,
                row.upstream
            ))
        })
    }

    /// Caches the row's access token with its refresh time: the configured margin before
    /// expiry, but never before half its life (a token that lives five minutes is not due
    /// the moment it arrives).
    fn remember(
        &self,
        key: &GrantKey,
        row: &OAuthGrantRow,
        tokens: &Tokens,
        config: &OAuthConfig,
        now: Millis,
    ) -> Cached {
        let issued_at = chrono::DateTime::parse_from_rfc3339(&row.updated_at)
            .map(|t| t.timestamp_millis())
            .unwrap_or(now)
            .min(now);
        let refresh_at = row.expires_at.map(|at| {
            let margin = refresh_margin(config, &key.0, &key.1);
            (at - margin).max(issued_at + (at - issued_at) / 2)
        });
        let cached = Cached {
            access: Arc::from(tokens.access_token.as_str()),
            refresh_at,
            expires_at: row.expires_at,
            issued_at,
            // Read the store again now and then: another node may have refreshed, or the
            // tenant connected again or disconnected.
            check_at: refresh_at.map_or(now + CACHE_FOR, |at| at.min(now + CACHE_FOR)),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(key.clone(), cached.clone());
        cached
    }

    /// The grant as stored now, after a refresh found it changed.
    async fn current(
        &self,
        tenant: &str,
        upstream: &Target,
        config: &OAuthConfig,
        key: &GrantKey,
    ) -> Result<Option<Arc<str>>, TokenError> {
        let now = system_millis();
        match self
            .credentials
            .store()
            .get_oauth_grant(tenant, &upstream.name)
            .await
            .map_err(anyhow::Error::from)?
        {
            Some(current) if current.broken.is_none() => {
                let t = self.open(&current)?;
                Ok(Some(self.remember(key, &current, &t, config, now).access))
            }
            Some(current) => Err(self.broken(
                tenant,
                &upstream.name,
                current.broken.as_deref().unwrap_or_default(),
            )),
            None => Ok(None),
        }
    }

    fn broken(&self, tenant: &str, upstream: &str, reason: &str) -> TokenError {
        TokenError::Broken {
            tenant: tenant.to_string(),
            upstream: upstream.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Refreshes the grant whose lease `owner` holds.
    async fn refresh(
        &self,
        upstream: &Target,
        config: &OAuthConfig,
        tenant: &str,
        row: OAuthGrantRow,
        tokens: Tokens,
        owner: &str,
    ) -> Result<Option<Arc<str>>, TokenError> {
        let store = self.credentials.store();
        let key = (tenant.to_string(), upstream.name.clone());
        let mut outcome = self.ask_token_endpoint(upstream, config, &tokens).await;
        // An app's own grant cannot be connected again by anyone: its `invalid_grant` (a
        // client secret rotated, say) is a failure to retry, not a broken connection.
        if let (Refreshed::Invalid(why), GrantKind::ClientCredentials) = (&outcome, config.grant) {
            outcome = Refreshed::Failed(format!("invalid_grant: {why}"));
        }
        match outcome {
            Refreshed::Tokens {
                tokens: mut fresh,
                expires_at,
                scopes,
            } => {
                // A provider that does not rotate refresh tokens sends none back.
                if fresh.refresh_token.is_none() {
                    fresh.refresh_token = tokens.refresh_token;
                }
                let plain = serde_json::to_vec(&fresh).map_err(anyhow::Error::from)?;
                let sealed = self
                    .credentials
                    .seal_grant(tenant, &upstream.name, &plain)?;
                let scopes = scopes.unwrap_or_else(|| row.scopes.clone());
                let new = OAuthTokens {
                    sealed: &sealed,
                    expires_at,
                    scopes: &scopes,
                };
                // The rotated refresh token exists nowhere else: try hard to keep it.
                let mut tries = 0;
                let stored = loop {
                    tries += 1;
                    match store
                        .store_oauth_refresh(tenant, &upstream.name, row.version, &new)
                        .await
                    {
                        Ok(stored) => break stored,
                        Err(e) if tries < 5 => {
                            tracing::warn!(%tenant, upstream = %upstream.name, error = %e, "cannot store refreshed OAuth tokens yet; trying again");
                            tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                        }
                        Err(e) => {
                            tracing::error!(%tenant, upstream = %upstream.name, error = %e, "refreshed OAuth tokens could not be stored; if the provider rotated the refresh token, the grant may need connecting again");
                            return Err(TokenError::Store(e.into()));
                        }
                    }
                };
                if !stored {
                    // Connected again (or deleted) meanwhile: what is stored now wins.
                    tracing::warn!(%tenant, upstream = %upstream.name, "an OAuth grant changed while it was refreshed; its refresh is dropped");
                    return self.current(tenant, upstream, config, &key).await;
                }
                self.count(&upstream.name, "refreshed");
                self.backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                tracing::info!(%tenant, upstream = %upstream.name, "OAuth token refreshed");
                let now = system_millis();
                let row = OAuthGrantRow {
                    expires_at,
                    version: row.version + 1,
                    updated_at: crate::clock::rfc3339(now),
                    ..row
                };
                Ok(Some(self.remember(&key, &row, &fresh, config, now).access))
            }
            Refreshed::Invalid(reason) => {
                let reason = format!("invalid_grant: {reason}");
                let marked = store
                    .break_oauth_grant(tenant, &upstream.name, row.version, &reason)
                    .await
                    .map_err(anyhow::Error::from)?;
                self.forget(tenant, &upstream.name);
                if !marked {
                    // The grant changed meanwhile (connected again, which revokes the old
                    // refresh token, or refreshed by another node): what is stored now counts.
                    return self.current(tenant, upstream, config, &key).await;
                }
                self.count(&upstream.name, "broken");
                tracing::error!(%tenant, upstream = %upstream.name, %reason, "OAuth grant broken: the customer must connect again");
                (self.on_broken)(tenant, &upstream.name, &reason);
                Err(self.broken(tenant, &upstream.name, &reason))
            }
            Refreshed::Failed(why) => {
                let _ = store
                    .release_oauth_lease(tenant, &upstream.name, owner)
                    .await;
                self.count(&upstream.name, "failed");
                tracing::warn!(%tenant, upstream = %upstream.name, %why, "OAuth token refresh failed; will try again");
                let now = system_millis();
                // The token held still works until it expires: use it, and ask again later.
                // Without one, calls are told why at once for a moment, rather than each
                // trying the token endpoint in turn.
                let good =
                    !tokens.access_token.is_empty() && row.expires_at.is_none_or(|at| now < at);
                let pause = if good {
                    RETRY_REFRESH_AFTER
                } else {
                    RETRY_WITHOUT_TOKEN_AFTER
                };
                self.back_off(&key, now, now + pause, &why);
                if good {
                    return Ok(Some(Arc::from(tokens.access_token.as_str())));
                }
                Err(TokenError::Unavailable {
                    tenant: tenant.to_string(),
                    upstream: upstream.name.clone(),
                    why,
                })
            }
        }
    }

    /// One token request (refresh or client credentials), within the token endpoint's own
    /// budget and timeout.
    async fn ask_token_endpoint(
        &self,
        upstream: &Target,
        config: &OAuthConfig,
        held: &Tokens,
    ) -> Refreshed {
        // Built before any await: the serializer is not Send.
        let body = (|| {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            match config.grant {
                GrantKind::RefreshToken => {
                    let Some(refresh) = held.refresh_token.as_deref() else {
                        return Err("the grant holds no refresh token".to_string());
                    };
                    form.append_pair("grant_type", "refresh_token");
                    form.append_pair("refresh_token", refresh);
                }
                GrantKind::ClientCredentials => {
                    form.append_pair("grant_type", "client_credentials");
                    if !config.scopes.is_empty() {
                        form.append_pair("scope", &config.scopes.join(" "));
                    }
                }
            }
            if config.client_auth == ClientAuth::Body {
                form.append_pair("client_id", &config.client_id);
                form.append_pair("client_secret", &config.client_secret);
            }
            for (name, value) in &config.params {
                form.append_pair(name, value);
            }
            Ok(form.finish())
        })();
        let body = match body {
            Ok(b) => b,
            Err(why) => return Refreshed::Invalid(why),
        };
        let mut request = http::Request::post(config.token_url.as_str())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        if config.client_auth == ClientAuth::Basic {
            // RFC 6749 §2.3.1: each form-encoded, then joined.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(&config.client_id), enc(&config.client_secret));
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            let Ok(mut value) = HeaderValue::from_str(&format!("Basic {basic}")) else {
                return Refreshed::Failed(
                    "the client id or secret is not valid in a header".into(),
                );
            };
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let Ok(request) = request.body(Body::from(body)) else {
            return Refreshed::Failed(format!("\"{}\" is not a valid token URL", config.token_url));
        };
        let key = (upstream.index, Arc::from("oauth:token-endpoint"));
        let lease = match self
            .governor
            .acquire(
                key,
                &config.token_budget,
                Lane::Realtime,
                1.0,
                config.token_timeout,
                0,
            )
            .await
        {
            Ok(lease) => lease,
            Err(r) => {
                return Refreshed::Failed(format!(
                    "the token endpoint's budget: {}",
                    crate::outbound::refusal(&r)
                ))
            }
        };
        let answer = tokio::time::timeout(config.token_timeout, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let limited = http_body_util::Limited::new(body, MAX_TOKEN_ANSWER);
            let bytes = limited
                .collect()
                .await
                .map_err(|e| format!("cannot read the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts.status.as_u16(), bytes))
        })
        .await;
        let (status, bytes) = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                lease.finish(Outcome::TransportError);
                return Refreshed::Failed(format!("the token endpoint cannot be reached: {e}"));
            }
            Err(_) => {
                lease.finish(Outcome::TransportError);
                return Refreshed::Failed(format!(
                    "the token endpoint did not answer within {:?}",
                    config.token_timeout
                ));
            }
        };
        let signals = Signals {
            throttled: status == 429,
            ..Signals::default()
        };
        lease.finish(Outcome::Response {
            status,
            signals: &signals,
        });
        read_token_answer(status, &bytes, system_millis())
    }
}

/// How long before expiry the grant of (tenant, upstream) refreshes: the configured margin
/// and up to a quarter more, the same on every node for the same grant.
fn refresh_margin(config: &OAuthConfig, tenant: &str, upstream: &str) -> Millis {
    use std::hash::{Hash, Hasher};
    let margin = config.refresh_before.as_millis() as Millis;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (tenant, upstream).hash(&mut h);
    let spread = (margin / 4).max(1) as u64;
    margin + (h.finish() % spread) as Millis
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// What a token endpoint's answer says (RFC 6749 §5.1, §5.2).
fn read_token_answer(status: u16, body: &[u8], now: Millis) -> Refreshed {
    let answer: Option<TokenAnswer> = serde_json::from_slice(body).ok();
    let short = |s: &str| s.chars().take(200).collect::<String>();
    // GitHub answers a bad refresh token with a 200 and `bad_refresh_token`.
    let invalid = |e: &str| matches!(e, "invalid_grant" | "bad_refresh_token");
    match answer {
        Some(a) if (200..300).contains(&status) && a.error.is_none() => {
            let Some(access) = a.access_token.filter(|t| !t.is_empty()) else {
                return Refreshed::Failed(format!(
                    "the token endpoint answered {status} without an access_token"
                ));
            };
            let expires_in = match &a.expires_in {
                Some(serde_json::Value::Number(n)) => n.as_f64(),
                Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
                _ => None,
            };
            let expires_at = expires_in.filter(|s| s.is_finite()).map(|s| {
                let s = s.clamp(0.0, MAX_EXPIRES_IN.as_secs_f64());
                now + (s * 1000.0) as Millis
            });
            Refreshed::Tokens {
                tokens: Tokens {
                    access_token: access,
                    refresh_token: a.refresh_token.filter(|t| !t.is_empty()),
                },
                expires_at,
                scopes: a.scope,
            }
        }
        Some(a) if a.error.as_deref().is_some_and(invalid) => Refreshed::Invalid(short(
            a.error_description
                .as_deref()
                .unwrap_or("the refresh token is no longer valid"),
        )),
        Some(a) if a.error.is_some() => Refreshed::Failed(format!(
            "the token endpoint answered {status} {}{}",
            short(a.error.as_deref().unwrap_or_default()),
            a.error_description
                .map(|d| format!(": {}", short(&d)))
                .unwrap_or_default()
        )),
        _ => Refreshed::Failed(format!(
            "the token endpoint answered {status} without a token"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_tenant_can_be_named_like_the_apps_own_grant() {
        assert!(!crate::credentials::valid_tenant(APP_GRANT));
    }

    #[test]
    fn token_answers_are_read_as_the_rfc_says() {
        let ok = read_token_answer(
            200,
            br#"{"access_token":"a","token_type":"Bearer","expires_in":"3600","refresh_token":"r","scope":"x y"}"#,
            1_000,
        );
        assert!(
            matches!(ok, Refreshed::Tokens { expires_at: Some(3_601_000), ref scopes, .. } if scopes.as_deref() == Some("x y"))
        );
        let ok = read_token_answer(200, br#"{"access_token":"a","expires_in":1e12}"#, 0);
        assert!(
            matches!(ok, Refreshed::Tokens { expires_at: Some(at), .. } if at == MAX_EXPIRES_IN.as_millis() as Millis)
        );
        assert!(matches!(
            read_token_answer(400, br#"{"error":"invalid_grant","error_description":"revoked"}"#, 0),
            Refreshed::Invalid(d) if d == "revoked"
        ));
        assert!(matches!(
            read_token_answer(401, br#"{"error":"invalid_client"}"#, 0),
            Refreshed::Failed(d) if d.contains("invalid_client")
        ));
        assert!(matches!(
            read_token_answer(200, br#"{"error":"bad_refresh_token"}"#, 0),
            Refreshed::Invalid(_)
        ));
        assert!(matches!(
            read_token_answer(502, b"<html>", 0),
            Refreshed::Failed(_)
        ));
        assert!(matches!(
            read_token_answer(200, br#"{"token_type":"Bearer"}"#, 0),
            Refreshed::Failed(_)
        ));
    }
}
