//! What the gateway will apply of a plugin's decision: header edits that
//! leave gateway-managed headers alone, and denials with a 4xx/5xx status
//! and bounded, well-formed headers and body. Anything else is a
//! [`Failure::Invalid`] (fail closed).

use crate::{Denial, Failure, HeaderEdit};

/// Headers a denial may not carry: the gateway frames the response.
const FORBIDDEN_DENIAL_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "trailer",
];

/// Largest denial body a plugin may return.
const MAX_DENIAL_BODY: usize = 64 << 10;
/// Most headers in a denial, and their total size.
const MAX_DENIAL_HEADERS: usize = 16;
const MAX_DENIAL_HEADER_BYTES: usize = 8 << 10;
/// Most header edits one plugin may return, and the largest value.
const MAX_EDITS: usize = 64;
const MAX_EDIT_VALUE: usize = 8 << 10;

/// A lower-case, valid HTTP header name.
fn header_name_ok(name: &str) -> bool {
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
        && name.bytes().all(|b| !b.is_ascii_uppercase())
}

/// Refuses edits the gateway will not apply.
pub(super) fn check_edits(edits: &[HeaderEdit]) -> Result<(), Failure> {
    if edits.len() > MAX_EDITS {
        return Err(Failure::Invalid(format!(
            "{} header edits, over {MAX_EDITS}",
            edits.len()
        )));
    }
    for e in edits {
        let (name, value) = match e {
            HeaderEdit::Set(h) | HeaderEdit::Append(h) => (h.name.as_str(), Some(&h.value)),
            HeaderEdit::Remove(n) => (n.as_str(), None),
        };
        if !header_name_ok(name) {
            return Err(Failure::Invalid(format!(
                "header edit names `{name}`, not a lower-case header name"
            )));
        }
        if gateway_judge::http_checks::gateway_managed(name) {
            return Err(Failure::Invalid(format!(
                "header `{name}` is managed by the gateway and may not be edited"
            )));
        }
        if let Some(v) = value {
            if v.len() > MAX_EDIT_VALUE || http::HeaderValue::from_bytes(v).is_err() {
                return Err(Failure::Invalid(format!(
                    "header edit of `{name}` has an invalid value"
                )));
            }
        }
    }
    Ok(())
}

/// Refuses a denial the gateway will not send.
pub(super) fn check_denial(d: &Denial) -> Result<(), Failure> {
    if !(400..=599).contains(&d.status) {
        return Err(Failure::Invalid(format!(
            "denial status {} is not 400-599",
            d.status
        )));
    }
    if d.body.len() > MAX_DENIAL_BODY {
        return Err(Failure::Invalid(format!(
            "denial body of {} bytes is over {MAX_DENIAL_BODY}",
            d.body.len()
        )));
    }
    let total: usize = d.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    if d.headers.len() > MAX_DENIAL_HEADERS || total > MAX_DENIAL_HEADER_BYTES {
        return Err(Failure::Invalid(format!(
            "denial has {} headers of {total} bytes, over {MAX_DENIAL_HEADERS} or {MAX_DENIAL_HEADER_BYTES}",
            d.headers.len()
        )));
    }
    for h in &d.headers {
        if !header_name_ok(&h.name)
            || FORBIDDEN_DENIAL_HEADERS.contains(&h.name.as_str())
            || http::HeaderValue::from_bytes(&h.value).is_err()
        {
            return Err(Failure::Invalid(format!(
                "denial header `{}` is invalid or managed by the gateway",
                h.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WitHeader;

    #[test]
    fn edits_of_gateway_headers_are_invalid() {
        let set = |n: &str| {
            HeaderEdit::Set(WitHeader {
                name: n.into(),
                value: b"v".to_vec(),
            })
        };
        assert!(check_edits(&[set("x-user")]).is_ok());
        for bad in [
            "host",
            "content-length",
            "x-forwarded-for",
            "x-forwarded-port",
            "x-real-ip",
            "expect",
            "X-Upper",
            "bad name",
        ] {
            assert!(check_edits(&[set(bad)]).is_err(), "{bad}");
        }
        assert!(check_edits(&[HeaderEdit::Remove("transfer-encoding".into())]).is_err());
        let nl = HeaderEdit::Append(WitHeader {
            name: "x-a".into(),
            value: b"a\r\nb".to_vec(),
        });
        assert!(check_edits(&[nl]).is_err());
    }

    #[test]
    fn denials_are_checked() {
        let d = |status, name: &str| Denial {
            status,
            headers: vec![WitHeader {
                name: name.into(),
                value: b"v".to_vec(),
            }],
            body: vec![],
            reason: String::new(),
        };
        assert!(check_denial(&d(401, "www-authenticate")).is_ok());
        assert!(check_denial(&d(200, "x")).is_err());
        assert!(check_denial(&d(403, "content-length")).is_err());
        assert!(check_denial(&d(403, "WWW-Authenticate")).is_err());
        let mut crlf = d(401, "www-authenticate");
        crlf.headers[0].value = b"OAuth\r\nset-cookie: x=1".to_vec();
        assert!(check_denial(&crlf).is_err(), "no header injection");
        let mut many = d(401, "x-a");
        many.headers = (0..=MAX_DENIAL_HEADERS)
            .map(|i| WitHeader {
                name: format!("x-{i}"),
                value: b"v".to_vec(),
            })
            .collect();
        assert!(check_denial(&many).is_err(), "bounded header count");
    }

    #[test]
    fn edits_are_bounded() {
        let many: Vec<_> = (0..=MAX_EDITS)
            .map(|i| HeaderEdit::Remove(format!("x-{i}")))
            .collect();
        assert!(check_edits(&many).is_err());
        let big = HeaderEdit::Set(WitHeader {
            name: "x-big".into(),
            value: vec![b'a'; MAX_EDIT_VALUE + 1],
        });
        assert!(check_edits(&[big]).is_err());
    }
}
