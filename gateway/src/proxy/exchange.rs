//! Every request but a WebSocket upgrade as one HTTP/2 stream on the
//! agent's connection (`protocol::exchange`), written from the caller's
//! task: no HTTP/1.1 between the gateway and the agent, no pool of tunnel
//! streams, no proxy loop of pingora's in between. The caller's side stays
//! pingora's (parsing, limits, keep-alive); errors end in `fail_to_proxy`
//! like every other failure, and retries follow [`crate::retry`].
//!
//! HTTP/2 tells the gateway when the agent did not take a stream at all
//! (`REFUSED_STREAM`, a `GOAWAY` below it, a connection gone before the
//! request left): any method may then go to another agent. A stream that
//! breaks after the agent took it is a lost request (safe methods only).

use std::time::Duration;

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Version};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};
use protocol::exchange::{
    cased_fields, put_fields, send_data, send_end, LOCAL_ERROR_HEADER, LOCAL_TIMEOUT, NAMES_HEADER,
    POOL_HEADER, TARGET_HEADER,
};
use tokio::time::Instant;

use super::{set_traceparent, Ctx, TunnelProxy};
use crate::connector::OPEN_TIMEOUT;
use crate::registry::AgentConn;
use crate::retry::{RetryReason, MAX_STALE_RETRIES};

/// The most request body kept to send again after a failed attempt (as
/// pingora's retry buffer): a larger body cannot be retried.
const RETRY_BODY_LIMIT: usize = 64 << 10;

/// The request body read so far, kept while small enough to send again.
#[derive(Default)]
struct Kept {
    chunks: Vec<Bytes>,
    len: usize,
    truncated: bool,
    /// The caller's body has been read to its end.
    done: bool,
}

impl Kept {
    fn keep(&mut self, data: &Bytes) {
        if self.truncated {
            return;
        }
        self.len += data.len();
        if self.len > RETRY_BODY_LIMIT {
            self.truncated = true;
            self.chunks = Vec::new();
        } else {
            self.chunks.push(data.clone());
        }
    }
}

/// How an attempt failed.
enum Failed {
    /// The agent did not take the stream: nothing of the request was
    /// processed, any method may go again.
    NotTaken(Box<Error>),
    /// Anything else; [`crate::retry::decide`] judges it.
    Other(Box<Error>),
}

fn upstream(etype: ErrorType, why: String) -> Box<Error> {
    Error::explain(etype, why).into_up()
}

impl TunnelProxy {
    /// Sends the request through the tunnel and the response to the
    /// caller, retrying as [`crate::retry`] allows. `Ok(true)` once the
    /// whole response was written; `Ok(false)` when the agent picked speaks
    /// protocol 1 (every request a `CONNECT` stream): pingora's proxy loop
    /// then takes the request to it.
    pub(super) async fn exchange(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let first = self.pick_agent(ctx)?;
        if first.protocol < 2 {
            ctx.picked = Some(first);
            return Ok(false);
        }
        let mut first = Some(first);
        let mut head = session.req_header().clone();
        self.rewrite_head(session, &mut head, ctx)?;
        let mut kept = Kept {
            done: session.as_mut().is_body_empty() || session.as_mut().is_body_done(),
            ..Kept::default()
        };
        // A form body the policy chain has read already is in pingora's
        // retry buffer.
        if let Some(read) = session.as_mut().get_retry_buffer() {
            kept.keep(&read);
        }
        if !kept.done && expects_continue(&head) {
            // The caller waits for a go-ahead before its body; the policy
            // chain has accepted the request, so give it here (the agent
            // writes the body as it comes, whatever the service answers).
            session.as_mut().write_continue_response().await?;
        }
        let mut last: Option<Box<Error>> = None;
        loop {
            let agent = match first.take() {
                Some(agent) => agent,
                None => {
                    let agent = self.pick_agent(ctx)?;
                    if agent.protocol < 2 {
                        // Part of the body may be read already: this
                        // request stays on request streams.
                        return Err(last.expect("a retry follows a failure"));
                    }
                    agent
                }
            };
            set_traceparent(&mut head, ctx)?;
            let failed = match self.attempt(session, ctx, &agent, &head, &mut kept).await {
                Ok(()) => return Ok(true),
                Err(f) => f,
            };
            let tunnel = ctx.tunnel.as_ref().map_or("?", |t| t.name.as_str());
            match failed {
                Failed::NotTaken(e) => {
                    if ctx.stale_retries >= MAX_STALE_RETRIES {
                        return Err(e);
                    }
                    ctx.stale_retries += 1;
                    ctx.avoid_agent = Some(agent.conn_id);
                    tracing::info!(%tunnel, agent = %agent.agent_name, trace_id = %ctx.trace_id, "the agent did not take the request ({e}); sending it to another");
                    crate::metrics::request_retried(RetryReason::Connect.label());
                    last = Some(e);
                }
                Failed::Other(e) => {
                    let method = session.req_header().method.clone();
                    // A response started (its head went out) is never retried.
                    let started = ctx.response_started;
                    if !self.judge_failure(&e, &method, started, kept.truncated, ctx) {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
    }

    /// One attempt on `agent`.
    async fn attempt(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        agent: &AgentConn,
        head: &RequestHeader,
        kept: &mut Kept,
    ) -> std::result::Result<(), Failed> {
        let who = || {
            format!(
                "tunnel `{}` agent `{}`",
                agent.tunnel.name, agent.agent_name
            )
        };
        let mut req = h2_request(head).map_err(Failed::Other)?;
        req.headers_mut()
            .insert(POOL_HEADER, HeaderValue::from(self.pool_key(ctx, agent)));
        let ready = tokio::time::timeout(OPEN_TIMEOUT, agent.sender().ready()).await;
        let mut sender = match ready {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Failed::NotTaken(upstream(
                    ErrorType::ConnectError,
                    format!("{}: tunnel connection is gone: {e}", who()),
                )))
            }
            Err(_) => {
                return Err(Failed::NotTaken(upstream(
                    ErrorType::ConnectError,
                    format!("{}: no stream could be opened in time", who()),
                )))
            }
        };
        let end = kept.done && kept.chunks.is_empty();
        let (resp, mut send) = sender.send_request(req, end).map_err(|e| {
            Failed::NotTaken(upstream(
                ErrorType::ConnectError,
                format!("{}: tunnel connection is gone: {e}", who()),
            ))
        })?;
        let timeout = ctx.live.upstream_timeout;
        let response = self
            .send_body(session, ctx, &mut send, resp, kept, !end, timeout)
            .await?;
        let response = response.map_err(|e| stream_failed(e, &who()))?;
        if let Some(why) = response.headers().get(LOCAL_ERROR_HEADER) {
            // The agent could not reach its local service: nothing was sent
            // to it, and another agent would find the same service.
            let (etype, what) = if why.as_bytes() == LOCAL_TIMEOUT.as_bytes() {
                (
                    ErrorType::ConnectTimedout,
                    "timed out opening a tunnel stream",
                )
            } else {
                (
                    ErrorType::ConnectRefused,
                    "agent could not reach its local service",
                )
            };
            return Err(Failed::Other(Error::explain(
                etype,
                format!("{}: {what}", who()),
            )));
        }
        self.send_response(session, ctx, response, timeout, &who)
            .await
            .map_err(Failed::Other)
    }

    /// Streams the caller's body into the stream (first what a previous
    /// attempt kept) while waiting for the response head.
    #[allow(clippy::too_many_arguments)]
    async fn send_body(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        send: &mut SendStream<Bytes>,
        resp: ResponseFuture,
        kept: &mut Kept,
        mut open: bool,
        timeout: Duration,
    ) -> std::result::Result<std::result::Result<Response<RecvStream>, h2::Error>, Failed> {
        let write_failed = |e: h2::Error| -> Box<Error> {
            Error::because(ErrorType::WriteError, "sending the request body", e).into_up()
        };
        if open {
            for chunk in &kept.chunks {
                if let Err(e) = send_data(send, chunk.clone(), false).await {
                    return Err(Failed::Other(write_failed(e)));
                }
            }
            if kept.done {
                send_end(send).map_err(|e| Failed::Other(write_failed(e)))?;
                open = false;
            }
        }
        tokio::pin!(resp);
        let mut deadline = Instant::now() + timeout;
        loop {
            tokio::select! {
                r = &mut resp => return Ok(r),
                chunk = session.read_request_body(), if open => {
                    let chunk = chunk.map_err(Failed::Other)?;
                    let mut body = chunk;
                    let end = body.is_none();
                    self.request_body_filter(session, &mut body, end, ctx)
                        .await
                        .map_err(Failed::Other)?;
                    match body {
                        Some(data) => {
                            kept.keep(&data);
                            let sent = tokio::time::timeout(timeout, send_data(send, data, false)).await;
                            match sent {
                                Ok(Ok(())) => {}
                                // The agent stopped the upload (its service
                                // answered early): its answer decides.
                                Ok(Err(_)) => open = false,
                                Err(_) => {
                                    return Err(Failed::Other(upstream(
                                        ErrorType::WriteTimedout,
                                        "the tunnel stream took no body in time".into(),
                                    )))
                                }
                            }
                        }
                        None => {
                            kept.done = true;
                            open = false;
                            if send_end(send).is_err() {
                                // As above: the answer decides.
                            }
                        }
                    }
                    deadline = Instant::now() + timeout;
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Failed::Other(upstream(
                        ErrorType::ReadTimedout,
                        "no response head in time".into(),
                    )));
                }
            }
        }
    }

    /// Writes the agent's response to the caller, streaming its body.
    async fn send_response(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        response: Response<RecvStream>,
        timeout: Duration,
        who: &(dyn Fn() -> String + Sync),
    ) -> Result<()> {
        let (parts, mut body) = response.into_parts();
        let end = body.is_end_stream();
        let out = response_head(
            parts.status,
            parts.headers,
            end,
            session.req_header().version,
            &session.req_header().method,
        )?;
        ctx.response_started = true;
        session.write_response_header(Box::new(out), end).await?;
        if end {
            return Ok(());
        }
        loop {
            let next = tokio::time::timeout(timeout, body.data()).await;
            match next {
                Ok(Some(Ok(data))) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    let end = body.is_end_stream();
                    session.write_response_body(Some(data), end).await?;
                    if end {
                        return Ok(());
                    }
                }
                Ok(None) => return session.write_response_body(None, true).await,
                Ok(Some(Err(e))) => {
                    return Err(Error::because(
                        ErrorType::ReadError,
                        format!("{}: the response body broke off", who()),
                        e,
                    )
                    .into_up())
                }
                Err(_) => {
                    return Err(upstream(
                        ErrorType::ReadTimedout,
                        format!("{}: the response body stalled", who()),
                    ))
                }
            }
        }
    }
}

/// The caller sent `Expect: 100-continue`.
fn expects_continue(head: &RequestHeader) -> bool {
    head.headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// A failed response future: not taken by the agent, or broken after.
fn stream_failed(e: h2::Error, who: &str) -> Failed {
    let not_taken =
        e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote());
    if not_taken {
        return Failed::NotTaken(upstream(
            ErrorType::ConnectError,
            format!("{who}: the agent did not take the stream: {e}"),
        ));
    }
    Failed::Other(
        Error::because(
            ErrorType::ConnectionClosed,
            format!("{who}: tunnel stream broke before the response"),
            e,
        )
        .into_up(),
    )
}

/// The request as HTTP/2: the target in `:path` when it fits byte for
/// byte (else in [`TARGET_HEADER`]), the fields in order, their names'
/// case in [`NAMES_HEADER`] when it is not all lower-case.
fn h2_request(head: &RequestHeader) -> Result<Request<()>> {
    let raw = head.raw_path();
    let fits = raw.starts_with(b"/")
        && http::uri::PathAndQuery::try_from(raw).is_ok_and(|p| p.as_str().as_bytes() == raw);
    let path = if fits {
        http::uri::PathAndQuery::try_from(raw).expect("checked")
    } else {
        http::uri::PathAndQuery::from_static("/")
    };
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(protocol::STREAM_AUTHORITY)
        .path_and_query(path)
        .build()
        .map_err(|e| Error::because(ErrorType::InternalError, "tunnel request", e))?;
    let mut req = Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    let fields: Box<dyn Iterator<Item = (&[u8], &HeaderValue)>> = if head.has_case() {
        Box::new(head.case_header_iter().map(|(n, v)| (n.as_slice(), v)))
    } else {
        Box::new(head.headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v)))
    };
    put_fields(req.headers_mut(), fields)
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "header name", e))?;
    let headers = req.headers_mut();
    if !fits {
        let target = HeaderValue::from_bytes(raw)
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "request target", e))?;
        headers.insert(TARGET_HEADER, target);
    }
    Ok(req)
}

/// The caller's response head from the agent's: names as the service
/// wrote them; for an HTTP/1.1 caller, a body of unknown length chunked.
fn response_head(
    status: http::StatusCode,
    mut headers: HeaderMap,
    end: bool,
    version: Version,
    method: &Method,
) -> Result<ResponseHeader> {
    let names = headers.remove(NAMES_HEADER);
    let mut out = ResponseHeader::build(status, Some(headers.len() + 1))?;
    for (name, value) in cased_fields(&headers, names.as_ref()) {
        out.append_header(Bytes::copy_from_slice(name), value.clone())?;
    }
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    if !end
        && !bodiless
        && version == Version::HTTP_11
        && !headers.contains_key(header::CONTENT_LENGTH)
    {
        out.append_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(path: &[u8], fields: &[(&str, &str)]) -> RequestHeader {
        let mut h = RequestHeader::build("GET", path, None).unwrap();
        for (n, v) in fields {
            h.append_header(n.to_string(), *v).unwrap();
        }
        h
    }

    #[test]
    fn an_odd_target_travels_byte_for_byte() {
        // Not UTF-8: pingora keeps such a target as raw bytes, which
        // `:path` cannot carry.
        let req = h2_request(&head(b"/caf\xe9?q=\xff&r=%zz", &[])).unwrap();
        assert_eq!(
            req.headers().get(TARGET_HEADER).unwrap().as_bytes(),
            b"/caf\xe9?q=\xff&r=%zz"
        );
        let plain = h2_request(&head(b"/p?q=1&r=%20", &[])).unwrap();
        assert_eq!(
            plain.uri().path_and_query().unwrap().as_str(),
            "/p?q=1&r=%20"
        );
        assert!(plain.headers().get(TARGET_HEADER).is_none());
    }

    #[test]
    fn names_keep_their_case_and_connection_fields_stay_behind() {
        let req = h2_request(&head(
            b"/",
            &[
                ("Host", "wiki.test"),
                ("Connection", "keep-alive"),
                ("X-Request-ID", "7"),
                ("authorization", "OAuth x"),
            ],
        ))
        .unwrap();
        assert!(req.headers().get("connection").is_none());
        assert_eq!(
            req.headers().get(NAMES_HEADER).unwrap(),
            "Host,X-Request-ID,authorization"
        );
        let all_lower = h2_request(&head(b"/", &[("host", "a")])).unwrap();
        assert!(all_lower.headers().get(NAMES_HEADER).is_none());
    }

    #[test]
    fn a_body_of_unknown_length_is_chunked_for_http11_callers_only() {
        let h = HeaderMap::new();
        let ok = http::StatusCode::OK;
        let chunked = |r: &ResponseHeader| r.headers.get(header::TRANSFER_ENCODING).is_some();
        assert!(chunked(
            &response_head(ok, h.clone(), false, Version::HTTP_11, &Method::GET).unwrap()
        ));
        assert!(!chunked(
            &response_head(ok, h.clone(), false, Version::HTTP_10, &Method::GET).unwrap()
        ));
        assert!(!chunked(
            &response_head(ok, h.clone(), true, Version::HTTP_11, &Method::GET).unwrap()
        ));
        assert!(!chunked(
            &response_head(ok, h, false, Version::HTTP_11, &Method::HEAD).unwrap()
        ));
    }
}
