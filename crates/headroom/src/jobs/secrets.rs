//! Credential-like parts of a job's or batch's request: header values whose name says they
//! carry a credential (`Authorization`, `Cookie`, `X-Api-Key`, anything with `token`,
//! `secret`, `key`, `auth`, `password` or `signature` in it) and query parameters named the
//! same way. They are sealed before the request is stored (`Credentials::seal_field`, bound
//! to the job or batch and the field), opened only to send the request upstream, and never
//! shown: API views and callbacks show `<redacted>` in their place.

use percent_encoding::percent_decode_str;

use super::JobRequest;
use crate::credentials::{Credentials, SEALED_PREFIX};

/// What a view shows in place of a credential-like value.
pub const REDACTED: &str = "<redacted>";

/// Whether a header or query parameter name looks like it carries a credential.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "x-api-key"
    ) || ["token", "secret", "key", "auth", "password", "signature"]
        .iter()
        .any(|w| n.contains(w))
}

/// The associated data of a field: its owner (`job:<id>`, `batch:<id>`), its kind and name.
fn context(owner: &str, kind: &str, name: &str) -> String {
    format!("{owner}\0{kind}\0{}", name.to_ascii_lowercase())
}

/// A query parameter's name, decoded (`+` is a space).
fn param_name(part: &str) -> String {
    let name = part.split_once('=').map_or(part, |(k, _)| k);
    percent_decode_str(&name.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Rewrites the value of each credential-like parameter of `query` with `f(name, value)`,
/// keeping everything else (order, encoding) as it is.
fn map_secret_params(
    query: &str,
    mut f: impl FnMut(&str, &str) -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let mut out = Vec::new();
    for part in query.split('&') {
        match part.split_once('=') {
            Some((k, v)) if !v.is_empty() && is_secret_name(&param_name(part)) => {
                out.push(format!("{k}={}", f(&param_name(part), v)?));
            }
            _ => out.push(part.to_string()),
        }
    }
    Ok(out.join("&"))
}

/// Seals the credential-like header values and query parameters of a request about to be
/// stored for `owner`.
pub fn seal(
    credentials: &Credentials,
    owner: &str,
    request: &mut JobRequest,
) -> anyhow::Result<()> {
    for (name, value) in &mut request.headers {
        if is_secret_name(name) && !value.starts_with(SEALED_PREFIX) {
            *value = credentials.seal_field(&context(owner, "header", name), value)?;
        }
    }
    if let Some(query) = &request.query {
        // Sealed text is base64url: it needs no escaping in a query.
        request.query = Some(map_secret_params(query, |name, value| {
            if value.starts_with(SEALED_PREFIX) {
                Ok(value.to_string())
            } else {
                credentials.seal_field(&context(owner, "query", name), value)
            }
        })?);
    }
    Ok(())
}

/// The request as it is sent: sealed values opened (values stored in clear before sealing
/// existed are taken as they are).
pub fn open(
    credentials: &Credentials,
    owner: &str,
    request: &JobRequest,
) -> Result<JobRequest, String> {
    let mut out = request.clone();
    for (name, value) in &mut out.headers {
        *value = credentials
            .open_field(&context(owner, "header", name), value)
            .map_err(|e| format!("request.headers.{name}: {e:#}"))?;
    }
    if let Some(query) = &request.query {
        out.query = Some(
            map_secret_params(query, |name, value| {
                credentials.open_field(&context(owner, "query", name), value)
            })
            .map_err(|e| format!("request.query: {e:#}"))?,
        );
    }
    Ok(out)
}

/// The query as views show it: credential-like values (sealed or not) are `<redacted>`.
pub fn redact_query(query: &str) -> String {
    map_secret_params(query, |_, _| Ok(REDACTED.to_string())).unwrap_or_default()
}

/// The job's owner for `seal` and `open`.
pub fn job_owner(id: &str) -> String {
    format!("job:{id}")
}

/// The batch's owner for `seal` and `open`.
pub fn batch_owner(id: &str) -> String {
    format!("batch:{id}")
}

/// The owner name an export's sealed fields are bound to.
pub fn export_owner(id: &str) -> String {
    format!("export:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_like_names() {
        for n in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "X-Api-Key",
            "x-auth-token",
            "X-Hub-Signature",
            "client_secret",
            "api_key",
            "access_token",
            "password",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in [
            "content-type",
            "x-trace",
            "accept",
            "page",
            "limit",
            "email",
        ] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    #[test]
    fn queries_are_redacted_by_parameter_name() {
        assert_eq!(
            redact_query("page=2&api_key=sk_live_1&access%5Ftoken=t&q=a+b&sig"),
            "page=2&api_key=<redacted>&access%5Ftoken=<redacted>&q=a+b&sig"
        );
        assert_eq!(redact_query("limit=10"), "limit=10");
    }

    #[tokio::test]
    async fn sealed_fields_open_for_their_owner_only() {
        let store = crate::store::Store::open("sqlite::memory:").await.unwrap();
        let creds = Credentials::open_with_key(store, None).await.unwrap();
        let mut request = JobRequest {
            method: "POST".into(),
            path: "/x".into(),
            query: Some("page=2&api_key=sk_live_1".into()),
            headers: vec![
                ("Authorization".into(), "Bearer sk_live_2".into()),
                ("x-trace".into(), "t1".into()),
            ],
            body: None,
            body_is_json: false,
        };
        let clear = request.clone();
        seal(&creds, "job:1", &mut request).unwrap();
        let stored = format!("{request:?}");
        assert!(!stored.contains("sk_live"), "{stored}");
        assert_eq!(request.headers[1].1, "t1");
        assert!(request
            .query
            .as_deref()
            .unwrap()
            .starts_with("page=2&api_key=hr-sealed.v1."));
        assert_eq!(open(&creds, "job:1", &request).unwrap(), clear);
        // Copied to another job: does not open.
        assert!(open(&creds, "job:2", &request).is_err());
        // Sealing again changes nothing; a legacy clear value passes through.
        let mut again = request.clone();
        seal(&creds, "job:1", &mut again).unwrap();
        assert_eq!(again, request);
        assert_eq!(open(&creds, "job:9", &clear).unwrap(), clear);
    }
}
