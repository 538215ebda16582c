//! Outbound notifications: job and batch callbacks (`callback_url`) and alert webhooks.
//!
//! A tenant picks a callback URL, so Headroom must not become its way into the private
//! network (SSRF) nor a port scanner. By default a notification may go to public addresses
//! only: loopback, private (RFC 1918, fc00::/7), link-local (169.254/16 with the cloud
//! metadata address, fe80::/10), CGNAT (100.64/10), unspecified, multicast, broadcast and
//! reserved addresses, and the IPv4-mapped (and NAT64, 6to4) forms of these, are refused
//! unless `[callbacks] allow` names them. The check is made on the address actually
//! connected to, after resolution (a name that resolves, or later re-resolves, to a private
//! address is refused too), and early, at submit time, for literal addresses. A refused
//! destination looks to the tenant exactly like an unreachable one (the callback is retried,
//! then `failed`), so that the answer says nothing about what listens inside.
//!
//! Deliveries run concurrently with short timeouts, at most `max_in_flight` in all,
//! `max_per_host` to one host and `max_per_tenant` for one tenant: hanging URLs hold their
//! own slots, not everyone's. Retries keep their durable schedule in the store.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::cfg::CallbackConfig;
use crate::destination::Allowlist;
use crate::jobs::*;

// ---- the client ------------------------------------------------------------------------

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a connection was not made to a destination the policy refuses. Never shown to the
/// tenant: for them it is one more unreachable URL.
#[derive(Debug, thiserror::Error)]
#[error("{0}: no address of this host may be reached under [callbacks] allow")]
pub struct Refused(String);

/// Connects only to addresses the policy permits, checking the addresses a name resolves
/// to, at connect time (so a DNS answer that changes after the submit check changes
/// nothing).
#[derive(Clone)]
pub struct GuardedConnector {
    allow: Arc<Allowlist>,
    connect_timeout: Duration,
}

impl GuardedConnector {
    async fn connect(self, uri: http::Uri) -> Result<TokioIo<TcpStream>, BoxError> {
        let host = uri
            .host()
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let found: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::time::timeout_at(deadline, tokio::net::lookup_host((&*host, port)))
                .await
                .map_err(|_| "resolving the host timed out")??
                .collect(),
        };
        let permitted: Vec<SocketAddr> = found
            .into_iter()
            .filter(|a| self.allow.permits(&host, a.ip()))
            .collect();
        if permitted.is_empty() {
            return Err(Box::new(Refused(host)));
        }
        let mut last: BoxError = "connecting timed out".into();
        for addr in permitted {
            match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(e)) => last = Box::new(e),
                Err(_) => break,
            }
        }
        Err(last)
    }
}

impl tower::Service<http::Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

pub type CallbackClient = Client<HttpsConnector<GuardedConnector>, Body>;

/// Slots in use: in all, by host and by tenant.
#[derive(Default)]
struct Counts {
    total: usize,
    hosts: HashMap<String, usize>,
    tenants: HashMap<String, usize>,
}

/// The delivery limits, shared by callbacks and alert webhooks.
pub(crate) struct Limits {
    counts: Mutex<Counts>,
    freed: tokio::sync::Notify,
    max_in_flight: usize,
    max_per_host: usize,
    max_per_tenant: usize,
}

/// One delivery's place under the limits, given back when dropped.
pub(crate) struct Slot {
    limits: Arc<Limits>,
    host: String,
    tenant: Option<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        fn give_back(map: &mut HashMap<String, usize>, key: &str) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        give_back(&mut c.hosts, &self.host);
        if let Some(t) = &self.tenant {
            give_back(&mut c.tenants, t);
        }
        drop(c);
        self.limits.freed.notify_waiters();
    }
}

impl Limits {
    /// A slot if the limits leave one now.
    pub(crate) fn try_take(self: &Arc<Self>, host: &str, tenant: Option<&str>) -> Option<Slot> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.max_in_flight
            || c.hosts.get(host).copied().unwrap_or(0) >= self.max_per_host
            || tenant.is_some_and(|t| c.tenants.get(t).copied().unwrap_or(0) >= self.max_per_tenant)
        {
            return None;
        }
        c.total += 1;
        *c.hosts.entry(host.to_string()).or_default() += 1;
        if let Some(t) = tenant {
            *c.tenants.entry(t.to_string()).or_default() += 1;
        }
        Some(Slot {
            limits: Arc::clone(self),
            host: host.to_string(),
            tenant: tenant.map(str::to_string),
        })
    }

    /// Waits for a slot.
    async fn take(self: &Arc<Self>, host: &str, tenant: Option<&str>) -> Slot {
        loop {
            let freed = self.freed.notified();
            if let Some(slot) = self.try_take(host, tenant) {
                return slot;
            }
            // A slot freed between the check and here would be missed: look again anyway.
            let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
        }
    }
}

/// How a notification went; everything but `Delivered` is a failure to retry.
#[derive(Debug)]
pub enum Outcome {
    Delivered,
    /// The destination answered with this status.
    Status(http::StatusCode),
    /// No answer: unreachable, refused by the policy, or too slow (the reason is for logs).
    NoAnswer(String),
}

/// Sends notifications under the policy and limits of `[callbacks]`.
pub struct Notifier {
    pub(crate) config: CallbackConfig,
    client: CallbackClient,
    pub(crate) limits: Arc<Limits>,
    /// Wakes the callback loop when a delivery finishes (its slot is free again).
    pub(crate) done: tokio::sync::Notify,
}

impl Notifier {
    pub fn new(config: &CallbackConfig) -> Notifier {
        let connector = GuardedConnector {
            allow: Arc::new(config.allow.clone()),
            connect_timeout: config.connect_timeout,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .expect("ring supports the default TLS versions")
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(config.max_per_host)
            .build(https);
        Notifier {
            config: config.clone(),
            client,
            limits: Arc::new(Limits {
                counts: Mutex::new(Counts::default()),
                freed: tokio::sync::Notify::new(),
                max_in_flight: config.max_in_flight,
                max_per_host: config.max_per_host,
                max_per_tenant: config.max_per_tenant,
            }),
            done: tokio::sync::Notify::new(),
        }
    }

    pub fn config(&self) -> &CallbackConfig {
        &self.config
    }

    /// POSTs a JSON body, within the timeout (no slot taken: the caller holds one).
    pub(crate) async fn post(
        &self,
        uri: http::Uri,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Outcome {
        let mut request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "headroom");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let Ok(request) = request.body(Body::from(body)) else {
            return Outcome::NoAnswer("the request cannot be built".into());
        };
        match tokio::time::timeout(self.config.timeout, self.client.request(request)).await {
            Ok(Ok(r)) if r.status().is_success() => Outcome::Delivered,
            Ok(Ok(r)) => Outcome::Status(r.status()),
            Ok(Err(e)) => Outcome::NoAnswer(error_chain(&e)),
            Err(_) => Outcome::NoAnswer(format!(
                "no answer within {}",
                headroom_core::duration::format_duration(self.config.timeout)
            )),
        }
    }

    /// POSTs an alert notification, waiting for a slot of the webhook's host.
    pub async fn post_webhook(
        &self,
        uri: &http::Uri,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Outcome {
        let _slot = self.limits.take(&host_key(uri), None).await;
        self.post(uri.clone(), headers, body).await
    }
}

/// `host:port` (lowercase): what the per-host limit counts.
pub(crate) fn host_key(uri: &http::Uri) -> String {
    let host = uri.host().unwrap_or("").to_ascii_lowercase();
    match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// An error with its causes (hyper's own message is terse: "client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

// ---- job and batch callbacks -----------------------------------------------------------

/// A message's Standard Webhooks headers.
pub(crate) struct Signed {
    id: String,
    timestamp: String,
    signature: String,
}

impl Signed {
    /// The headers of message `id` with `body` sent at `now`, signed with each of `secrets`
    /// (several while a rotation overlaps: space-separated signatures, any of which verifies);
    /// `None` without a secret of the `whsec_` form.
    pub(crate) fn new(secrets: &[&str], id: String, now: Millis, body: &[u8]) -> Option<Signed> {
        let timestamp = (now / 1000).to_string();
        let signatures: Vec<String> = secrets
            .iter()
            .filter_map(|secret| sign(secret, &id, &timestamp, body))
            .collect();
        if signatures.is_empty() {
            return None;
        }
        let signature = signatures.join(" ");
        Some(Signed {
            id,
            timestamp,
            signature,
        })
    }

    pub(crate) fn headers(&self) -> [(&str, &str); 3] {
        [
            ("webhook-id", &self.id),
            ("webhook-timestamp", &self.timestamp),
            ("webhook-signature", &self.signature),
        ]
    }
}

/// The Standard Webhooks signature of a message: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under the secret's key (`whsec_` + base64). `None` for a secret
/// that is not of that form.
pub fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> Option<String> {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", b64.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The specification's example (checked with Python's hmac).
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            signature.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("not-a-secret", "m", "1", b"{}"), None);
    }

    #[test]
    fn limits_count_by_host_and_tenant() {
        let limits = Arc::new(Limits {
            counts: Mutex::new(Counts::default()),
            freed: tokio::sync::Notify::new(),
            max_in_flight: 3,
            max_per_host: 2,
            max_per_tenant: 2,
        });
        let a1 = limits.try_take("h1", Some("a")).unwrap();
        let _a2 = limits.try_take("h1", Some("a")).unwrap();
        assert!(
            limits.try_take("h2", Some("a")).is_none(),
            "tenant a is full"
        );
        assert!(
            limits.try_take("h1", Some("b")).is_none(),
            "host h1 is full"
        );
        let _b1 = limits.try_take("h2", Some("b")).unwrap();
        assert!(
            limits.try_take("h3", Some("c")).is_none(),
            "all slots taken"
        );
        drop(a1);
        assert!(limits.try_take("h3", Some("c")).is_some());
    }

    /// The connector checks what a name resolves to: `localhost` is refused by default (no
    /// connection is made), and reached once `allow` names its address or the name.
    #[tokio::test]
    async fn names_are_checked_on_the_addresses_they_resolve_to() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let uri: http::Uri = format!("http://localhost:{port}/").parse().unwrap();
        let connector = |allow: &[&str]| {
            let mut list = Allowlist::default();
            for a in allow {
                list.add(a).unwrap();
            }
            GuardedConnector {
                allow: Arc::new(list),
                connect_timeout: Duration::from_secs(3),
            }
        };
        let e = connector(&[]).connect(uri.clone()).await.unwrap_err();
        assert!(e.is::<Refused>(), "{e}");
        let e = connector(&[])
            .connect(
                format!("http://[::ffff:127.0.0.1]:{port}/")
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap_err();
        assert!(e.is::<Refused>(), "{e}");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), listener.accept())
                .await
                .is_err(),
            "a refused destination was connected to"
        );
        for allow in [&["127.0.0.1/32"][..], &["localhost"][..]] {
            let connected = connector(allow).connect(uri.clone()).await;
            // `localhost` may resolve to ::1 first, where nothing listens: any address of
            // the name that is permitted is tried in turn.
            assert!(connected.is_ok(), "{allow:?}: {:?}", connected.err());
            listener.accept().await.unwrap();
        }
    }
}
