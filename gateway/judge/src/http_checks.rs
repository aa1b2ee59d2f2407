//! Pure request checks: framing that could smuggle a second request past
//! us, header-block size, and the header rewriting done before forwarding.

use http::header::{self, HeaderName};
use http::HeaderMap;

/// Refuses requests whose framing is ambiguous. The caller answers 400
/// and closes the connection.
pub fn check_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Err("duplicate Host header");
    }
    let te: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let cl: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if !te.is_empty() && !cl.is_empty() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if te.len() > 1 {
        return Err("repeated Transfer-Encoding");
    }
    if let Some(v) = te.first() {
        if !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err("Transfer-Encoding other than chunked");
        }
    }
    if cl.len() > 1 {
        return Err("repeated Content-Length");
    }
    if let Some(v) = cl.first() {
        let b = v.as_bytes();
        if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
            return Err("bad Content-Length");
        }
    }
    Ok(())
}

/// Counts header lines named `name` (lower-case) in a raw HTTP/1 header
/// block. pingora drops `Content-Length` when `Transfer-Encoding` is also
/// present; the raw bytes still show what the caller sent.
pub fn raw_header_count(raw: &[u8], name: &str) -> usize {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .filter(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && line[name.len()] == b':'
        })
        .count()
}

/// The declared body length, if any (valid after [`check_framing`]).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// Size of the header block as sent (names, values, separators).
pub fn header_block_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// Whether the request asks for a WebSocket upgrade.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Headers the caller may not set: the gateway's own credential and
/// headers a service behind a trusted proxy reads as the proxy's word about
/// the client or the original URL. Every `x-forwarded-*` goes too.
const CALLER_FORBIDDEN: &[&str] = &[
    "proxy-authorization",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1). `Transfer-Encoding` stays: pingora
/// frames the upstream body from it. `Connection`/`Upgrade` stay on a
/// WebSocket upgrade.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
];

/// Headers only the gateway decides: framing, connection management,
/// hop-by-hop ones, the caller credential and every header a service reads
/// as a trusted proxy's word. Policy plugins may not edit them, and their
/// denials may not carry the framing ones.
pub fn gateway_managed(name: &str) -> bool {
    matches!(
        name,
        "host" | "content-length" | "transfer-encoding" | "connection" | "upgrade" | "expect"
    ) || HOP_BY_HOP.contains(&name)
        || CALLER_FORBIDDEN.contains(&name)
        || name.starts_with("x-forwarded-")
}

/// The headers to remove before forwarding: hop-by-hop ones (including
/// those named in `Connection`) and the ones the caller may not set.
pub fn headers_to_strip(headers: &HeaderMap, upgrade: bool) -> Vec<HeaderName> {
    strip(headers, upgrade, true)
}

/// Only the hop-by-hop headers (including those named in `Connection`):
/// what a hop between two gateway instances removes from a head the first
/// one already made, keeping its forwarding headers.
pub fn hop_headers(headers: &HeaderMap, upgrade: bool) -> Vec<HeaderName> {
    strip(headers, upgrade, false)
}

fn strip(headers: &HeaderMap, upgrade: bool, caller: bool) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| {
            !(n == header::TRANSFER_ENCODING
                || n == header::CONTENT_LENGTH
                || n == header::HOST
                || (upgrade && n == header::UPGRADE))
        })
        .collect();
    out.extend(HOP_BY_HOP.iter().map(|n| HeaderName::from_static(n)));
    if caller {
        out.extend(CALLER_FORBIDDEN.iter().map(|n| HeaderName::from_static(n)));
        out.extend(
            headers
                .keys()
                .filter(|n| n.as_str().starts_with("x-forwarded-"))
                .cloned(),
        );
    }
    if !upgrade {
        out.push(header::CONNECTION);
        out.push(header::UPGRADE);
    }
    out.retain(|n| headers.contains_key(n));
    out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("host", "a"), ("host", "b")], "duplicate Host header"),
            (
                &[("content-length", "3"), ("transfer-encoding", "chunked")],
                "both Content-Length and Transfer-Encoding",
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                "repeated Transfer-Encoding",
            ),
            (
                &[("transfer-encoding", "gzip, chunked")],
                "Transfer-Encoding other than chunked",
            ),
            (
                &[("transfer-encoding", "identity")],
                "Transfer-Encoding other than chunked",
            ),
            (
                &[("content-length", "3"), ("content-length", "3")],
                "repeated Content-Length",
            ),
            (&[("content-length", "-1")], "bad Content-Length"),
            (&[("content-length", "1 2")], "bad Content-Length"),
            (&[("content-length", "")], "bad Content-Length"),
            (
                &[("content-length", "99999999999999999999")],
                "bad Content-Length",
            ),
        ];
        for (headers, why) in cases {
            assert_eq!(check_framing(&h(headers)), Err(*why), "{headers:?}");
        }
    }

    #[test]
    fn raw_header_lines_are_counted() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX-Content-Length: 1\r\n\r\n";
        assert_eq!(raw_header_count(raw, "content-length"), 1);
        assert_eq!(raw_header_count(raw, "transfer-encoding"), 1);
        assert_eq!(
            raw_header_count(b"GET /content-length: HTTP/1.1\r\n\r\n", "content-length"),
            0
        );
    }

    #[test]
    fn plain_framing_passes() {
        assert!(check_framing(&h(&[("host", "a"), ("content-length", "10")])).is_ok());
        assert!(check_framing(&h(&[("host", "a"), ("transfer-encoding", "Chunked")])).is_ok());
        assert_eq!(content_length(&h(&[("content-length", "10")])), Some(10));
    }

    #[test]
    fn forwarding_strips_hop_by_hop_and_caller_claims() {
        let mut m = h(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Bearer t"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-prefix", "/admin"),
            ("x-original-url", "/admin"),
            ("authorization", "OAuth oauth_signature=\"a%2Bb\""),
            ("te", "trailers"),
        ]);
        for n in headers_to_strip(&m.clone(), false) {
            m.remove(n);
        }
        let left: Vec<_> = m.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["authorization"]);
        assert_eq!(m["authorization"], "OAuth oauth_signature=\"a%2Bb\"");
    }

    #[test]
    fn websocket_upgrade_keeps_upgrade_headers() {
        let mut m = h(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_websocket_upgrade(&m));
        for n in headers_to_strip(&m.clone(), true) {
            m.remove(n);
        }
        assert_eq!(m["upgrade"], "websocket");
        assert_eq!(m["connection"], "Upgrade");
    }

    use proptest::prelude::*;

    fn header_set() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
        let name = prop_oneof![
            Just("host".to_string()),
            Just("content-length".to_string()),
            Just("transfer-encoding".to_string()),
            Just("x-other".to_string()),
        ];
        let value = prop_oneof![
            "[0-9]{0,22}".prop_map(String::into_bytes),
            Just(b"chunked".to_vec()),
            Just(b"Chunked".to_vec()),
            Just(b"gzip, chunked".to_vec()),
            proptest::collection::vec(0x20u8..0x7f, 0..12),
        ];
        proptest::collection::vec((name, value), 0..6)
    }

    proptest! {
        /// Bounded fuzz run of the framing check: nothing it accepts can
        /// be framed two ways.
        #[test]
        fn accepted_framing_is_unambiguous(set in header_set()) {
            let mut m = HeaderMap::new();
            for (n, v) in &set {
                m.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    http::HeaderValue::from_bytes(v).unwrap(),
                );
            }
            if check_framing(&m).is_ok() {
                let count = |h| m.get_all(h).iter().count();
                prop_assert!(count(header::HOST) <= 1);
                prop_assert!(count(header::CONTENT_LENGTH) + count(header::TRANSFER_ENCODING) <= 1);
                if let Some(te) = m.get(header::TRANSFER_ENCODING) {
                    prop_assert!(te.as_bytes().eq_ignore_ascii_case(b"chunked"));
                }
                if m.contains_key(header::CONTENT_LENGTH) {
                    prop_assert!(content_length(&m).is_some());
                }
            }
        }
    }
}
