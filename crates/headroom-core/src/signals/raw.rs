//! A raw HTTP response as text, the way people paste one: a status line, header lines, a blank
//! line and an optional body. Lenient about everything but the status line.

/// A parsed raw response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawResponse {
    pub status: u16,
    /// Header lines in order, names as written; obs-fold continuations are joined with a space.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawResponseError {
    #[error(
        "the input is empty; give a raw HTTP response starting with a status line such as \
         \"HTTP/1.1 429 Too Many Requests\""
    )]
    Empty,
    #[error(
        "the first line {0:?} is not an HTTP status line; start the response with one such as \
         \"HTTP/1.1 200 OK\" or \"HTTP/2 429\""
    )]
    NotAStatusLine(String),
    #[error(
        "the status line {0:?} has no valid status code; write three digits after the \
         version, as in \"HTTP/1.1 429 Too Many Requests\""
    )]
    BadStatusCode(String),
}

impl RawResponse {
    /// Parses a raw response. Lines may end in LF or CRLF; header lines without a colon are
    /// skipped; without a blank line, everything after the status line is headers.
    pub fn parse(input: &[u8]) -> Result<RawResponse, RawResponseError> {
        let mut rest = input;
        // Blank lines and a byte-order mark before the status line are noise from copying and
        // pasting.
        let status_line = loop {
            let Some((line, after)) = next_line(rest) else {
                return Err(RawResponseError::Empty);
            };
            rest = after;
            let text = String::from_utf8_lossy(line);
            let text = text.trim().trim_start_matches('\u{feff}');
            if !text.is_empty() {
                break text.to_string();
            }
        };
        let status = parse_status_line(&status_line)?;

        let mut headers: Vec<(String, String)> = Vec::new();
        let mut body = Vec::new();
        while let Some((line, after)) = next_line(rest) {
            rest = after;
            if line.is_empty() {
                body = rest.to_vec();
                break;
            }
            let text = String::from_utf8_lossy(line);
            if line.starts_with(b" ") || line.starts_with(b"\t") {
                if let Some((_, value)) = headers.last_mut() {
                    let more = text.trim();
                    if !more.is_empty() {
                        if !value.is_empty() {
                            value.push(' ');
                        }
                        value.push_str(more);
                    }
                }
                continue;
            }
            if let Some((name, value)) = text.split_once(':') {
                let name = name.trim();
                if !name.is_empty() {
                    headers.push((name.to_string(), value.trim().to_string()));
                }
            }
        }
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// Headers in the form [`super::interpret`] takes.
    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    }

    /// What this response says about rate limits; see [`super::interpret`].
    pub fn interpret(&self, now_unix: f64) -> super::Signals {
        super::interpret(self.status, self.header_pairs(), &self.body, now_unix)
    }
}

/// The next line without its LF or CRLF, and the rest; `None` at the end of input.
fn next_line(input: &[u8]) -> Option<(&[u8], &[u8])> {
    if input.is_empty() {
        return None;
    }
    let (line, rest) = match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &input[input.len()..]),
    };
    Some((line.strip_suffix(b"\r").unwrap_or(line), rest))
}

fn parse_status_line(line: &str) -> Result<u16, RawResponseError> {
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let is_http = version
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("http/"));
    if !is_http {
        return Err(RawResponseError::NotAStatusLine(excerpt(line)));
    }
    let code = parts.next().unwrap_or_default();
    match code.parse::<u16>() {
        Ok(status) if code.len() == 3 && (100..=999).contains(&status) => Ok(status),
        _ => Err(RawResponseError::BadStatusCode(excerpt(line))),
    }
}

/// A line short enough to quote in an error message.
fn excerpt(line: &str) -> String {
    const MAX: usize = 80;
    match line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_response_with_body() {
        let r = RawResponse::parse(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nX-A: b\r\n\r\n{\"x\":1}\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(
            r.headers,
            [
                ("Retry-After".into(), "2".into()),
                ("X-A".into(), "b".into())
            ]
        );
        assert_eq!(r.body, b"{\"x\":1}\r\n");
    }

    #[test]
    fn lf_http2_without_reason_or_body() {
        let r = RawResponse::parse(b"HTTP/2 429\nretry-after: 5\n").unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.headers.len(), 1);
        assert!(r.body.is_empty());
        assert_eq!(RawResponse::parse(b"HTTP/1.1 200").unwrap().status, 200);
    }

    #[test]
    fn folded_and_colonless_lines() {
        let r = RawResponse::parse(
            b"\r\n\xEF\xBB\xBFHTTP/1.1 200 OK\nRateLimit-Policy: \"a\";q=1,\n\t \"b\";q=2\nnot a header\nX: 1\n\n",
        )
        .unwrap();
        assert_eq!(
            r.headers,
            [
                ("RateLimit-Policy".into(), "\"a\";q=1, \"b\";q=2".into()),
                ("X".into(), "1".into())
            ]
        );
    }

    #[test]
    fn errors_say_what_to_fix() {
        assert_eq!(RawResponse::parse(b""), Err(RawResponseError::Empty));
        assert_eq!(
            RawResponse::parse(b"\r\n\n  \n"),
            Err(RawResponseError::Empty)
        );
        let e = RawResponse::parse(b"Retry-After: 5\n\n").unwrap_err();
        assert!(matches!(e, RawResponseError::NotAStatusLine(_)));
        assert!(e.to_string().contains("HTTP/1.1 200 OK"));
        for bad in [
            &b"HTTP/1.1 OK"[..],
            b"HTTP/1.1 42",
            b"HTTP/1.1 4290",
            b"HTTP/1.1 +42",
        ] {
            assert!(matches!(
                RawResponse::parse(bad),
                Err(RawResponseError::BadStatusCode(_))
            ));
        }
    }
}
