//! The `Authorization: OAuth ...` header (RFC 5849 §3.5.1).
//!
//! ```text
//! Authorization: OAuth realm="Example",
//!     oauth_consumer_key="0685bd9184jfhq22", oauth_nonce="4572616e48616d6d65724c61686176",
//!     ...
//! ```
//!
//! The parser is deliberately strict: every value must be quoted, names and
//! values are percent-decoded (§3.5.1 says both are encoded per §3.6), and a
//! name may appear once. A header that a lenient parser and a strict one
//! would read differently is exactly the kind of ambiguity an attacker uses
//! to make the gateway and the service verify different things, so it is
//! refused instead of guessed at.

use alloc::{string::String, vec::Vec};
use core::fmt;

use crate::encoding::{decode, Param, MAX_PARAMS, MAX_PARAM_BYTES};

/// Why a header could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Not the `name="value", ...` shape.
    Syntax(&'static str),
    /// A quoted value with no closing quote.
    Unterminated,
    /// A `%` not followed by two hex digits.
    BadEncoding,
    /// The same parameter twice (the name, lossily decoded for messages).
    Duplicate(String),
    /// One parameter over [`MAX_PARAM_BYTES`].
    TooLong,
    /// Over [`MAX_PARAMS`] parameters.
    TooMany,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(what) => f.write_str(what),
            Self::Unterminated => f.write_str("a quoted value has no closing quote"),
            Self::BadEncoding => f.write_str("a name or value is not valid percent-encoding"),
            Self::Duplicate(name) => write!(f, "parameter {name:?} appears more than once"),
            Self::TooLong => write!(f, "a parameter is over {MAX_PARAM_BYTES} bytes"),
            Self::TooMany => write!(f, "over {MAX_PARAMS} parameters"),
        }
    }
}

/// If `value` uses the OAuth scheme (matched case-insensitively, as HTTP
/// auth schemes are), the text after the scheme name.
pub fn oauth_credentials(value: &[u8]) -> Option<&[u8]> {
    let value = trim_start(value);
    let (scheme, rest) = value.split_at(value.len().min(5));
    if !scheme.eq_ignore_ascii_case(b"OAuth") {
        return None;
    }
    // "OAuth" alone or followed by whitespace; "OAuth2 ..." is another scheme.
    match rest.first() {
        None | Some(b' ' | b'\t') => Some(rest),
        Some(_) => None,
    }
}

fn is_space(b: u8) -> bool {
    // CR and LF too: a folded header that a proxy did not unfold.
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_space(*first) {
            break;
        }
        s = rest;
    }
    s
}

/// RFC 7230 `tchar`: what an auth-param name is made of. `%` is among them,
/// so encoded names pass through to the decoder.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses the parameters after the scheme: `name="value"` pairs separated by
/// commas, with optional whitespace around them. Empty list elements (`,,`)
/// are allowed, as RFC 7235 allows them.
pub fn parse(mut s: &[u8]) -> Result<Vec<Param>, HeaderError> {
    let mut params: Vec<Param> = Vec::new();
    loop {
        s = trim_start(s);
        if let [b',', rest @ ..] = s {
            s = rest;
            continue;
        }
        if s.is_empty() {
            return Ok(params);
        }

        let name_len = s.iter().position(|&b| !is_tchar(b)).unwrap_or(s.len());
        if name_len == 0 {
            return Err(HeaderError::Syntax("expected a parameter name"));
        }
        let (name, rest) = s.split_at(name_len);
        s = trim_start(rest);
        s = match s {
            [b'=', rest @ ..] => trim_start(rest),
            _ => return Err(HeaderError::Syntax("expected `=` after a parameter name")),
        };
        s = match s {
            [b'"', rest @ ..] => rest,
            _ => {
                return Err(HeaderError::Syntax(
                    "parameter values must be in double quotes",
                ))
            }
        };
        let end = s
            .iter()
            .position(|&b| b == b'"')
            .ok_or(HeaderError::Unterminated)?;
        let value = &s[..end];
        // Values are percent-encoded, so a quoted-pair escape never belongs
        // here; accepting one would mean choosing how to read it.
        if value.contains(&b'\\') {
            return Err(HeaderError::Syntax(
                "backslash escapes are not used in OAuth values",
            ));
        }
        s = trim_start(&s[end + 1..]);
        match s {
            [] | [b',', ..] => {}
            _ => return Err(HeaderError::Syntax("expected a comma between parameters")),
        }

        if name.len() + value.len() > MAX_PARAM_BYTES {
            return Err(HeaderError::TooLong);
        }
        if params.len() == MAX_PARAMS {
            return Err(HeaderError::TooMany);
        }
        let name = decode(name, false).ok_or(HeaderError::BadEncoding)?;
        let value = decode(value, false).ok_or(HeaderError::BadEncoding)?;
        if params.iter().any(|p| p.name == name) {
            return Err(HeaderError::Duplicate(
                String::from_utf8_lossy(&name).into_owned(),
            ));
        }
        params.push(Param { name, value });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_header(v: &str) -> Result<Vec<(String, String)>, HeaderError> {
        let rest = oauth_credentials(v.as_bytes()).expect("OAuth scheme");
        Ok(parse(rest)?
            .into_iter()
            .map(|p| {
                (
                    String::from_utf8(p.name).unwrap(),
                    String::from_utf8(p.value).unwrap(),
                )
            })
            .collect())
    }

    #[test]
    fn scheme_is_case_insensitive_and_exact() {
        assert!(oauth_credentials(b"OAuth realm=\"x\"").is_some());
        assert!(oauth_credentials(b"oauth realm=\"x\"").is_some());
        assert!(oauth_credentials(b"  OAUTH\trealm=\"x\"").is_some());
        assert!(oauth_credentials(b"OAuth").is_some());
        assert!(oauth_credentials(b"OAuth2 x").is_none());
        assert!(oauth_credentials(b"Bearer abc").is_none());
        assert!(oauth_credentials(b"OAut").is_none());
    }

    #[test]
    fn reads_folded_header_with_percent_decoding() {
        let got = parse_header(
            "OAuth realm=\"Example\",\r\n  oauth_signature=\"bYT5CMsGcbgUdFHObYMEfcx6bsw%3D\" , a%20b = \"c+d\",",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                ("realm".into(), "Example".into()),
                (
                    "oauth_signature".into(),
                    "bYT5CMsGcbgUdFHObYMEfcx6bsw=".into()
                ),
                ("a b".into(), "c+d".into()),
            ]
        );
    }

    #[test]
    fn malformed_headers() {
        assert_eq!(parse_header("OAuth a=\"b"), Err(HeaderError::Unterminated));
        assert_eq!(
            parse_header("OAuth a=\"1\", a=\"2\""),
            Err(HeaderError::Duplicate("a".into()))
        );
        // Duplicates are judged after decoding.
        assert_eq!(
            parse_header("OAuth oauth_nonce=\"1\", oauth%5Fnonce=\"2\""),
            Err(HeaderError::Duplicate("oauth_nonce".into()))
        );
        assert_eq!(
            parse_header("OAuth a=\"%4\""),
            Err(HeaderError::BadEncoding)
        );
        assert_eq!(
            parse_header("OAuth a=\"%GG\""),
            Err(HeaderError::BadEncoding)
        );
        assert!(matches!(
            parse_header("OAuth a=b"),
            Err(HeaderError::Syntax(_))
        ));
        assert!(matches!(
            parse_header("OAuth a=\"b\" c=\"d\""),
            Err(HeaderError::Syntax(_))
        ));
        assert!(matches!(
            parse_header("OAuth =\"b\""),
            Err(HeaderError::Syntax(_))
        ));
        assert!(matches!(
            parse_header("OAuth a\"b\""),
            Err(HeaderError::Syntax(_))
        ));
        assert!(matches!(
            parse_header("OAuth a=\"b\\\"c\""),
            Err(HeaderError::Syntax(_))
        ));
    }
}
