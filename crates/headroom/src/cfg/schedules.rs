//! `[[schedules]]` as written. They are checked against the rest of the config (their
//! job or batch template against the upstreams and queues) by `schedules::from_config`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A schedule as written: `[[schedules]]` in the config or the body of `POST /v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDef {
    pub name: String,
    /// 5 fields (POSIX), or 6 with seconds first.
    pub cron: String,
    /// IANA time zone the cron fields are read in; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    pub tenants: TenantsDef,
    /// A duration like "5m": each tenant's run is offset by a stable amount in [0, stagger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stagger: Option<String>,
    /// "skip" (default) or "allow".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<String>,
    /// "skip" (default) or "once".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<String>,
    /// A job as `POST /v1/jobs` takes it, without `tenant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Value>,
    /// A batch as `POST /v1/batches` takes it, without `tenant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Value>,
}

/// The tenants a schedule runs for.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TenantsDef {
    List(Vec<String>),
    /// Every tenant holding a credential for this upstream (looked up as they change).
    WithCredential {
        with_credential: String,
    },
}

// By hand: an untagged enum's error ("did not match any variant") does not say what to write.
impl<'de> Deserialize<'de> for TenantsDef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let wrong = || {
            D::Error::custom(
                "tenants: give a list of tenants, like [\"acme\", \"globex\"], or \
                 { with_credential = \"UPSTREAM\" } for every tenant holding a credential for it",
            )
        };
        match Value::deserialize(d)? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    _ => Err(wrong()),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(TenantsDef::List),
            Value::Object(map) if map.len() == 1 => match map.get("with_credential") {
                Some(Value::String(upstream)) => Ok(TenantsDef::WithCredential {
                    with_credential: upstream.clone(),
                }),
                _ => Err(wrong()),
            },
            _ => Err(wrong()),
        }
    }
}
