//! Where a call goes: a path under an upstream's base URL that cannot climb out of it.

use percent_encoding::percent_decode;

use crate::cfg::BaseUri;

/// Why a path cannot be sent to an upstream.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(
        "path segment \"{0}\" is not allowed: '.', '..' (also as '..;' or encoded more than \
         once), encoded slashes, backslashes and control characters could leave the upstream's \
         base path"
    )]
    UnsafeSegment(String),
    #[error("the path or query is not valid: {0}")]
    Invalid(String),
}

/// The upstream URI for `rest` (the path after `/proxy/{upstream}`, still percent-encoded)
/// under the upstream's base URL. Refuses any segment that could climb out of the base path.
pub fn target_uri(
    base: &BaseUri,
    rest: &str,
    query: Option<&str>,
) -> Result<http::Uri, TargetError> {
    if let Some(segment) = rest.split('/').find(|s| !segment_is_safe(s)) {
        return Err(TargetError::UnsafeSegment(segment.to_string()));
    }
    let mut path =
        String::with_capacity(base.path.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    path.push_str(&base.path);
    path.push_str(rest);
    if path.is_empty() {
        path.push('/');
    }
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(base.scheme.clone());
    parts.authority = Some(base.authority.clone());
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path).map_err(|e| TargetError::Invalid(e.to_string()))?,
    );
    http::Uri::from_parts(parts).map_err(|e| TargetError::Invalid(e.to_string()))
}

/// Whether a raw path segment stays a plain name for every server behind the upstream: not
/// `.` or `..` once decoded (any number of times: `%252e` is `%2e` to a server that decodes
/// again), nor once a `;` path parameter is cut off (Tomcat reads `..;x` as `..`), and no
/// slash, backslash or control character at any decoding depth.
fn segment_is_safe(segment: &str) -> bool {
    let mut current: std::borrow::Cow<'_, [u8]> = std::borrow::Cow::Borrowed(segment.as_bytes());
    // Each round decodes one more level; a segment still changing after four is refused.
    for _ in 0..4 {
        let name = current.split(|b| *b == b';').next().unwrap_or_default();
        if name == b"." || name == b".." {
            return false;
        }
        if current
            .iter()
            .any(|b| *b == b'/' || *b == b'\\' || b.is_ascii_control())
        {
            return false;
        }
        if !current.contains(&b'%') {
            return true; // the common case: nothing left to decode, nothing allocated
        }
        let decoded: Vec<u8> = percent_decode(&current).collect();
        if *decoded == *current {
            return true;
        }
        current = std::borrow::Cow::Owned(decoded);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BaseUri {
        BaseUri::try_new(&url::Url::parse("https://api.example.com/v2").unwrap()).unwrap()
    }

    #[test]
    fn paths_stay_under_the_base_path() {
        let uri = target_uri(&base(), "/crm/contacts", Some("a=1&b=%2F")).unwrap();
        assert_eq!(
            uri.to_string(),
            "https://api.example.com/v2/crm/contacts?a=1&b=%2F"
        );
        assert_eq!(
            target_uri(&base(), "", None).unwrap().to_string(),
            "https://api.example.com/v2"
        );
        for evil in [
            "/../admin",
            "/a/%2e%2e/admin",
            "/a/.%2E/b",
            "/a%2Fb",
            "/a%5cb",
            "/./x",
            "/a%00b",
            "/..;/admin",
            "/a/..;jsessionid=x/b",
            "/a/.;/b",
            "/a/%2e%2e;/b",
            "/a/%252e%252e/admin",
            "/a/%252E./admin",
            "/a/%25252e%25252e/admin",
            "/a%252fb",
            "/a%255cb",
            "/a%2500b",
        ] {
            assert!(
                target_uri(&base(), evil, None).is_err(),
                "{evil} must be refused"
            );
        }
        // Dots and semicolons inside a name, and single-encoded percent signs, stay allowed.
        for fine in [
            "/v1/file.json",
            "/a/...;b",
            "/a;v=1/b",
            "/a/%25/b",
            "/a/..x/b",
        ] {
            assert!(target_uri(&base(), fine, None).is_ok(), "{fine} must pass");
        }
        // An absolute URL in the path stays a path on the configured host.
        let uri = target_uri(&base(), "//evil.example/x", None).unwrap();
        assert_eq!(uri.host(), Some("api.example.com"));
    }
}
