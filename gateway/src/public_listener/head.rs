//! Reading an HTTP/1 request head against its deadline, and the gateway's
//! own answers when it does not come (408) or grows too large (431).

use std::time::Duration;

use bytes::BytesMut;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::Limits;

/// Same as pingora's HTTP/1 parser, so both judge a head alike.
const MAX_HEADERS: usize = 256;
/// How long the gateway's own short answers (408, 431) may take to write:
/// a caller that does not read them is not waited for.
const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long to wait for a request head.
#[derive(Clone, Copy, Debug)]
pub(super) enum Wait {
    /// A new connection's first request: all of it by this instant.
    First(Instant),
    /// A later request: its first byte by this instant (the keep-alive
    /// idle time), the rest within `header_read_timeout` of that byte.
    Idle(Instant),
}

/// What came of waiting for a request head.
#[derive(Debug)]
pub(super) enum Head {
    /// A complete head (or one pingora will refuse as malformed), with any
    /// bytes that followed it.
    Ready(BytesMut),
    /// The caller closed, went idle past keep-alive, or the gateway is
    /// shutting down: close without a word.
    Gone,
    /// The head did not arrive whole in time (`started`: some of it did).
    Late { started: bool },
    /// The unfinished head is over the size limit.
    TooLarge,
}

/// Whether `buf` holds a whole request head, judged as pingora's parser
/// will judge it.
fn head_complete(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(_)) => true,
        Ok(httparse::Status::Partial) => false,
        // pingora escapes an illegal request target when the request line
        // looks like one and parses again: wait for the end of the header
        // section before handing such a head over. Otherwise it answers 400.
        Err(httparse::Error::Token | httparse::Error::Version) => {
            !looks_like_request_line(buf) || buf.windows(4).any(|w| w == b"\r\n\r\n")
        }
        // Malformed for good: pingora answers 400.
        Err(_) => true,
    }
}

/// Whether pingora would try to escape this request line: its pattern
/// `^\w+ (?P<uri>.+) HTTP/\d` (in `escape_illegal_request_line`), matched
/// on the first line.
fn looks_like_request_line(buf: &[u8]) -> bool {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let method = line
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    if method == 0 || line.get(method) != Some(&b' ') {
        return false;
    }
    let rest = &line[method + 1..];
    (1..rest.len()).any(|i| {
        rest[i..].starts_with(b" HTTP/") && rest.get(i + 6).is_some_and(u8::is_ascii_digit)
    })
}

/// Resolves when the gateway starts shutting down.
async fn shutting_down(shutdown: &ShutdownWatch) {
    let mut sd = shutdown.clone();
    if sd.wait_for(|down| *down).await.is_err() {
        // The server is gone; the connection task ends with it.
        std::future::pending::<()>().await;
    }
}

pub(super) async fn read_head(
    stream: &mut Stream,
    wait: Wait,
    l: &Limits,
    shutdown: &ShutdownWatch,
) -> Head {
    let mut buf = BytesMut::with_capacity(4096);
    let mut deadline = match wait {
        Wait::First(d) | Wait::Idle(d) => d,
    };
    loop {
        if buf.len() > l.max_head_bytes {
            return Head::TooLarge;
        }
        if buf.capacity() == buf.len() {
            buf.reserve(4096);
        }
        let read = tokio::select! {
            biased;
            r = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => r,
            _ = shutting_down(shutdown), if buf.is_empty() => return Head::Gone,
        };
        let was_empty = buf.is_empty();
        match read {
            // Nothing of the next request within keep-alive: an ordinary
            // keep-alive close. Anything else late is a slow head.
            Err(_) if was_empty && matches!(wait, Wait::Idle(_)) => return Head::Gone,
            Err(_) => {
                return Head::Late {
                    started: !was_empty,
                }
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Gone,
            Ok(Ok(_)) => {}
        }
        if was_empty && matches!(wait, Wait::Idle(_)) {
            // The next request has begun: now its head has to arrive whole.
            deadline = Instant::now() + l.header_read_timeout;
        }
        if head_complete(&buf) {
            return Head::Ready(buf);
        }
    }
}

/// Writes a short final answer and closes.
pub(super) async fn answer(stream: &mut Stream, status: &str, text: &str) {
    let body = format!("{text}\n");
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(ANSWER_WRITE_TIMEOUT, async {
        stream.write_all(msg.as_bytes()).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(stream).await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_complete_when_pingora_would_parse_it() {
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"));
        // Leading empty lines do not end a head.
        assert!(!head_complete(b"\r\n\r\nGET / HTTP/1.1\r\n"));
        // An illegal target pingora escapes: only once the section ends.
        assert!(!head_complete(b"GET /a b HTTP/1.1\r\nHost: a\r\n"));
        assert!(head_complete(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"));
        // Not a request line pingora would escape: handed over for its 400.
        assert!(head_complete(b"GET /\r\n"));
        assert!(head_complete(b"\x00\x01 / HTTP/1.1\r\n"));
        assert!(looks_like_request_line(b"GET /a b HTTP/1.1\r\n"));
        assert!(!looks_like_request_line(b"GET  HTTP/1.1\r\n"));
        // A malformed header is handed over at once, for pingora's 400.
        assert!(head_complete(b"GET / HTTP/1.1\r\nBad Name: x\r\n"));
    }
}
