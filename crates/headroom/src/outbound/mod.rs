//! One governed call to an upstream, the way the proxy, jobs and batches all make it:
//!
//! 1. [`prepare`]: the target URI under the upstream's base URL ([`target_uri`]), the
//!    headers with the tenant's stored credential in, and the budget the call spends;
//! 2. [`Prepared::send`]: leave from the governor (waiting for the budget's pace, or
//!    refused), the request out, the answer's rate-limit signals read back into the budget,
//!    metrics and events recorded;
//! 3. the caller judges the [`Answer`] with `headroom_core::verdict` and acts on it in its
//!    own way: the proxy retries while its caller waits, a job or batch record is rescheduled
//!    in the store.
//!
//! Nothing outside this module holds the HTTP client or asks the governor for leave.

pub mod client;
mod cost;
pub mod governor;
mod send;
mod target;
mod timer;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use headroom_core::{Lane, RejectReason, Rejection};
use http::header::{HeaderMap, HeaderValue};
use http::Method;
use sha2::{Digest, Sha256};

use crate::cfg::{BudgetScope, Route, Upstream};
use crate::clock::WallClock;
use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::oauth::{OAuth, TokenError};
use crate::observe::Observer;
use crate::overrides::Overrides;
use client::UpstreamClient;
use governor::{BudgetKey, SharedGovernor};

pub(crate) use crate::observe::Call;
pub(crate) use cost::MAX_COST;
pub(crate) use send::{read_up_to, Answer, AnswerBody, Read};
pub use target::{target_uri, TargetError};

/// What a governed call needs, and nothing else of the server. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    client: UpstreamClient,
    governor: Arc<SharedGovernor>,
    credentials: Arc<Credentials>,
    metrics: Arc<Metrics>,
    observe: Arc<Observer>,
    clock: WallClock,
    /// Operators' changes to tenants' budgets.
    overrides: Arc<Overrides>,
    /// What calls without a stated cost are likely to cost, per route.
    costs: Arc<cost::CostEstimates>,
    /// OAuth access tokens, for upstreams whose credential is one.
    pub oauth: Arc<OAuth>,
    /// The upstream timeout's timers.
    timers: timer::Timers,
}

impl Outbound {
    pub fn new(
        governor: Arc<SharedGovernor>,
        credentials: Arc<Credentials>,
        metrics: Arc<Metrics>,
        observe: Arc<Observer>,
        clock: WallClock,
        overrides: Arc<Overrides>,
        shutdown: crate::shutdown::Shutdown,
    ) -> Outbound {
        // Calls to upstreams carry their `Host` (see `send`); token endpoints are given theirs.
        let client = client::build(false);
        let oauth = {
            let observe = Arc::clone(&observe);
            Arc::new(OAuth::new(
                Arc::clone(&credentials),
                Arc::clone(&governor),
                client::build(true),
                Arc::clone(&metrics),
                shutdown,
                Box::new(move |tenant, upstream, reason| {
                    observe.oauth_broken(upstream, tenant, reason)
                }),
            ))
        };
        Outbound {
            client,
            oauth,
            governor,
            credentials,
            metrics,
            observe,
            clock,
            overrides,
            costs: Default::default(),
            timers: timer::Timers::new(),
        }
    }

    /// Prepares a call of `method` to `path` (still percent-encoded) and `query` under
    /// `upstream`, with the caller's `headers`, on behalf of `tenant`.
    pub(crate) async fn prepare<'a>(
        &'a self,
        upstream: &'a Upstream,
        tenant: Option<&'a str>,
        method: Method,
        path: &str,
        query: Option<&str>,
        mut headers: HeaderMap,
    ) -> Result<Prepared<'a>, PrepareError> {
        let uri = target_uri(&upstream.base, path, query)?;
        let credential = match (&upstream.oauth, oauth_party(upstream, tenant)) {
            (Some(oauth), Some(tenant)) => {
                let token = self
                    .oauth
                    .access_token(upstream, oauth, tenant, None)
                    .await
                    .map_err(PrepareError::OAuth)?;
                match token {
                    Some(token) => Some(put_credential(upstream, &token, &mut headers)?),
                    None => None,
                }
            }
            _ => inject_credential(&self.credentials, upstream, tenant, &mut headers).await?,
        };
        let key: BudgetKey = (upstream.index, budget_key(upstream, tenant, &headers));
        // The first route that matches adds its own budget, per the same tenant or credential.
        let route = upstream
            .routes
            .iter()
            .find(|r| r.matches(&method, path))
            .map(|r| {
                let key: BudgetKey = (upstream.index, Arc::from(route_key(&r.name, &key.1)));
                (r, key)
            });
        Ok(Prepared {
            outbound: self,
            upstream,
            tenant,
            method,
            uri,
            headers,
            credential,
            key,
            route,
        })
    }
}

/// A call ready to be sent: where, with which headers, spending which budget.
pub(crate) struct Prepared<'a> {
    outbound: &'a Outbound,
    pub upstream: &'a Upstream,
    pub tenant: Option<&'a str>,
    pub method: Method,
    pub uri: http::Uri,
    /// The headers of the next send, the tenant's credential included. A send with
    /// [`Send::take_headers`] takes them; [`Prepared::set_headers`] gives the next its own.
    pub headers: HeaderMap,
    /// The credential put in `headers` (the stored one or an OAuth token), if any.
    credential: Option<HeaderValue>,
    pub key: BudgetKey,
    /// The endpoint route the call matched, with the budget it spends there.
    pub route: Option<(&'a Route, BudgetKey)>,
}

/// Why a call could not be prepared.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    /// The caller's path or query (theirs to fix).
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The tenant's credential could not be read now (the store's fault: try again later).
    #[error("cannot read the tenant's credential: {0}")]
    CredentialUnreadable(String),
    /// The stored credential cannot be sent as a header value.
    #[error("the stored credential is not a valid header value")]
    CredentialInvalid,
    /// No OAuth access token can be had (the grant is broken, or cannot be refreshed now).
    #[error(transparent)]
    OAuth(TokenError),
}

/// How a prepared call is sent.
pub(crate) struct Send<'a> {
    pub lane: Lane,
    /// Points the call spends from its budget (1 unless the caller says otherwise).
    pub cost: f64,
    /// How long the call may wait for its budget before it is refused.
    pub max_wait: Duration,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The job's queue, for events.
    pub queue: Option<&'a str>,
    /// The caller's deadline when a retry may follow (the proxy's max wait): reading a
    /// throttled or failed answer's body gives up there too.
    pub wait_until: Option<tokio::time::Instant>,
    pub read: Read,
    /// Whether the send takes the prepared headers rather than a copy: a caller that sends
    /// again sets them anew first ([`Prepared::set_headers`]). The proxy's calls take them
    /// (a copy per call costs more than a rebuild per retry); jobs' and batches' copy.
    pub take_headers: bool,
}

impl Prepared<'_> {
    /// After an answer of `status` whose body starts with `body`: when the upstream's OAuth
    /// settings say the access token sent expired, a new one in place of it (refreshed,
    /// or the one another call refreshed meanwhile). True when the call may go again with it.
    pub async fn renew_token(&mut self, status: u16, body: &[u8]) -> Result<bool, TokenError> {
        let (Some(oauth), Some(tenant)) = (
            &self.upstream.oauth,
            oauth_party(self.upstream, self.tenant),
        ) else {
            return Ok(false);
        };
        if !oauth.says_expired(status, body) {
            return Ok(false);
        }
        let scheme = &self.upstream.credential.scheme;
        let sent = self.credential.as_ref().and_then(|v| v.to_str().ok());
        let sent = sent.map(|v| {
            v.strip_prefix(scheme.as_str())
                .map_or(v, |rest| rest.trim_start())
                .to_string()
        });
        let fresh = self
            .outbound
            .oauth
            .access_token(self.upstream, oauth, tenant, sent.as_deref())
            .await?;
        match fresh {
            Some(token) if Some(&*token) != sent.as_deref() => {
                let put = put_credential(self.upstream, &token, &mut self.headers)
                    .map_err(|e| TokenError::Store(anyhow::anyhow!("{e}")))?;
                self.credential = Some(put);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The headers of the next send, in place of those a send took: `headers` as the
    /// caller would give them to `prepare`, with the call's credential put in again.
    pub fn set_headers(&mut self, mut headers: HeaderMap) {
        if let Some(value) = &self.credential {
            headers.insert(self.upstream.credential.header.clone(), value.clone());
        }
        self.headers = headers;
    }

    /// The tenant, or the budget key when there is none: for metrics and events.
    pub fn label(&self) -> &str {
        self.tenant.unwrap_or(&self.key.1)
    }

    /// The call as events describe it.
    pub fn call<'a>(&'a self, attempt: u32, queue: Option<&'a str>) -> Call<'a> {
        Call {
            upstream: self.upstream,
            tenant: self.label(),
            method: &self.method,
            uri: &self.uri,
            attempt,
            queue,
        }
    }

    /// What the call is likely to cost when its caller does not say: what past calls of its
    /// route cost, where the upstream meters cost (see `Upstream::meters_cost`).
    pub fn estimated_cost(&self) -> Option<f64> {
        if let Some(cost) = self.route.as_ref().and_then(|(r, _)| r.cost) {
            return Some(cost);
        }
        if !self.upstream.meters_cost() {
            return None;
        }
        self.outbound
            .costs
            .estimate(self.upstream.index, &self.method, self.uri.path())
            .filter(|c| *c > 0.0)
    }

    /// Waits for the budget (or is refused), then sends the call with `body` and reads the
    /// answer back into the budget.
    pub async fn send(&mut self, body: Body, how: Send<'_>) -> Answer {
        let out = self.outbound;
        let party = governor::party_of(self.tenant);
        let overridden = out.overrides.config(&self.key);
        let config = overridden.as_ref().unwrap_or(&self.upstream.budget_config);
        let lease = match &self.route {
            None => {
                out.governor
                    .acquire(
                        self.key.clone(),
                        config,
                        how.lane,
                        how.cost,
                        how.max_wait,
                        party,
                    )
                    .await
            }
            Some((route, route_key)) => {
                out.governor
                    .acquire_both(
                        (route_key, &route.budget_config),
                        &self.key,
                        &|| {
                            out.overrides
                                .config(&self.key)
                                .unwrap_or_else(|| Arc::clone(&self.upstream.budget_config))
                        },
                        how.lane,
                        how.cost,
                        how.max_wait,
                        party,
                    )
                    .await
            }
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(rejection) => return Answer::Refused(rejection),
        };
        let headers = if how.take_headers {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        let call = self.call(how.attempt, how.queue);
        send::send(out, &call, lease, body, headers, how.read, how.wait_until).await
    }
}

/// Why the governor refused a call, in a word for a job's or a record's error.
pub(crate) fn refusal(rejection: &Rejection) -> &'static str {
    match rejection.reason {
        RejectReason::BreakerOpen => "the upstream's circuit breaker is open",
        RejectReason::Unavailable => "the governor's Redis cannot be reached",
        RejectReason::WaitTooLong | RejectReason::QueueFull => {
            "the budget has no room within the wait cap"
        }
        RejectReason::QuotaExhausted => "a long-window quota is spent until its reset",
        RejectReason::Paused => "an operator paused the budget",
    }
}

/// The key of a route's budget beside the upstream budget `key` (`route:crm-search:tenant:acme`).
pub(crate) fn route_key(route: &str, key: &str) -> String {
    format!("route:{route}:{key}")
}

/// The route and the upstream budget key of a route's budget key, if it is one.
pub(crate) fn split_route_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix("route:")?.split_once(':')
}

/// The budget a call spends: shared, the tenant's, or one per credential (hashed, never the
/// credential itself).
fn budget_key(upstream: &Upstream, tenant: Option<&str>, headers: &HeaderMap) -> Arc<str> {
    // Made once: a call on a shared or anonymous budget allocates no key.
    static SHARED: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("shared"));
    static ANONYMOUS: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| Arc::from("anonymous"));
    if upstream.budget == BudgetScope::Shared {
        return Arc::clone(&SHARED);
    }
    if let Some(t) = tenant {
        return crate::overrides::tenant_budget(t);
    }
    match headers.get(&upstream.credential.header) {
        Some(credential) => {
            let digest = Sha256::digest(credential.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            Arc::from(format!("credential:{hex}"))
        }
        None => Arc::clone(&ANONYMOUS),
    }
}
/// Puts the tenant's stored credential for the upstream (if any) in the upstream's
/// credential header, replacing whatever the caller sent there.
async fn inject_credential(
    credentials: &Credentials,
    upstream: &Upstream,
    tenant: Option<&str>,
    headers: &mut HeaderMap,
) -> Result<Option<HeaderValue>, PrepareError> {
    let Some(tenant) = tenant else {
        return Ok(None);
    };
    let credential = match credentials.get(tenant, &upstream.name).await {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(e) => return Err(PrepareError::CredentialUnreadable(format!("{e:#}"))),
    };
    put_credential(upstream, &credential, headers).map(Some)
}

/// Whose OAuth grant a call carries: its tenant's, or with a client-credentials grant the
/// app's (calls without a tenant too).
fn oauth_party<'a>(upstream: &Upstream, tenant: Option<&'a str>) -> Option<&'a str> {
    match upstream.oauth.as_deref().map(|o| o.grant) {
        Some(crate::cfg::GrantKind::ClientCredentials) => Some(tenant.unwrap_or_default()),
        _ => tenant,
    }
}

/// Puts `credential` in the upstream's credential header, after its scheme; returns the
/// value put.
fn put_credential(
    upstream: &Upstream,
    credential: &str,
    headers: &mut HeaderMap,
) -> Result<HeaderValue, PrepareError> {
    let value = if upstream.credential.scheme.is_empty() {
        credential.to_string()
    } else {
        format!("{} {credential}", upstream.credential.scheme)
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| PrepareError::CredentialInvalid)?;
    value.set_sensitive(true);
    headers.insert(upstream.credential.header.clone(), value.clone());
    Ok(value)
}
