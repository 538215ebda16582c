//! Providers: a real API's limits, endpoints and quirks as one line of config.
//!
//! `provider = "hubspot"` in an `[[upstreams]]` entry fills every key the entry leaves out
//! from the preset (`providers/*.toml`, built into the binary): base URL, limits of the plan
//! tier (`tier = "pro"`, else the lowest the vendor documents), endpoint routes, retry
//! statuses, idempotency header, whether answers' bodies carry the call's cost. Each preset
//! names the vendor's pages it follows, the date they were read, and what it cannot know.
//!
//! What an answer says about its limits is read for every upstream alike (the signal readers
//! know every dialect), so a preset's limits are where pacing starts; where the API reports
//! its own figures, the preset lets them replace its tier's (`learn = "raise"`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{RawLimit, RawUpstream};

/// The presets, in the order `headroom providers` lists them.
const FILES: &[&str] = &[
    include_str!("../../providers/hubspot.toml"),
    include_str!("../../providers/salesforce.toml"),
    include_str!("../../providers/shopify.toml"),
    include_str!("../../providers/shopify-graphql.toml"),
    include_str!("../../providers/github.toml"),
    include_str!("../../providers/github-graphql.toml"),
    include_str!("../../providers/stripe.toml"),
    include_str!("../../providers/jira.toml"),
    include_str!("../../providers/zendesk.toml"),
    include_str!("../../providers/intercom.toml"),
    include_str!("../../providers/slack.toml"),
    include_str!("../../providers/microsoft-graph.toml"),
    include_str!("../../providers/google.toml"),
    include_str!("../../providers/notion.toml"),
    include_str!("../../providers/zoom.toml"),
    include_str!("../../providers/twilio.toml"),
    include_str!("../../providers/openai.toml"),
    include_str!("../../providers/anthropic.toml"),
];

/// One preset as its file holds it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
    pub title: String,
    /// The vendor pages the preset follows.
    pub docs: Vec<String>,
    /// When they were read (YYYY-MM-DD).
    pub read_on: String,
    /// What Headroom reads from the API's answers.
    pub reads: String,
    /// What it learns from them, over the preset's figures.
    pub learns: String,
    /// What the preset cannot know.
    pub unknown: String,
    /// For an API whose base URL is per account: what one looks like.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url_example: Option<String>,
    /// The `format` its batch endpoints take on `/v1/batches`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_format: Option<String>,
    /// The tier used without `tier`: the lowest the vendor documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<String>,
    /// Limits per plan tier.
    #[serde(default)]
    pub tiers: BTreeMap<String, Tier>,
    /// The upstream keys the preset fills (`limits` come from the tier).
    upstream: RawUpstream,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Which plans this is, in the vendor's words.
    pub plans: String,
    pub limits: Vec<RawLimit>,
}

/// Every preset. Each file is checked by the tests, so a parse failure here is a build defect.
pub fn all() -> Vec<Provider> {
    FILES
        .iter()
        .map(|text| toml::from_str(text).expect("a provider preset parses (see the tests)"))
        .collect()
}

pub fn find(name: &str) -> Option<Provider> {
    all().into_iter().find(|p| p.name == name)
}

impl Provider {
    /// The tier a `tier` key selects, by name, or the default; an error names the choices.
    pub fn tier(&self, tier: Option<&str>) -> Result<Option<(&str, &Tier)>, String> {
        let names = || self.tiers.keys().cloned().collect::<Vec<_>>().join(", ");
        match tier.or(self.default_tier.as_deref()) {
            None => Ok(None),
            Some(name) => match self.tiers.get_key_value(name) {
                Some((n, t)) => Ok(Some((n.as_str(), t))),
                None if self.tiers.is_empty() => Err(format!(
                    "tier: {} has no tiers (its limits come from its answers); remove `tier`",
                    self.title
                )),
                None => Err(format!(
                    "tier: \"{name}\" is not a tier of {}; use one of: {}",
                    self.title,
                    names()
                )),
            },
        }
    }

    /// The limits an upstream naming only this provider starts with, and their tier.
    pub fn default_limits(&self) -> (Vec<RawLimit>, Option<&str>) {
        match self.tier(None) {
            Ok(Some((name, tier))) => (tier.limits.clone(), Some(name)),
            _ => (self.upstream.limits.clone(), None),
        }
    }

    /// The preset's upstream keys with the tier's limits, named `name`.
    pub(crate) fn upstream(&self, name: &str, tier: Option<&str>) -> Result<RawUpstream, String> {
        let mut upstream = self.upstream.clone();
        upstream.name = name.to_string();
        if let Some((_, tier)) = self.tier(tier)? {
            upstream.limits = tier.limits.clone();
        }
        Ok(upstream)
    }
}

/// `raw` with its provider's keys filled in (unchanged without `provider`); the error names
/// the key under the upstream (`provider: …`, `tier: …`).
pub(crate) fn resolve(raw: RawUpstream) -> Result<RawUpstream, String> {
    let Some(name) = raw.provider.as_deref() else {
        if raw.tier.is_some() {
            return Err("tier: a tier is a provider's plan; name the provider too \
                        (`provider = \"hubspot\"`), or remove `tier`"
                .to_string());
        }
        return Ok(raw);
    };
    let provider = find(name).ok_or_else(|| {
        format!(
            "provider: \"{name}\" is not a provider; use one of: {} (`headroom providers` \
             lists them)",
            all()
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    if raw.tier.is_some() && !raw.limits.is_empty() {
        return Err(
            "tier: the upstream's own `limits` replace the tier's; remove one of them".to_string(),
        );
    }
    let mut preset = provider.upstream(&raw.name, raw.tier.as_deref())?;
    // The preset's routes are paths from the API's root; under a base URL with a path of its
    // own (`https://slack.com/api`) they are relative to it, and a route outside it can never
    // be called through this upstream.
    if let Some(base) = raw.base_url.as_deref() {
        let base_path = url::Url::parse(base)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        if !base_path.is_empty() {
            preset.routes = std::mem::take(&mut preset.routes)
                .into_iter()
                .filter_map(|mut r| {
                    let rest = r.path.strip_prefix(&base_path)?;
                    if !(rest.is_empty() || rest.starts_with('/')) {
                        return None;
                    }
                    r.path = if rest.is_empty() {
                        "/".into()
                    } else {
                        rest.to_string()
                    };
                    Some(r)
                })
                .collect();
        }
    }
    Ok(raw.over(preset))
}

/// An upstream entry naming only the provider (and tier), resolved: what
/// `headroom providers show` prints.
pub fn resolved_toml(provider: &Provider, tier: Option<&str>) -> Result<String, String> {
    let raw = RawUpstream {
        name: provider.name.clone(),
        provider: Some(provider.name.clone()),
        tier: tier.map(str::to_string),
        ..RawUpstream::default()
    };
    let mut resolved = resolve(raw)?;
    resolved.provider = None;
    resolved.tier = None;
    #[derive(Serialize)]
    struct One {
        upstreams: Vec<RawUpstream>,
    }
    toml::to_string(&One {
        upstreams: vec![resolved],
    })
    .map_err(|e| format!("cannot print the preset: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cfg::Config;

    #[test]
    fn a_presets_oauth_settings_fill_an_upstream_that_uses_oauth_only() {
        let with = "[[upstreams]]\nname = \"u\"\nprovider = \"salesforce\"\n\
                    base_url = \"https://acme.my.salesforce.com\"\n\
                    [upstreams.oauth]\nclient_id = \"i\"\nclient_secret = \"s\"\n";
        let c = Config::parse(with, "t.toml").unwrap();
        let o = c.upstreams[0].oauth.as_deref().unwrap();
        assert_eq!(
            o.token_url.as_str(),
            "https://login.salesforce.com/services/oauth2/token"
        );
        assert_eq!(o.client_auth, crate::cfg::ClientAuth::Body);
        assert!(o.says_expired(401, br#"[{"errorCode":"INVALID_SESSION_ID"}]"#));
        let mine =
            format!("{with}token_url = \"https://test.salesforce.com/services/oauth2/token\"\n");
        let c = Config::parse(&mine, "t.toml").unwrap();
        let o = c.upstreams[0].oauth.as_deref().unwrap();
        assert_eq!(o.token_url.host_str(), Some("test.salesforce.com"));
        let without = "[[upstreams]]\nname = \"u\"\nprovider = \"zoom\"\n";
        assert!(Config::parse(without, "t.toml").unwrap().upstreams[0]
            .oauth
            .is_none());
        let missing = "[[upstreams]]\nname = \"u\"\nprovider = \"zoom\"\n[upstreams.oauth]\nclient_id = \"i\"\n";
        let e = Config::parse(missing, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("upstreams[0].oauth.client_secret: missing"),
            "{e}"
        );
    }

    #[test]
    fn every_preset_parses_and_resolves_to_a_valid_upstream() {
        for (i, text) in FILES.iter().enumerate() {
            let p: Provider = toml::from_str(text)
                .unwrap_or_else(|e| panic!("providers file {i} does not parse: {e}"));
            assert!(!p.docs.is_empty(), "{}: cites no page", p.name);
            assert!(
                p.docs.iter().all(|d| d.starts_with("https://")),
                "{}: {:?}",
                p.name,
                p.docs
            );
            assert_eq!(p.read_on.len(), 10, "{}: read_on is YYYY-MM-DD", p.name);
            let tiers: Vec<Option<&str>> = if p.tiers.is_empty() {
                vec![None]
            } else {
                p.tiers.keys().map(|k| Some(k.as_str())).collect()
            };
            for tier in tiers {
                let mut toml = format!("[[upstreams]]\nname = \"u\"\nprovider = \"{}\"\n", p.name);
                if let Some(t) = tier {
                    toml.push_str(&format!("tier = \"{t}\"\n"));
                }
                if p.base_url_example.is_some() {
                    toml.push_str("base_url = \"https://example.test/api\"\n");
                }
                let c = Config::parse(&toml, "t.toml")
                    .unwrap_or_else(|e| panic!("{} {tier:?}: {e}", p.name));
                assert_eq!(c.upstreams[0].provider.as_deref(), Some(p.name.as_str()));
                let printed = resolved_toml(&p, tier).unwrap();
                assert!(printed.contains("[[upstreams]]"), "{printed}");
            }
        }
        let names: Vec<String> = all().into_iter().map(|p| p.name).collect();
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(
            names.len(),
            unique.len(),
            "two presets share a name: {names:?}"
        );
        // Without `tier`, the default tier resolves (a typo there would blame a key the user
        // never wrote).
        for p in all() {
            assert!(p.tier(None).is_ok(), "{}: default_tier", p.name);
        }
    }

    #[test]
    fn the_upstreams_own_keys_win() {
        let c = Config::parse(
            "[[upstreams]]\nname = \"crm\"\nprovider = \"hubspot\"\ntier = \"pro\"\n\
             base_url = \"http://127.0.0.1:9\"\n[upstreams.retry]\nmax_attempts = 2\n",
            "t.toml",
        )
        .unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.base_url.as_str(), "http://127.0.0.1:9/");
        assert_eq!(u.retry.max_attempts, 2);
        // The preset's retry statuses stay: tables merge key by key.
        assert!(u.retry.on_status.contains(&503));
        assert_eq!(u.budget_config.limits[0].quota, 190.0, "the pro tier");
        assert!(u.routes.iter().any(|r| r.name == "crm-search"));
        assert_eq!(u.budget_config.learn, headroom_core::budget::Learn::Raise);
    }

    #[test]
    fn own_limits_are_caps_and_routes_follow_the_base_path() {
        let c = Config::parse(
            "[[upstreams]]\nname = \"crm\"\nprovider = \"hubspot\"\n\
             base_url = \"https://api.hubapi.com/crm/v3\"\n\
             limits = [{ quota = 50, window = \"10s\" }]\n\
             [[upstreams]]\nname = \"ai\"\nprovider = \"anthropic\"\n\
             credential = { header = \"authorization\" }\n",
            "t.toml",
        )
        .unwrap();
        let crm = &c.upstreams[0];
        assert_eq!(crm.budget_config.learn, headroom_core::budget::Learn::Lower);
        assert!(crm.routes[0].matches(&http::Method::POST, "/objects/contacts/search"));
        let ai = &c.upstreams[1];
        assert_eq!(ai.credential.header, http::header::AUTHORIZATION);
        assert_eq!(
            ai.credential.scheme, "Bearer",
            "not the preset's scheme for x-api-key"
        );
    }

    #[test]
    fn errors_name_the_key_and_the_choices() {
        for (toml, says) in [
            (
                "provider = \"hubspott\"",
                "upstreams[0].provider: \"hubspott\" is not a provider; use one of: hubspot",
            ),
            (
                "provider = \"hubspot\"\ntier = \"gold\"",
                "upstreams[0].tier: \"gold\" is not a tier of HubSpot",
            ),
            (
                "tier = \"pro\"\nbase_url = \"http://a\"",
                "upstreams[0].tier: a tier is a provider's plan",
            ),
            (
                "provider = \"salesforce\"",
                "upstreams[0].base_url: missing; Salesforce",
            ),
            ("", "upstreams[0].base_url: missing; write the API's URL"),
            (
                "provider = \"hubspot\"\ntier = \"pro\"\nlimits = [{ quota = 1, window = \"1s\" }]",
                "upstreams[0].tier: the upstream's own `limits`",
            ),
        ] {
            let e = Config::parse(&format!("[[upstreams]]\nname = \"u\"\n{toml}\n"), "t.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{toml}: {e}");
        }
    }
}
