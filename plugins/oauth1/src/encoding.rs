//! Percent-encoding as RFC 5849 §3.6 defines it, and the parsing of
//! form-encoded text (query strings and `application/x-www-form-urlencoded`
//! bodies, §3.4.1.3.1).
//!
//! Everything works on bytes: RFC 5849 encodes UTF-8, but the signature is
//! computed over the re-encoded bytes, so there is no reason to refuse (or
//! worse, lossily convert) parameters that are not UTF-8. Only the protocol
//! parameters that the plugin reads as text must be UTF-8.

use alloc::{format, string::String, vec::Vec};

/// Parameters larger than this (name and value as sent, still encoded) are
/// refused: no legitimate protocol parameter comes close, and it bounds the
/// work an unauthenticated caller can make the plugin do.
pub const MAX_PARAM_BYTES: usize = 1024;

/// More parameters than this in one request (header, query and form body
/// together) are refused, for the same reason.
pub const MAX_PARAMS: usize = 100;

/// One decoded parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The name, percent-decoded.
    pub name: Vec<u8>,
    /// The value, percent-decoded.
    pub value: Vec<u8>,
}

/// The RFC 3986 unreserved set: the only bytes §3.6 leaves as they are.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Appends `bytes` percent-encoded per §3.6 (upper-case hex, everything but
/// the unreserved set encoded; in particular a space is `%20`, never `+`).
pub fn encode_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// `bytes` percent-encoded per §3.6.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    encode_into(&mut out, bytes);
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `text`; `None` when a `%` is not followed by two hex
/// digits. `plus_is_space` is for form-encoded text (query and body), where
/// `+` means a space; in the Authorization header a `+` is itself.
pub fn decode(text: &[u8], plus_is_space: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'%' => {
                let hi = hex_value(*text.get(i + 1)?)?;
                let lo = hex_value(*text.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Decodes what can be decoded and keeps the rest as it is. Used only to
/// notice an `oauth_` name inside text that is not valid percent-encoding,
/// so that a broken query cannot hide protocol parameters from the
/// "is this request signed at all?" question.
fn decode_lenient(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let pair = text
            .get(i + 1..i + 3)
            .and_then(|h| Some(hex_value(h[0])? << 4 | hex_value(h[1])?));
        match (text[i], pair) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Whether a (decoded) parameter name is an OAuth protocol parameter. The
/// RFC reserves the `oauth_` prefix (§3.4.1.3.1 and §3.5).
pub fn is_protocol_name(name: &[u8]) -> bool {
    name.starts_with(b"oauth_")
}

/// What parsing one form-encoded text found.
#[derive(Debug, Default)]
pub struct FormParams {
    /// The parameters, decoded, in the order sent (at most
    /// [`MAX_PARAMS`]` + 1` are kept).
    pub params: Vec<Param>,
    /// How many parameters the text holds (kept or not).
    pub count: usize,
    /// The first reason this text cannot be used for verification. It is
    /// reported only if the request turns out to carry OAuth parameters: an
    /// unsigned request with an odd query is none of this plugin's business.
    pub problem: Option<String>,
    /// Whether any name starts with `oauth_`, even one that failed to decode.
    pub mentions_oauth: bool,
}

/// Parses `name=value&name=value` text (`what` names it in messages: "query
/// string", "form body"). Empty segments are skipped; a segment without `=`
/// is a name with an empty value (the RFC example's `c2`).
pub fn parse_form(text: &[u8], what: &str) -> FormParams {
    let mut out = FormParams::default();
    for pair in text.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        out.count += 1;
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        let decoded_name = decode(name, true);
        out.mentions_oauth |= match &decoded_name {
            Some(n) => is_protocol_name(n),
            None => is_protocol_name(&decode_lenient(name)),
        };
        // Past the first problem, keep scanning only for `oauth_` names.
        if out.problem.is_some() {
            continue;
        }
        if pair.len() > MAX_PARAM_BYTES {
            out.problem = Some(format!(
                "a {what} parameter is over {MAX_PARAM_BYTES} bytes"
            ));
        } else if out.count > MAX_PARAMS {
            out.problem = Some(format!("the {what} has over {MAX_PARAMS} parameters"));
        } else {
            match (decoded_name, decode(value, true)) {
                (Some(name), Some(value)) => out.params.push(Param { name, value }),
                _ => out.problem = Some(format!("the {what} is not valid percent-encoding")),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn decode_rejects_truncated_and_non_hex_escapes() {
        assert_eq!(decode(b"a%2", false), None);
        assert_eq!(decode(b"a%", false), None);
        assert_eq!(decode(b"a%zz", false), None);
        assert_eq!(decode(b"%2b%2B", false).unwrap(), b"++");
    }

    #[test]
    fn plus_is_a_space_only_in_form_text() {
        assert_eq!(decode(b"a+b", true).unwrap(), b"a b");
        assert_eq!(decode(b"a+b", false).unwrap(), b"a+b");
    }

    #[test]
    fn broken_query_still_reveals_oauth_names() {
        let parsed = parse_form(b"oauth_nonce=%zz", "query string");
        assert!(parsed.mentions_oauth);
        assert!(parsed.problem.unwrap().contains("percent-encoding"));
        let parsed = parse_form(b"oauth%5Fnonce%=1", "query string");
        assert!(parsed.mentions_oauth);
    }

    #[test]
    fn form_limits() {
        let long = vec![b'a'; MAX_PARAM_BYTES + 1];
        assert!(parse_form(&long, "form body")
            .problem
            .unwrap()
            .contains("1024"));
        let many: Vec<u8> = "a=1&".repeat(MAX_PARAMS + 1).into_bytes();
        let parsed = parse_form(&many, "form body");
        assert_eq!(parsed.count, MAX_PARAMS + 1);
        assert!(parsed.problem.unwrap().contains("over 100"));
    }
}
