//! Small helpers on the WIT types for the decisions every plugin makes.

use alloc::{format, string::String, vec::Vec};

use crate::{Decision, Denial, Header, HeaderEdit, Request};

impl Decision {
    /// Let the request through unchanged.
    pub fn allow() -> Decision {
        Decision::Allow(Vec::new())
    }

    /// Let the request through with these header edits (applied to what
    /// is forwarded to the service, after the edits of earlier plugins).
    pub fn allow_with(edits: Vec<HeaderEdit>) -> Decision {
        Decision::Allow(edits)
    }

    /// True when the decision lets the request through.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// The denial, when the decision is one.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Decision::Deny(d) => Some(d),
            Decision::Allow(_) => None,
        }
    }
}

impl From<Denial> for Decision {
    fn from(denial: Denial) -> Decision {
        Decision::Deny(denial)
    }
}

impl Denial {
    /// A denial with `status` (400-599) and a plain-text body naming it
    /// ("403 Forbidden"). `reason` goes to the gateway's log and trace, not
    /// to the caller: say why, and never include a secret.
    pub fn new(status: u16, reason: impl Into<String>) -> Denial {
        Denial {
            status,
            headers: alloc::vec![
                Header::new("content-type", "text/plain; charset=utf-8"),
                Header::new("x-content-type-options", "nosniff"),
            ],
            body: format!("{}\n", status_line(status)).into_bytes(),
            reason: reason.into(),
        }
    }

    /// Replaces the body sent to the caller. Keep it short and free of
    /// secrets; the gateway refuses an oversized one.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Denial {
        self.body = body.into();
        self
    }

    /// Adds a response header (e.g. `www-authenticate`).
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Denial {
        self.headers.push(Header::new(name, value));
        self
    }
}

impl Header {
    /// A header; the name is stored lower-case.
    pub fn new(name: &str, value: impl Into<Vec<u8>>) -> Header {
        Header {
            name: name.to_ascii_lowercase(),
            value: value.into(),
        }
    }
}

impl HeaderEdit {
    /// Replace every header `name` with this one value.
    pub fn set(name: &str, value: impl Into<Vec<u8>>) -> HeaderEdit {
        HeaderEdit::Set(Header::new(name, value))
    }

    /// Add a header, keeping existing ones of the same name.
    pub fn append(name: &str, value: impl Into<Vec<u8>>) -> HeaderEdit {
        HeaderEdit::Append(Header::new(name, value))
    }

    /// Remove every header `name`.
    pub fn remove(name: &str) -> HeaderEdit {
        HeaderEdit::Remove(name.to_ascii_lowercase())
    }
}

impl Request {
    /// The first value of header `name` (any case), as received.
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.headers_named(name).next()
    }

    /// The first value of header `name` when it is UTF-8.
    pub fn header_str<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.header(name).and_then(|v| core::str::from_utf8(v).ok())
    }

    /// Every value of header `name` (any case), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }

    /// The path as received (before `?`), not percent-decoded.
    pub fn path(&self) -> &str {
        let p = &self.path_with_query;
        p.split_once('?').map_or(p.as_str(), |(path, _)| path)
    }

    /// The query (after `?`), if any, as received.
    pub fn query(&self) -> Option<&str> {
        self.path_with_query.split_once('?').map(|(_, q)| q)
    }
}

/// "403 Forbidden", or "499" for a status without a standard phrase.
fn status_line(status: u16) -> String {
    match status_phrase(status) {
        "" => format!("{status}"),
        phrase => format!("{status} {phrase}"),
    }
}

/// The standard reason phrase of an error status, or "" when it has none.
pub fn status_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn denials_name_their_status_and_carry_headers_and_body() {
        let d = Denial::new(403, "why");
        assert_eq!(
            (d.status, d.body.as_slice()),
            (403, &b"403 Forbidden\n"[..])
        );
        assert_eq!(d.reason, "why");
        assert_eq!(
            d.headers[0],
            Header::new("Content-Type", "text/plain; charset=utf-8")
        );
        assert_eq!(Denial::new(499, "x").body, b"499\n");
        let d = Denial::new(401, "no token")
            .with_header("WWW-Authenticate", "Bearer")
            .with_body("sign in\n");
        assert_eq!(d.body, b"sign in\n");
        assert_eq!(d.headers.last().unwrap().name, "www-authenticate");
        let decision: Decision = d.into();
        assert_eq!(decision.denial().map(|d| d.status), Some(401));
        assert!(Decision::allow().is_allow() && Decision::allow().denial().is_none());
    }

    #[test]
    fn headers_are_found_in_any_case_and_in_order() {
        let mut req = testing::request("GET", "/wiki/page?x=1&y");
        req.headers.push(Header::new("x-team", "blue"));
        req.headers.push(Header::new("X-Team", "green"));
        req.headers.push(Header::new("x-bytes", [0xff, 0xfe]));
        assert_eq!(req.header("X-TEAM"), Some(&b"blue"[..]));
        assert_eq!(
            req.headers_named("x-team").collect::<Vec<_>>(),
            [&b"blue"[..], &b"green"[..]]
        );
        assert_eq!(req.header_str("x-bytes"), None);
        assert_eq!(req.header("absent"), None);
        assert_eq!((req.path(), req.query()), ("/wiki/page", Some("x=1&y")));
        let bare = testing::request("GET", "/a");
        assert_eq!((bare.path(), bare.query()), ("/a", None));
    }

    #[test]
    fn edits_name_headers_in_lower_case() {
        assert_eq!(
            HeaderEdit::set("X-A", "1"),
            HeaderEdit::Set(Header {
                name: "x-a".into(),
                value: b"1".to_vec()
            })
        );
        assert_eq!(HeaderEdit::remove("X-B"), HeaderEdit::Remove("x-b".into()));
        assert!(matches!(HeaderEdit::append("x-c", "2"), HeaderEdit::Append(h) if h.name == "x-c"));
    }
}
