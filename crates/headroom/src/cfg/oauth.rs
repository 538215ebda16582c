//! `[upstreams.oauth]`: how Headroom gets the access tokens it injects for an upstream, and
//! refreshes them (see `crate::oauth`).

use std::collections::BTreeMap;
use std::time::Duration;

use headroom_core::budget::BudgetConfig;
use headroom_core::limit::LimitConfig;
use serde::{Deserialize, Serialize};

use super::{duration, RawLimit};

/// Which grant the tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// Each tenant connects its own account (authorization code, done by the team's app):
    /// Headroom is given the tokens and refreshes them with the refresh token.
    RefreshToken,
    /// One app-level token for the upstream (client credentials), shared by every call.
    ClientCredentials,
}

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Body,
}

/// A validated `[upstreams.oauth]`.
#[derive(Clone)]
pub struct OAuthConfig {
    pub grant: GrantKind,
    pub token_url: url::Url,
    pub client_id: String,
    pub client_secret: String,
    pub client_auth: ClientAuth,
    /// Asked for in a client-credentials grant (space-joined).
    pub scopes: Vec<String>,
    /// Extra form parameters of every token request (`audience`, `resource`…).
    pub params: Vec<(String, String)>,
    /// How long before its expiry a token is refreshed; each grant refreshes a little
    /// earlier still, by up to a quarter of this, so that grants connected together do not
    /// all refresh together.
    pub refresh_before: Duration,
    /// Answers that mean "the access token expired": these statuses…
    pub expired_status: Vec<u16>,
    /// …whose body contains this text, when set (Salesforce: `INVALID_SESSION_ID`).
    pub expired_body: Option<String>,
    /// How long a token request may take.
    pub token_timeout: Duration,
    /// The budget of the upstream's token endpoint, shared by every tenant.
    pub token_budget: std::sync::Arc<BudgetConfig>,
}

impl std::fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("grant", &self.grant)
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// `[upstreams.oauth]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) grant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) token_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client_id: Option<String>,
    #[serde(skip_serializing)]
    pub(crate) client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client_auth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) params: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refresh_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expired_status: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expired_body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) token_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) token_limit: Option<RawLimit>,
}

impl RawOAuth {
    /// These keys over a preset's, key by key.
    pub(crate) fn over(self, preset: RawOAuth) -> RawOAuth {
        RawOAuth {
            grant: self.grant.or(preset.grant),
            token_url: self.token_url.or(preset.token_url),
            client_id: self.client_id.or(preset.client_id),
            client_secret: self.client_secret.or(preset.client_secret),
            client_auth: self.client_auth.or(preset.client_auth),
            scopes: self.scopes.or(preset.scopes),
            params: self.params.or(preset.params),
            refresh_before: self.refresh_before.or(preset.refresh_before),
            expired_status: self.expired_status.or(preset.expired_status),
            expired_body: self.expired_body.or(preset.expired_body),
            token_timeout: self.token_timeout.or(preset.token_timeout),
            token_limit: self.token_limit.or(preset.token_limit),
        }
    }

    /// Checks every key; errors name it under `key` (`upstreams[0].oauth`).
    pub(crate) fn validate(self, key: &str) -> Result<OAuthConfig, String> {
        let grant = match self.grant.as_deref() {
            None | Some("refresh_token") => GrantKind::RefreshToken,
            Some("client_credentials") => GrantKind::ClientCredentials,
            Some(other) => {
                return Err(format!(
                    "{key}.grant: \"{other}\" is not a grant; use \"refresh_token\" (each \
                     tenant connects its account) or \"client_credentials\" (one app token)"
                ))
            }
        };
        let token_url = self
            .token_url
            .ok_or_else(|| format!("{key}.token_url: missing; the provider's token endpoint"))?;
        let token_url = url::Url::parse(&token_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| format!("{key}.token_url: \"{token_url}\" is not an http(s) URL"))?;
        let client_id = self
            .client_id
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("{key}.client_id: missing"))?;
        let client_secret = self
            .client_secret
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                format!(
                    "{key}.client_secret: missing; write it as \"${{VARIABLE}}\" to read it from \
                 the environment"
                )
            })?;
        let client_auth = match self.client_auth.as_deref() {
            None | Some("basic") => ClientAuth::Basic,
            Some("body") => ClientAuth::Body,
            Some(other) => {
                return Err(format!(
                    "{key}.client_auth: \"{other}\" is not a method; use \"basic\" \
                     (client_secret_basic) or \"body\" (client_secret_post)"
                ))
            }
        };
        let params: Vec<(String, String)> = self.params.unwrap_or_default().into_iter().collect();
        const OWN: [&str; 6] = [
            "grant_type",
            "refresh_token",
            "client_id",
            "client_secret",
            "scope",
            "code",
        ];
        if let Some((name, _)) = params.iter().find(|(n, _)| OWN.contains(&n.as_str())) {
            return Err(format!(
                "{key}.params.{name}: Headroom sets this parameter itself; remove it"
            ));
        }
        let refresh_before = match self.refresh_before {
            Some(d) => duration(&format!("{key}.refresh_before"), &d)?,
            None => Duration::from_secs(300),
        };
        let expired_status = self.expired_status.unwrap_or_else(|| vec![401]);
        if let Some(s) = expired_status.iter().find(|s| !(400..=499).contains(*s)) {
            return Err(format!(
                "{key}.expired_status: {s} is not a client error status (400-499)"
            ));
        }
        let token_timeout = match self.token_timeout {
            Some(d) => duration(&format!("{key}.token_timeout"), &d)?,
            None => Duration::from_secs(10),
        };
        if token_timeout.is_zero() || token_timeout > Duration::from_secs(120) {
            return Err(format!(
                "{key}.token_timeout: must be more than 0 and at most 2m"
            ));
        }
        let token_limit = match self.token_limit {
            Some(l) => l.validate(&format!("{key}.token_limit"))?,
            None => LimitConfig::new(60.0, Duration::from_secs(60)),
        };
        let token_budget = BudgetConfig {
            limits: vec![token_limit],
            max_concurrency: 8,
            ..BudgetConfig::default()
        };
        token_budget
            .validate()
            .map_err(|e| format!("{key}.token_limit: {e}"))?;
        Ok(OAuthConfig {
            grant,
            token_url,
            client_id,
            client_secret,
            client_auth,
            scopes: self.scopes.unwrap_or_default(),
            params,
            refresh_before,
            expired_status,
            expired_body: self.expired_body.filter(|b| !b.is_empty()),
            token_timeout,
            token_budget: std::sync::Arc::new(token_budget),
        })
    }
}

impl OAuthConfig {
    /// Whether an answer of `status` with `body` (its first bytes) says the access token
    /// expired.
    pub fn says_expired(&self, status: u16, body: &[u8]) -> bool {
        self.expired_status.contains(&status)
            && self.expired_body.as_deref().is_none_or(|text| {
                body.windows(text.len().max(1))
                    .any(|w| w == text.as_bytes())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawOAuth {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let ok = raw(
            "token_url = \"https://a.example/token\"\nclient_id = \"i\"\nclient_secret = \"s\"",
        )
        .validate("upstreams[0].oauth")
        .unwrap();
        assert_eq!(ok.grant, GrantKind::RefreshToken);
        assert_eq!(ok.client_auth, ClientAuth::Basic);
        assert_eq!(ok.refresh_before, Duration::from_secs(300));
        assert!(ok.says_expired(401, b"anything"));
        assert!(!ok.says_expired(403, b""));
        assert!(!format!("{ok:?}").contains("\"s\""));
        for (text, names) in [
            ("client_id = \"i\"\nclient_secret = \"s\"", "upstreams[0].oauth.token_url: missing"),
            ("token_url = \"ftp://x\"\nclient_id = \"i\"\nclient_secret = \"s\"", "token_url: \"ftp://x\""),
            ("token_url = \"https://x\"\nclient_secret = \"s\"", "client_id: missing"),
            ("token_url = \"https://x\"\nclient_id = \"i\"", "client_secret: missing"),
            ("token_url = \"https://x\"\nclient_id = \"i\"\nclient_secret = \"s\"\ngrant = \"password\"", "grant: \"password\""),
            ("token_url = \"https://x\"\nclient_id = \"i\"\nclient_secret = \"s\"\nclient_auth = \"jwt\"", "client_auth: \"jwt\""),
            ("token_url = \"https://x\"\nclient_id = \"i\"\nclient_secret = \"s\"\nparams = { grant_type = \"x\" }", "params.grant_type"),
            ("token_url = \"https://x\"\nclient_id = \"i\"\nclient_secret = \"s\"\nexpired_status = [500]", "expired_status: 500"),
        ] {
            let e = raw(text).validate("upstreams[0].oauth").unwrap_err();
            assert!(e.contains(names), "{text}: {e}");
        }
    }

    #[test]
    fn an_expired_body_narrows_the_status() {
        let c = raw("token_url = \"https://x\"\nclient_id = \"i\"\nclient_secret = \"s\"\nexpired_body = \"INVALID_SESSION_ID\"")
            .validate("k")
            .unwrap();
        assert!(c.says_expired(401, br#"[{"errorCode":"INVALID_SESSION_ID"}]"#));
        assert!(!c.says_expired(401, br#"[{"errorCode":"INSUFFICIENT_ACCESS"}]"#));
    }
}
