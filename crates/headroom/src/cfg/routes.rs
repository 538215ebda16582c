//! Endpoint-scoped limits (`[[upstreams.routes]]`): calls whose method and path match a route
//! spend the route's budget as well as the upstream's — HubSpot's search endpoints at 4 per
//! second inside the account's 100 per 10 s, Slack's methods by tier.

use std::sync::Arc;

use headroom_core::budget::BudgetConfig;
use http::Method;

use super::RawRoute;

/// One route, checked.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Any method when `None`.
    pub method: Option<Method>,
    pub path: PathPattern,
    /// What a call here costs of the upstream's point limits, unless it says (`Headroom-Cost`).
    pub cost: Option<f64>,
    /// The route's own budget: its limits, the upstream's other settings.
    pub budget_config: Arc<BudgetConfig>,
}

impl Route {
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && self.path.matches(path)
    }
}

/// A path pattern: literal segments, `*` or `{name}` for any one segment, and a final `**`
/// for any rest (none included). The query is not part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

impl PathPattern {
    pub fn try_new(text: &str) -> Result<PathPattern, String> {
        if !text.starts_with('/') {
            return Err(format!(
                "\"{text}\" must start with '/', like \"/crm/v3/objects/*/search\""
            ));
        }
        let parts: Vec<&str> = text[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return Err(format!("\"{text}\": '**' may only end a pattern")),
                "*" => Segment::One,
                p if p.starts_with('{') && p.ends_with('}') => Segment::One,
                p if p.contains('*') || p.contains('?') || p.contains('#') => {
                    return Err(format!(
                        "\"{text}\": a segment is a literal, '*', '{{name}}' or a final '**', not \"{p}\""
                    ))
                }
                p => Segment::Literal(p.to_string()),
            });
        }
        Ok(PathPattern {
            text: text.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `path` (without its query) matches. The path is read as the upstream reads
    /// it: empty segments (`//`, a trailing `/`) are skipped, `;params` dropped and `%XX`
    /// decoded, so that `/crm/%73earch` or `/crm/search/` cannot slip past a route.
    pub fn matches(&self, path: &str) -> bool {
        let path = path.split('?').next().unwrap_or("");
        if !path.starts_with('/') {
            return false;
        }
        let mut parts = path
            .split('/')
            .map(|p| p.split(';').next().unwrap_or(""))
            .filter(|p| !p.is_empty())
            .map(decode);
        for segment in &self.segments {
            match segment {
                Segment::Rest => return true,
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next().as_deref() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// `%XX` decoded (an invalid escape is kept as written).
fn decode(segment: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
}

impl RawRoute {
    /// Checks the route under `key` (like `upstreams[0].routes[1]`); its budget takes
    /// `upstream`'s settings with the route's limits.
    pub(crate) fn validate(self, key: &str, upstream: &BudgetConfig) -> Result<Route, String> {
        if !super::valid_name(&self.name) {
            return Err(format!(
                "{key}.name: \"{}\" must be letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        let method = match self.method.as_deref() {
            None | Some("*") => None,
            Some(m) => Some(
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("{key}.method: \"{m}\" is not an HTTP method"))?,
            ),
        };
        let path = PathPattern::try_new(&self.path).map_err(|e| format!("{key}.path: {e}"))?;
        if let Some(cost) = self.cost {
            if !(cost.is_finite() && cost > 0.0 && cost <= crate::outbound::MAX_COST) {
                return Err(format!(
                    "{key}.cost: {cost} is out of range; use more than 0, up to 1000000"
                ));
            }
        }
        if self.limits.is_empty() && self.cost.is_none() {
            return Err(format!(
                "{key}: a route needs `limits` (its own), `cost` (what its calls spend), or both"
            ));
        }
        let limits = super::validate_limits(self.limits, key)?;
        let budget_config = BudgetConfig {
            limits,
            ..upstream.clone()
        };
        budget_config.validate().map_err(|e| format!("{key}.{e}"))?;
        Ok(Route {
            name: self.name,
            method,
            path,
            cost: self.cost,
            budget_config: Arc::new(budget_config),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments() {
        let p = PathPattern::try_new("/crm/v3/objects/*/search").unwrap();
        assert!(p.matches("/crm/v3/objects/contacts/search"));
        assert!(p.matches("/crm/v3/objects/deals/search?after=2"));
        assert!(!p.matches("/crm/v3/objects/contacts"));
        // Read as the upstream reads it: no way around a route.
        assert!(p.matches("/crm/v3/objects/contacts/%73earch"));
        assert!(p.matches("/crm/v3/objects/contacts/search/"));
        assert!(p.matches("/crm//v3/objects/contacts/search;x=1"));
        assert!(!p.matches("/crm/v3/objects/search"));
        assert!(!p.matches("/crm/v3/objects/contacts/search/more"));
        let rest = PathPattern::try_new("/api/**").unwrap();
        assert!(rest.matches("/api/chat.postMessage"));
        assert!(rest.matches("/api"));
        assert!(!rest.matches("/apix"));
        let named = PathPattern::try_new("/repos/{owner}/{repo}/issues").unwrap();
        assert!(named.matches("/repos/a/b/issues"));
        assert!(!named.matches("/repos/a/issues"));
    }

    #[test]
    fn bad_patterns_say_what_to_write() {
        for (bad, says) in [
            ("crm/search", "start with '/'"),
            ("/a/**/b", "may only end"),
            ("/a/b*c", "a segment is"),
        ] {
            let e = PathPattern::try_new(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
