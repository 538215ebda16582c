//! The parts of a response the dialect readers look at: headers by case-insensitive name, and a
//! body that is parsed as JSON at most once, and only when some reader asks.

use std::cell::OnceCell;

/// A response's header lines, names lower-cased.
#[derive(Debug, Default)]
pub(crate) struct Headers {
    lines: Vec<(String, String)>,
}

/// Whether a dialect reader may read a header of this name: every one it knows has "limit",
/// "retry" or "reset" in its name (`RateLimit`, `X-RateLimit-*`, `Sforce-Limit-Info`,
/// `X-Shopify-Shop-Api-Call-Limit`, `Retry-After`, `X-MS-Retry-After-Ms`, …).
/// Matched without regard to case and without allocating.
fn may_matter(name: &str) -> bool {
    // One pass that stops only at an `l` or an `r` (this runs for every header of every
    // proxied answer; three `windows` scans cost 3x more).
    let name = name.as_bytes();
    (0..name.len()).any(|i| {
        let rest = &name[i..];
        let starts =
            |word: &[u8]| rest.len() >= word.len() && rest[..word.len()].eq_ignore_ascii_case(word);
        match name[i] | 0x20 {
            b'l' => starts(b"limit"),
            b'r' => starts(b"retry") || starts(b"reset"),
            _ => false,
        }
    })
}

impl Headers {
    /// Keeps only the lines a dialect reader may look at ([`may_matter`]): a response
    /// carries a dozen other headers, and this runs on every proxied call.
    /// `Date` is kept only beside another such line (it dates their resets): an answer with
    /// nothing about limits allocates nothing.
    pub(crate) fn collect<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let line = |(name, value): (&str, &[u8])| {
            (
                name.trim().to_ascii_lowercase(),
                String::from_utf8_lossy(value).trim().to_string(),
            )
        };
        let mut date = None;
        let mut lines = Vec::new();
        for (name, value) in headers {
            if name.trim().eq_ignore_ascii_case("date") {
                date.get_or_insert((name, value)); // the first, as `first` reads
            } else if may_matter(name) {
                lines.push(line((name, value)));
            }
        }
        if let Some(date) = date.filter(|_| !lines.is_empty()) {
            lines.push(line(date));
        }
        Headers { lines }
    }

    /// No line but (perhaps) `Date`: nothing about limits.
    pub(crate) fn says_nothing(&self) -> bool {
        self.lines.iter().all(|(n, _)| n == "date")
    }

    /// Every line's (lower-cased name, value).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The first line of a field that should appear once (a date, a number).
    pub(crate) fn first(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// All lines of a list field joined as one comma list, as HTTP combines repeated fields.
    pub(crate) fn joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .iter()
            .filter(|(n, v)| *n == name && !v.is_empty())
            .map(|(_, v)| v)
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// JSON bodies larger than this are not parsed: rate-limit hints sit in small error bodies or
/// in a GraphQL response's `extensions`, and parsing megabytes per response is not worth it.
const MAX_JSON_BODY: usize = 1 << 20;

/// A response body, with its JSON parsed on first use.
#[derive(Debug)]
pub(crate) struct Body<'a> {
    bytes: &'a [u8],
    json: OnceCell<Option<serde_json::Value>>,
}

impl<'a> Body<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Body {
            bytes,
            json: OnceCell::new(),
        }
    }

    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The body as JSON, if it contains `needle`: a cheap check first, so that bodies that
    /// cannot hold what a reader looks for are never parsed.
    pub(crate) fn json_mentioning(&self, needle: &[u8]) -> Option<&serde_json::Value> {
        if self.bytes.len() > MAX_JSON_BODY || !contains(self.bytes, needle) {
            return None;
        }
        self.json()
    }

    /// The body as JSON, if it is a JSON object or array of reasonable size.
    pub(crate) fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| {
                let start = self.bytes.iter().position(|b| !b.is_ascii_whitespace())?;
                let looks_like_json = matches!(self.bytes[start], b'{' | b'[');
                if !looks_like_json || self.bytes.len() > MAX_JSON_BODY {
                    return None;
                }
                serde_json::from_slice(&self.bytes[start..]).ok()
            })
            .as_ref()
    }
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Like [`contains`], ignoring ASCII case; `needle` must be lower-case.
pub(crate) fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lines_about_limits_are_kept() {
        for name in [
            "RateLimit",
            "X-RateLimit-Reset-After",
            "X-HubSpot-RateLimit-Daily",
            "X-Shopify-Shop-Api-Call-Limit",
            "Sforce-Limit-Info",
            "retry-after",
            "X-MS-Retry-After-Ms",
        ] {
            assert!(may_matter(name), "{name}");
        }
        for name in ["content-type", "server", "x-request-id", "etag", "da", ""] {
            assert!(!may_matter(name), "{name}");
        }
        let h = Headers::collect([("Content-Type", &b"text/plain"[..]), ("Date", &b"x"[..])]);
        assert!(h.says_nothing());
        assert_eq!(h.first("content-type"), None);
        assert_eq!(h.first("date"), None, "a Date alone is not kept");
        // Beside a line about limits, the first Date is kept (it dates their resets).
        let h = Headers::collect([
            ("DATE", &b"first"[..]),
            ("X-RateLimit-Reset", &b"5"[..]),
            ("Date", &b"second"[..]),
        ]);
        assert_eq!(h.first("date"), Some("first"));
        assert_eq!(h.first("x-ratelimit-reset"), Some("5"));
    }

    #[test]
    fn names_are_case_insensitive_and_lines_join() {
        let h = Headers::collect([
            ("RateLimit-Policy", &b"\"a\";q=1"[..]),
            ("ratelimit-policy", &b" \"b\";q=2 "[..]),
            ("Retry-After", &b"5"[..]),
        ]);
        assert_eq!(
            h.joined("ratelimit-policy").as_deref(),
            Some("\"a\";q=1, \"b\";q=2")
        );
        assert_eq!(h.first("retry-after"), Some("5"));
        assert_eq!(h.joined("missing"), None);
    }

    #[test]
    fn json_mentioning_checks_the_needle_first() {
        let body = Body::new(br#"{"a":"THROTTLED"}"#);
        assert!(body.json_mentioning(b"THROTTLED").is_some());
        assert!(body.json_mentioning(b"throttleStatus").is_none());
    }

    #[test]
    fn body_json_only_for_objects_and_arrays() {
        assert!(Body::new(b"  {\"a\":1}").json().is_some());
        assert!(Body::new(b"[1]").json().is_some());
        assert!(Body::new(b"\"text\"").json().is_none());
        assert!(Body::new(b"{broken").json().is_none());
        assert!(Body::new(b"").json().is_none());
    }
}
