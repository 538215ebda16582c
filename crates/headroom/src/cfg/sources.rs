//! `[[sources]]`: providers whose webhooks arrive at `POST /intake/{name}`: how a delivery is
//! verified, where its event id and tenant are, and the job it becomes.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, Config};
use crate::intake::verify::{Scheme, Verifier};
use crate::store::model::jobs::QueueMode;

/// Where a value is in a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Pick {
    /// A request header.
    Header(http::HeaderName),
    /// A JSON pointer into the body (RFC 6901), e.g. `/id` or `/data/object/id`.
    Json(String),
    /// The same for every delivery (a tenant).
    Fixed(String),
}

impl Pick {
    /// `header:NAME`, a JSON pointer (`/…`), or with `fixed` a literal.
    fn parse(key: &str, text: &str, fixed: bool) -> Result<Pick, String> {
        if let Some(name) = text.strip_prefix("header:") {
            return http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(Pick::Header)
                .map_err(|_| format!("{key}: \"{name}\" is not a header name"));
        }
        if text.starts_with('/') {
            return Ok(Pick::Json(text.to_string()));
        }
        if fixed && crate::credentials::valid_tenant(text) {
            return Ok(Pick::Fixed(text.to_string()));
        }
        Err(format!(
            "{key}: \"{text}\" is neither \"header:NAME\" nor a JSON pointer like \"/id\"{}",
            if fixed { " nor a tenant name" } else { "" }
        ))
    }

    /// The value in a delivery, as text (a JSON number is written as it is).
    pub fn value(
        &self,
        headers: &http::HeaderMap,
        json: Option<&serde_json::Value>,
    ) -> Option<String> {
        match self {
            Pick::Header(h) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
            Pick::Json(p) => match json?.pointer(p)? {
                serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            },
            Pick::Fixed(v) => Some(v.clone()),
        }
    }
}

/// The order in which a source's events are processed.
#[derive(Debug, Clone, PartialEq)]
pub enum Order {
    /// As fast as the budget allows.
    Parallel,
    /// One at a time per value of the key (an object id, an account), oldest first.
    Fifo { key: Pick },
}

/// A validated `[[sources]]` entry.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub verifier: Verifier,
    pub event_id: Pick,
    pub tenant: Option<Pick>,
    pub dedup_window: Duration,
    pub max_body: usize,
    /// The URL the provider calls, for schemes that sign it (HubSpot v3); else the request's
    /// own `Host` and path.
    pub public_url: Option<String>,
    pub route: IntakeRoute,
}

/// The job each event becomes: a governed call to `upstream` (the team's worker, or the API
/// to call back).
#[derive(Debug, Clone)]
pub struct IntakeRoute {
    pub queue: String,
    pub upstream: String,
    pub method: http::Method,
    /// The path, with `{/pointer}` replaced by the event's values.
    pub path: String,
    /// Whether the event's body goes with the call.
    pub forward_body: bool,
    pub order: Order,
    pub lane: headroom_core::Lane,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    name: String,
    verify: String,
    #[serde(default)]
    secrets: Vec<String>,
    secret: Option<String>,
    header: Option<String>,
    tolerance: Option<String>,
    event_id: String,
    tenant: Option<String>,
    dedup_window: Option<String>,
    max_body_kib: Option<u64>,
    public_url: Option<String>,
    route: RawIntakeRoute,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntakeRoute {
    queue: Option<String>,
    upstream: String,
    method: Option<String>,
    path: String,
    body: Option<String>,
    order: Option<String>,
    order_key: Option<String>,
    lane: Option<String>,
}

impl RawSource {
    pub(crate) fn validate(self, key: &str, config: &Config) -> Result<Source, String> {
        if !super::valid_name(&self.name) {
            return Err(format!(
                "{key}.name: \"{}\" must be letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        let scheme = Scheme::parse(&self.verify, self.header.as_deref())
            .map_err(|e| format!("{key}.verify: {e}"))?;
        let mut secrets = self.secrets;
        secrets.extend(self.secret);
        secrets.retain(|s| !s.is_empty());
        if secrets.is_empty() {
            return Err(format!(
                "{key}.secret: missing; the provider's signing secret, as \"${{VARIABLE}}\" \
                 (`secrets = [..]` while rotating)"
            ));
        }
        let tolerance = match self.tolerance {
            Some(t) => duration(&format!("{key}.tolerance"), &t)?,
            None => Duration::from_secs(300),
        };
        let event_id = Pick::parse(&format!("{key}.event_id"), &self.event_id, false)?;
        let tenant = self
            .tenant
            .map(|t| Pick::parse(&format!("{key}.tenant"), &t, true))
            .transpose()?;
        let dedup_window = match self.dedup_window {
            Some(d) => duration(&format!("{key}.dedup_window"), &d)?,
            None => Duration::from_secs(600),
        };
        let max_body = match self.max_body_kib {
            Some(k) if (1..=16 * 1024).contains(&k) => (k * 1024) as usize,
            Some(k) => {
                return Err(format!(
                    "{key}.max_body_kib: {k} is out of range; use 1 to 16384"
                ))
            }
            None => 1024 * 1024,
        };
        let r = self.route;
        let rkey = format!("{key}.route");
        let queue = r.queue.unwrap_or_else(|| "default".to_string());
        let q = config
            .queue(&queue)
            .ok_or_else(|| format!("{rkey}.queue: \"{queue}\" is not a configured queue"))?;
        if config.upstream(&r.upstream).is_none() {
            return Err(format!(
                "{rkey}.upstream: \"{}\" is not a configured upstream",
                r.upstream
            ));
        }
        let method = r.method.as_deref().unwrap_or("POST");
        let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("{rkey}.method: \"{method}\" is not a method"))?;
        if !r.path.starts_with('/') {
            return Err(format!("{rkey}.path: \"{}\" must start with /", r.path));
        }
        let forward_body = match r.body.as_deref() {
            None | Some("event") => true,
            Some("none") => false,
            Some(other) => {
                return Err(format!(
                    "{rkey}.body: \"{other}\" is not a choice; use \"event\" (the delivery's \
                     body) or \"none\""
                ))
            }
        };
        let order = match r.order.as_deref() {
            None | Some("parallel") => Order::Parallel,
            Some("fifo") => {
                if q.mode != QueueMode::Sequential {
                    return Err(format!(
                        "{rkey}.order: \"fifo\" needs a sequential queue; queue \"{queue}\" \
                         is not (give it mode = \"sequential\")"
                    ));
                }
                let key_text = r.order_key.as_deref().ok_or_else(|| {
                    format!("{rkey}.order_key: missing; what events are ordered by, like \"/object_id\"")
                })?;
                Order::Fifo {
                    key: Pick::parse(&format!("{rkey}.order_key"), key_text, false)?,
                }
            }
            Some(other) => {
                return Err(format!(
                    "{rkey}.order: \"{other}\" is not an order; use \"fifo\" or \"parallel\""
                ))
            }
        };
        let lane = match r.lane.as_deref() {
            None | Some("realtime") => headroom_core::Lane::Realtime,
            Some("bulk") => headroom_core::Lane::Bulk,
            Some(other) => {
                return Err(format!(
                    "{rkey}.lane: \"{other}\" is not a lane; use \"realtime\" or \"bulk\""
                ))
            }
        };
        Ok(Source {
            name: self.name,
            verifier: Verifier {
                scheme,
                secrets,
                tolerance,
            },
            event_id,
            tenant,
            dedup_window,
            max_body,
            public_url: self.public_url,
            route: IntakeRoute {
                queue,
                upstream: r.upstream,
                method,
                path: r.path,
                forward_body,
                order,
                lane,
            },
        })
    }
}

impl IntakeRoute {
    /// The path with each `{/pointer}` replaced by the event's value there (one path segment,
    /// percent-encoded); the pointer that has no value, if one has none.
    pub fn path_for(&self, json: Option<&serde_json::Value>) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = self.path.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                out.push_str(&rest[open..]);
                return Ok(out);
            };
            let pointer = &rest[open + 1..open + close];
            let value = Pick::Json(pointer.to_string())
                .value(&http::HeaderMap::new(), json)
                .ok_or_else(|| pointer.to_string())?;
            out.extend(url::form_urlencoded::byte_serialize(value.as_bytes()));
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sources: &str) -> Result<Config, String> {
        let text = format!(
            "[[upstreams]]\nname = \"crm\"\nbase_url = \"https://api.example.com\"\n\
             [[queues]]\nname = \"events\"\nmode = \"sequential\"\n{sources}"
        );
        Config::parse(&text, "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn a_source_parses_and_errors_name_the_key() {
        let ok = parse(
            "[[sources]]\nname = \"shop\"\nverify = \"shopify\"\nsecret = \"s\"\n\
             event_id = \"header:X-Shopify-Webhook-Id\"\ntenant = \"header:X-Shopify-Shop-Domain\"\n\
             [sources.route]\nqueue = \"events\"\nupstream = \"crm\"\nmethod = \"GET\"\n\
             path = \"/products/{/id}.json\"\nbody = \"none\"\norder = \"fifo\"\norder_key = \"/id\"\n",
        )
        .unwrap();
        let s = &ok.sources[0];
        assert_eq!(s.dedup_window, Duration::from_secs(600));
        assert_eq!(
            s.route
                .path_for(Some(&serde_json::json!({"id": 632910392}))),
            Ok("/products/632910392.json".to_string())
        );
        assert_eq!(
            s.route.path_for(Some(&serde_json::json!({"id": "a/b c"}))),
            Ok("/products/a%2Fb+c.json".to_string())
        );
        assert_eq!(
            s.route.path_for(Some(&serde_json::json!({}))),
            Err("/id".to_string())
        );
        for (body, names) in [
            (
                "verify = \"md5\"\nsecret = \"s\"\nevent_id = \"/id\"",
                "sources[0].verify",
            ),
            (
                "verify = \"github\"\nevent_id = \"/id\"",
                "sources[0].secret: missing",
            ),
            (
                "verify = \"github\"\nsecret = \"s\"\nevent_id = \"id\"",
                "sources[0].event_id",
            ),
        ] {
            let e = parse(&format!(
                "[[sources]]\nname = \"x\"\n{body}\n[sources.route]\nupstream = \"crm\"\npath = \"/h\"\n"
            ))
            .unwrap_err();
            assert!(e.contains(names), "{e}");
        }
        for (route, names) in [
            ("upstream = \"nope\"\npath = \"/h\"", "route.upstream"),
            ("upstream = \"crm\"\npath = \"h\"", "route.path"),
            (
                "upstream = \"crm\"\npath = \"/h\"\norder = \"fifo\"\norder_key = \"/id\"",
                "needs a sequential queue",
            ),
            (
                "queue = \"events\"\nupstream = \"crm\"\npath = \"/h\"\norder = \"fifo\"",
                "route.order_key: missing",
            ),
        ] {
            let e = parse(&format!(
                "[[sources]]\nname = \"x\"\nverify = \"github\"\nsecret = \"s\"\nevent_id = \"/id\"\n[sources.route]\n{route}\n"
            ))
            .unwrap_err();
            assert!(e.contains(names), "{e}");
        }
    }
}
