//! A local service on plain TCP that answers every request with the exact
//! bytes of its head (request line and headers), so a test can compare
//! what reached the service with what the caller sent, byte for byte.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{Stats, Upstream};

/// Starts the raw service.
pub async fn raw() -> Upstream {
    Upstream::spawn("raw", serve).await
}

async fn serve(mut stream: TcpStream, stats: Arc<Stats>) {
    let mut buf = Vec::new();
    loop {
        let Some(head_len) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let head: Vec<u8> = buf.drain(..head_len).collect();
        stats.requests.add(1);
        stats.heads.lock().unwrap().push(head.clone());
        if skip_body(&mut stream, &mut buf, &head).await.is_none() {
            return;
        }
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nX-Answered-By: raw\r\nX-lower-Then-UPPER: 1\r\ncontent-length: {}\r\n\r\n",
            head.len()
        )
        .into_bytes();
        answer.extend_from_slice(&head);
        let close = String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .lines()
            .any(|l| l.starts_with("connection:") && l.contains("close"));
        if stream.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}

/// Reads until `buf` holds a full head; returns its length (with CRLFCRLF).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            return Some(end + 4);
        }
        if !read_more(stream, buf).await {
            return None;
        }
    }
}

/// Consumes the request body (Content-Length or chunked) from the stream.
async fn skip_body(stream: &mut TcpStream, buf: &mut Vec<u8>, head: &[u8]) -> Option<()> {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let header = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        // Good enough for tests: the body ends at the last-chunk marker.
        loop {
            if let Some(end) = find(buf, b"0\r\n\r\n") {
                buf.drain(..end + 5);
                return Some(());
            }
            if !read_more(stream, buf).await {
                return None;
            }
        }
    }
    let len: usize = header("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < len {
        if !read_more(stream, buf).await {
            return None;
        }
    }
    buf.drain(..len);
    Some(())
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Position of `needle` in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
