//! One HTTP request as one HTTP/2 stream: what the gateway and the agent
//! agree on beyond HTTP/2 itself.
//!
//! The gateway sends each caller request (anything but a WebSocket
//! upgrade, which keeps its `CONNECT` stream) as an ordinary HTTP/2
//! request on the agent's connection; the agent writes it as HTTP/1.1 to
//! its local service and answers the stream with the service's response.
//! HTTP/2 loses three things HTTP/1.1 services can see, so they travel
//! beside it:
//!
//! - the case of header names ([`NAMES_HEADER`], sent only when a name is
//!   not all lower-case, as cloudflared does): OAuth 1.0a signatures and
//!   picky services see the names as the caller wrote them, in the same
//!   order;
//! - a request target `:path` cannot carry byte for byte
//!   ([`TARGET_HEADER`]);
//! - which caller's kept-alive connections the request may use
//!   ([`POOL_HEADER`]);
//! - why the agent answered itself ([`LOCAL_ERROR_HEADER`]): its local
//!   service refused or did not accept the connection.

use std::future::poll_fn;
use std::task::Poll;

use bytes::Bytes;
use h2::SendStream;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

/// The header names as written, comma-separated, in the order of the
/// HTTP/2 header block's fields; present only when one differs from its
/// lower-case form.
pub const NAMES_HEADER: &str = "tunnel-header-names";

/// The request target byte for byte, when `:path` could not carry it.
pub const TARGET_HEADER: &str = "tunnel-target";

/// Which caller the request is for, as an opaque number: the agent keeps
/// its kept-alive connections to the local service apart per value, so a
/// service that ties authentication to the connection (NTLM, Negotiate)
/// never answers one caller on a connection another caller authenticated.
pub const POOL_HEADER: &str = "tunnel-pool";

/// On a response the agent wrote itself: why it could not ask its local
/// service ([`LOCAL_REFUSED`] or [`LOCAL_TIMEOUT`]).
pub const LOCAL_ERROR_HEADER: &str = "tunnel-local-error";

/// The local service refused the connection (or could not be resolved).
pub const LOCAL_REFUSED: &str = "refused";

/// The local service did not accept the connection in time.
pub const LOCAL_TIMEOUT: &str = "timeout";

/// Whether a field of a caller's request or a service's response must be
/// dropped before it enters a stream: the names above belong to this
/// protocol. A caller's `tunnel-target` would otherwise make the agent ask
/// for another target than the one routed and judged, and a service's
/// `tunnel-local-error` would turn its answer into the gateway's 502.
pub fn is_reserved(name: &HeaderName) -> bool {
    [NAMES_HEADER, TARGET_HEADER, POOL_HEADER, LOCAL_ERROR_HEADER].contains(&name.as_str())
}

/// Whether HTTP/2 forbids the field (RFC 9113 §8.2.2): it describes one
/// HTTP/1.1 connection, and each side frames its own.
pub fn is_connection_specific(name: &HeaderName, value: &HeaderValue) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
        || (name == header::TE && value.as_bytes() != b"trailers")
}

/// The names, joined for [`NAMES_HEADER`]; `None` when every name is
/// lower-case already (the receiver's default).
pub fn pack_names<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> Option<HeaderValue> {
    let mut packed = Vec::new();
    let mut cased = false;
    for name in names {
        cased |= name.iter().any(u8::is_ascii_uppercase);
        if !packed.is_empty() {
            packed.push(b',');
        }
        packed.extend_from_slice(name);
    }
    if !cased {
        return None;
    }
    HeaderValue::from_bytes(&packed).ok()
}

/// The names of `headers`' fields, in their iteration order, as
/// [`pack_names`] wrote them; `None` when `packed` does not describe
/// exactly these fields (then lower-case names are all there is).
pub fn unpack_names<'a>(packed: &'a [u8], headers: &HeaderMap) -> Option<Vec<&'a [u8]>> {
    let names: Vec<&[u8]> = packed.split(|b| *b == b',').collect();
    if names.len() != headers.len() {
        return None;
    }
    let matches = headers
        .iter()
        .zip(&names)
        .all(|((lower, _), cased)| lower.as_str().as_bytes().eq_ignore_ascii_case(cased));
    matches.then_some(names)
}

/// Appends `fields` (names as written) to `headers`, leaving out what
/// HTTP/2 forbids and the protocol's reserved names, and packs the names
/// into [`NAMES_HEADER`] when one is not all lower-case.
pub fn put_fields<'a>(
    headers: &mut HeaderMap,
    fields: impl IntoIterator<Item = (&'a [u8], &'a HeaderValue)>,
) -> Result<(), header::InvalidHeaderName> {
    let mut names: Vec<&[u8]> = Vec::new();
    for (name, value) in fields {
        let lower = HeaderName::from_bytes(name)?;
        // A caller's or a service's field named like the protocol's own is
        // dropped: it would steer the other side (`is_reserved`).
        if !is_connection_specific(&lower, value) && !is_reserved(&lower) {
            headers.append(lower, value.clone());
            names.push(name);
        }
    }
    if let Some(packed) = pack_names(names) {
        headers.insert(NAMES_HEADER, packed);
    }
    Ok(())
}

/// The fields of `headers` with their names as [`put_fields`] packed them
/// (`packed`, already taken out of `headers`), in lower case when it does
/// not describe them.
pub fn cased_fields<'a>(
    headers: &'a HeaderMap,
    packed: Option<&'a HeaderValue>,
) -> Vec<(&'a [u8], &'a HeaderValue)> {
    match packed.and_then(|p| unpack_names(p.as_bytes(), headers)) {
        Some(names) => names.into_iter().zip(headers.values()).collect(),
        None => headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v))
            .collect(),
    }
}

/// Sends `data` on `send` within HTTP/2 flow control: waits for window
/// rather than letting h2 queue beyond it, so a slow reader holds back the
/// writer instead of filling memory. A reset by the peer ends the wait.
pub async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return if end { send_end(send) } else { Ok(()) };
    }
    while !data.is_empty() {
        let mut cap = send.capacity();
        if cap == 0 {
            send.reserve_capacity(data.len());
            cap = poll_fn(|cx| match send.poll_capacity(cx) {
                Poll::Ready(Some(r)) => Poll::Ready(r),
                Poll::Ready(None) => Poll::Ready(Err(h2::Reason::STREAM_CLOSED.into())),
                Poll::Pending => match send.poll_reset(cx) {
                    Poll::Ready(Ok(reason)) => Poll::Ready(Err(reason.into())),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                },
            })
            .await?;
            if cap == 0 {
                continue;
            }
        }
        let chunk = data.split_to(cap.min(data.len()));
        send.send_data(chunk, end && data.is_empty())?;
    }
    Ok(())
}

/// Ends `send` with an empty DATA frame carrying END_STREAM.
pub fn send_end(send: &mut SendStream<Bytes>) -> Result<(), h2::Error> {
    send.send_data(Bytes::new(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in fields {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn fields_put_and_read_back_keep_their_names() {
        let (a, b, c) = (
            HeaderValue::from_static("1"),
            HeaderValue::from_static("2"),
            HeaderValue::from_static("close"),
        );
        let fields = [
            (&b"X-Request-ID"[..], &a),
            (&b"Connection"[..], &c),
            (&b"tunnel-target"[..], &a),
            (&b"accept"[..], &b),
        ];
        let mut h = HeaderMap::new();
        put_fields(&mut h, fields).unwrap();
        let packed = h.remove(NAMES_HEADER);
        let back = cased_fields(&h, packed.as_ref());
        assert_eq!(back, vec![(&b"X-Request-ID"[..], &a), (&b"accept"[..], &b)]);
    }

    #[test]
    fn lower_case_names_are_not_packed() {
        assert!(pack_names([&b"host"[..], b"x-a"]).is_none());
    }

    #[test]
    fn cased_names_round_trip_in_order() {
        let names = [&b"Host"[..], b"X-Custom-ID", b"X-Custom-ID", b"accept"];
        let packed = pack_names(names).unwrap();
        let h = map(&[
            ("Host", "a"),
            ("X-Custom-ID", "1"),
            ("x-custom-id", "2"),
            ("accept", "*/*"),
        ]);
        let got = unpack_names(packed.as_bytes(), &h).unwrap();
        assert_eq!(got, names.to_vec());
    }

    #[test]
    fn a_list_that_does_not_match_the_fields_is_ignored() {
        let h = map(&[("host", "a"), ("accept", "*/*")]);
        // One name too few, and a name that is another field's.
        assert!(unpack_names(b"Host", &h).is_none());
        assert!(unpack_names(b"Host,X-Other", &h).is_none());
        assert!(unpack_names(b"Host,Accept", &h).is_some());
    }

    #[test]
    fn the_protocols_own_names_are_reserved() {
        for name in [NAMES_HEADER, TARGET_HEADER, POOL_HEADER, LOCAL_ERROR_HEADER] {
            assert!(is_reserved(&HeaderName::from_static(name)), "{name}");
        }
        assert!(!is_reserved(&HeaderName::from_static("tunnel-id")));
        assert!(!is_reserved(&header::HOST));
    }

    #[test]
    fn connection_fields_are_recognised() {
        let te = HeaderName::from_static("te");
        assert!(is_connection_specific(
            &te,
            &HeaderValue::from_static("gzip")
        ));
        assert!(!is_connection_specific(
            &te,
            &HeaderValue::from_static("trailers")
        ));
        assert!(is_connection_specific(
            &HeaderName::from_static("keep-alive"),
            &HeaderValue::from_static("5")
        ));
        assert!(!is_connection_specific(
            &header::AUTHORIZATION,
            &HeaderValue::from_static("x")
        ));
    }
}
