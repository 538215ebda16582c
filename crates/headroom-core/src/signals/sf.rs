//! A tolerant reader for the structured-field syntax (RFC 8941) that rate-limit headers use.
//!
//! Real servers bend the grammar (spaces around `=`, tokens where strings belong, dictionary
//! keys where list items belong), so this reads every shape the IETF drafts have used without
//! rejecting a whole field for one odd member: a member is either `head;params` (a list item,
//! or a dictionary key with a boolean value) or `key=value;params` (a dictionary member).

/// A bare item: the value of a member or of a parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bare {
    Number(f64),
    /// A string or a token, unquoted.
    Text(String),
    /// A byte sequence's base64 text, without the colons.
    Bytes(String),
    Bool(bool),
}

impl Bare {
    fn parse(s: &str) -> Option<Bare> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        if let Some(rest) = s.strip_prefix('"') {
            return Some(Bare::Text(unquote(rest)));
        }
        if let Some(rest) = s.strip_prefix(':') {
            return Some(Bare::Bytes(
                rest.strip_suffix(':').unwrap_or(rest).to_string(),
            ));
        }
        match s {
            "?1" => return Some(Bare::Bool(true)),
            "?0" => return Some(Bare::Bool(false)),
            _ => {}
        }
        if s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
            // A number that does not parse (e.g. "12abc") is kept as text so that callers drop it.
            if let Ok(n) = s.parse::<f64>() {
                return Some(Bare::Number(n));
            }
        }
        Some(Bare::Text(s.to_string()))
    }

    pub(crate) fn as_number(&self) -> Option<f64> {
        match self {
            Bare::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// A name: a string or a token.
    pub(crate) fn as_text(&self) -> Option<&str> {
        match self {
            Bare::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Text of a string, token or byte sequence (partition keys may be any of them).
    pub(crate) fn as_key_text(&self) -> Option<&str> {
        match self {
            Bare::Text(t) | Bare::Bytes(t) => Some(t),
            _ => None,
        }
    }
}

/// One member of a list or dictionary field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    /// A list item, or a dictionary key written without a value.
    pub head: Option<Bare>,
    /// A dictionary member written `key=value`.
    pub entry: Option<(String, Bare)>,
    pub params: Vec<(String, Bare)>,
}

impl Member {
    pub(crate) fn param(&self, key: &str) -> Option<&Bare> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub(crate) fn param_number(&self, key: &str) -> Option<f64> {
        self.param(key).and_then(Bare::as_number)
    }
}

/// Reads a list or dictionary field. Members that are empty are skipped.
pub(crate) fn parse_members(field: &str) -> Vec<Member> {
    split_outside_quotes(field, ',')
        .into_iter()
        .filter_map(parse_member)
        .collect()
}

fn parse_member(s: &str) -> Option<Member> {
    let mut parts = split_outside_quotes(s, ';').into_iter();
    let first = parts.next()?.trim();
    let mut member = Member {
        head: None,
        entry: None,
        params: Vec::new(),
    };
    match key_value(first) {
        Some((key, value)) => member.entry = Some((key, Bare::parse(value)?)),
        None => member.head = Some(Bare::parse(first)?),
    }
    for p in parts {
        let p = p.trim();
        match key_value(p) {
            Some((key, value)) => {
                if let Some(v) = Bare::parse(value) {
                    member.params.push((key, v));
                }
            }
            None if is_key(p) => member
                .params
                .push((p.to_ascii_lowercase(), Bare::Bool(true))),
            None => {}
        }
    }
    Some(member)
}

/// Splits `key=value` when the part before `=` is a plain key (not a quoted string).
fn key_value(s: &str) -> Option<(String, &str)> {
    let (key, value) = s.split_once('=')?;
    let key = key.trim();
    is_key(key).then(|| (key.to_ascii_lowercase(), value))
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*'))
}

/// Splits on `sep` outside double-quoted strings (which may contain escaped quotes).
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_quotes {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_quotes = false,
                _ => {}
            }
        } else if c == '"' {
            in_quotes = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out.retain(|part| !part.trim().is_empty());
    out
}

/// The content of a quoted string after its opening quote, with escapes resolved.
fn unquote(rest: &str) -> String {
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '"' => break,
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_list_items_with_params() {
        let m = parse_members(r#""burst";q=100;w=60, "daily";q=1000;w=86400"#);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].head, Some(Bare::Text("burst".into())));
        assert_eq!(m[0].param_number("q"), Some(100.0));
        assert_eq!(m[1].param_number("w"), Some(86400.0));
    }

    #[test]
    fn reads_dictionary_members_and_tokens() {
        let m = parse_members("limit=100, remaining = 50, reset=30");
        assert_eq!(m[1].entry, Some(("remaining".into(), Bare::Number(50.0))));
        let m = parse_members("burst;q=100;w=60");
        assert_eq!(m[0].head, Some(Bare::Text("burst".into())));
    }

    #[test]
    fn keeps_byte_sequences_and_quoted_separators() {
        let m = parse_members(r#""a,b;c";r=1;pk=:abc=:"#);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].head, Some(Bare::Text("a,b;c".into())));
        assert_eq!(m[0].param("pk"), Some(&Bare::Bytes("abc=".into())));
    }

    #[test]
    fn skips_junk_without_failing() {
        let m = parse_members(",, 10, ;;, \"unterminated");
        assert_eq!(m[0].head, Some(Bare::Number(10.0)));
        assert_eq!(m[1].head, Some(Bare::Text("unterminated".into())));
    }
}
