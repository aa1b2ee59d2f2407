//! When a request whose tunnel stream broke may be sent again.
//!
//! pingora's default retries a request whose *reused* upstream connection
//! closes before the response. Over a tunnel that close usually means the
//! agent died after the request reached it, possibly after the local
//! service acted on it, so the default would replay writes. The rules here
//! are those of nginx's `proxy_next_upstream` (`error`, without
//! `non_idempotent`), stated for our streams:
//!
//! - **stale**: the stream was already closed when the request head was
//!   written (the write itself failed). Nothing of the request left the
//!   gateway, so any method may go again, at most [`MAX_STALE_RETRIES`]
//!   times.
//! - **lost**: the stream broke after the head was written and before any
//!   response byte reached the caller. Only a *safe* method (GET, HEAD,
//!   OPTIONS, TRACE) whose body is still held whole is sent again, once,
//!   to another agent of the tunnel when there is one. When there is none
//!   but the same agent's tunnel connection is still up, only the stream
//!   closed (its local service ended a kept-alive connection as the request
//!   arrived, an ordinary race): the request goes once more to that agent.
//!   Everything else ends in 502 naming the agent.
//!
//! A request sent as an HTTP/2 stream of its own (every request but an
//! upgrade) adds one case HTTP/2 makes certain: a stream the agent did not
//! take (`REFUSED_STREAM`, a `GOAWAY` below it, a connection gone before
//! the request left) was not processed, so any method goes to another
//! agent, at most [`MAX_STALE_RETRIES`] times (label `connect`).
//!
//! PUT and DELETE are idempotent in RFC 9110 and nginx retries them, but
//! not here: idempotent means the *state* ends the same, not that a replay
//! is harmless. The services behind tunnels (issue trackers, wikis, CI)
//! attach side effects to them (a new page version and a notification per
//! PUT, a webhook and an audit entry per DELETE), and a replayed DELETE
//! answers 404 where the first one succeeded, so the caller would be told
//! the opposite of what happened. The caller knows its API; it may retry.

use pingora_error::{Error, ErrorSource, ErrorType};

/// Most retries of one request for streams found stale before the write.
pub const MAX_STALE_RETRIES: u32 = 2;

/// Most retries of one request after a stream broke once the request was
/// written.
pub const MAX_LOST_RETRIES: u32 = 1;

/// Why a request is sent again: the label of the retries metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The pooled stream was closed before the request was written.
    Stale,
    /// The stream broke after the request was written; safe method only.
    AgentLost,
    /// Only the stream closed (its agent is still connected); safe method
    /// only, to the same agent.
    StreamClosed,
    /// The tunnel stream could not be opened (nothing was sent).
    Connect,
}

impl RetryReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::Stale => "stale",
            RetryReason::AgentLost => "agent_lost",
            RetryReason::StreamClosed => "stream_closed",
            RetryReason::Connect => "connect",
        }
    }
}

/// Why a request lost with its stream is not sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRetried {
    /// The method is not safe: it may have acted already.
    UnsafeMethod,
    /// Part of the response already reached the caller.
    ResponseStarted,
    /// The request body was not kept whole, so it cannot be sent again.
    BodyNotKept,
    /// This request was already retried once after a loss.
    RetriedOnce,
    /// No other agent of the tunnel is there to take it.
    NoOtherAgent,
}

impl NotRetried {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            NotRetried::UnsafeMethod => "unsafe_method",
            NotRetried::ResponseStarted => "response_started",
            NotRetried::BodyNotKept => "body_not_kept",
            NotRetried::RetriedOnce => "retried_once",
            NotRetried::NoOtherAgent => "no_other_agent",
        }
    }

    /// Why, for the caller's 502.
    pub fn explain(self, method: &str) -> String {
        match self {
            NotRetried::UnsafeMethod => {
                format!("a {method} request may have taken effect, so it is not sent again")
            }
            NotRetried::ResponseStarted => "the response had already started".into(),
            NotRetried::BodyNotKept => "its body was too large to send again".into(),
            NotRetried::RetriedOnce => "it had already been retried once".into(),
            NotRetried::NoOtherAgent => "no other agent of the tunnel could take it".into(),
        }
    }
}

/// What to do with a request whose attempt failed after the stream was
/// obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it again.
    Retry(RetryReason),
    /// The stream broke after the request was written: answer 502.
    Lost(NotRetried),
    /// Another failure (a timeout, an invalid response): no retry, the
    /// usual status mapping applies.
    Other,
}

/// What is known about a failed attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub error: &'a Error,
    pub method: &'a http::Method,
    /// The response header was written to the caller.
    pub response_started: bool,
    /// pingora's retry buffer overflowed: the body cannot be replayed.
    pub body_truncated: bool,
    /// Retries of this request so far, by kind.
    pub stale_retries: u32,
    pub lost_retries: u32,
    /// Another serving agent of the tunnel exists.
    pub other_agent: bool,
    /// The failed attempt's own agent is still connected and serving.
    pub same_agent_serving: bool,
}

/// Decides whether to retry; see the module doc for the rules.
pub fn decide(a: &Attempt<'_>) -> Decision {
    if a.response_started {
        return if stream_broke(a.error) {
            Decision::Lost(NotRetried::ResponseStarted)
        } else {
            Decision::Other
        };
    }
    if is_stale(a.error) {
        if a.body_truncated || a.stale_retries >= MAX_STALE_RETRIES {
            return Decision::Other;
        }
        return Decision::Retry(RetryReason::Stale);
    }
    if !stream_broke(a.error) {
        return Decision::Other;
    }
    let why_not = if !is_safe(a.method) {
        Some(NotRetried::UnsafeMethod)
    } else if a.body_truncated {
        Some(NotRetried::BodyNotKept)
    } else if a.lost_retries >= MAX_LOST_RETRIES {
        Some(NotRetried::RetriedOnce)
    } else if !a.other_agent && !a.same_agent_serving {
        Some(NotRetried::NoOtherAgent)
    } else {
        None
    };
    match why_not {
        Some(n) => Decision::Lost(n),
        None if a.other_agent => Decision::Retry(RetryReason::AgentLost),
        None => Decision::Retry(RetryReason::StreamClosed),
    }
}

/// RFC 9110 §9.2.1 safe methods: the only ones replayed after delivery.
pub fn is_safe(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

/// The request head could not be written: the stream was closed before
/// this request, so nothing of it was delivered. pingora 0.9.1's HTTP/1
/// client names the step in the error's context (`write_request_header`);
/// a partial write to a closed Unix socket stays in a buffer nobody reads.
pub fn is_stale(e: &Error) -> bool {
    *e.esource() == ErrorSource::Upstream
        && *e.etype() == ErrorType::WriteError
        && chain(e).any(|e| {
            e.context.as_ref().is_some_and(|c| {
                let c = c.as_str();
                c.starts_with("while writing request headers")
                    || c.starts_with("flushing request header")
            })
        })
}

/// The tunnel stream closed or failed (as opposed to a timeout, or an
/// invalid response from the local service, which the agent reports as
/// 502 itself). Errors of the caller's side never count.
fn stream_broke(e: &Error) -> bool {
    *e.esource() == ErrorSource::Upstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

/// The error and the pingora errors it was caused by, outermost first.
fn chain(e: &Error) -> impl Iterator<Item = &Error> {
    std::iter::successors(Some(e), |e| {
        e.cause
            .as_ref()
            .and_then(|c| c.downcast_ref::<Box<Error>>())
            .map(|b| &**b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn attempt<'a>(error: &'a Error, method: &'a Method) -> Attempt<'a> {
        Attempt {
            error,
            method,
            response_started: false,
            body_truncated: false,
            stale_retries: 0,
            lost_retries: 0,
            other_agent: true,
            same_agent_serving: false,
        }
    }

    fn closed_before_response() -> Box<Error> {
        Error::explain(
            ErrorType::ConnectionClosed,
            "while reading response headers, bytes already read: 0",
        )
        .into_up()
    }

    fn head_write_failed() -> Box<Error> {
        Error::because(
            ErrorType::WriteError,
            "while writing request headers",
            std::io::Error::from(std::io::ErrorKind::BrokenPipe),
        )
        .into_up()
    }

    #[test]
    fn a_safe_request_lost_with_its_agent_is_retried_once_elsewhere() {
        let e = closed_before_response();
        let a = attempt(&e, &Method::GET);
        assert_eq!(decide(&a), Decision::Retry(RetryReason::AgentLost));
        let again = Attempt {
            lost_retries: 1,
            ..a
        };
        assert_eq!(decide(&again), Decision::Lost(NotRetried::RetriedOnce));
        let alone = Attempt {
            other_agent: false,
            same_agent_serving: false,
            ..a
        };
        assert_eq!(decide(&alone), Decision::Lost(NotRetried::NoOtherAgent));
        // Alone, but still connected: only the stream closed.
        let stream_only = Attempt {
            same_agent_serving: true,
            ..alone
        };
        assert_eq!(
            decide(&stream_only),
            Decision::Retry(RetryReason::StreamClosed)
        );
        let post = Attempt {
            method: &Method::POST,
            ..stream_only
        };
        assert_eq!(decide(&post), Decision::Lost(NotRetried::UnsafeMethod));
    }

    #[test]
    fn a_delivered_write_is_never_replayed() {
        let e = closed_before_response();
        for m in [
            Method::POST,
            Method::PATCH,
            Method::PUT,
            Method::DELETE,
            Method::from_bytes(b"LOCK").unwrap(),
        ] {
            assert_eq!(
                decide(&attempt(&e, &m)),
                Decision::Lost(NotRetried::UnsafeMethod),
                "{m}"
            );
        }
        let reset =
            Error::explain(ErrorType::ReadError, "while reading response headers").into_up();
        assert_eq!(
            decide(&attempt(&reset, &Method::POST)),
            Decision::Lost(NotRetried::UnsafeMethod)
        );
    }

    #[test]
    fn a_stale_stream_may_be_retried_for_any_method_a_few_times() {
        let e = head_write_failed();
        let a = attempt(&e, &Method::POST);
        assert_eq!(decide(&a), Decision::Retry(RetryReason::Stale));
        let exhausted = Attempt {
            stale_retries: MAX_STALE_RETRIES,
            ..a
        };
        assert_eq!(decide(&exhausted), Decision::Other);
        // A body write failing means the head went out: not stale.
        let body_write = Error::explain(ErrorType::WriteError, "while writing body").into_up();
        assert_eq!(
            decide(&attempt(&body_write, &Method::POST)),
            Decision::Lost(NotRetried::UnsafeMethod)
        );
    }

    #[test]
    fn nothing_is_retried_once_the_response_started() {
        let e = closed_before_response();
        let a = Attempt {
            response_started: true,
            ..attempt(&e, &Method::GET)
        };
        assert_eq!(decide(&a), Decision::Lost(NotRetried::ResponseStarted));
        let stale = head_write_failed();
        let b = Attempt {
            response_started: true,
            ..attempt(&stale, &Method::GET)
        };
        assert_eq!(decide(&b), Decision::Lost(NotRetried::ResponseStarted));
    }

    #[test]
    fn a_body_not_kept_whole_is_not_replayed() {
        let e = closed_before_response();
        let a = Attempt {
            body_truncated: true,
            ..attempt(&e, &Method::GET)
        };
        assert_eq!(decide(&a), Decision::Lost(NotRetried::BodyNotKept));
    }

    #[test]
    fn the_caller_going_away_is_no_loss() {
        let e = Error::explain(ErrorType::ConnectionClosed, "caller left").into_down();
        assert_eq!(decide(&attempt(&e, &Method::GET)), Decision::Other);
    }

    #[test]
    fn a_stale_write_is_recognised_under_more_context() {
        let e = head_write_failed().more_context("Peer: tunnel");
        assert_eq!(
            decide(&attempt(&e, &Method::POST)),
            Decision::Retry(RetryReason::Stale)
        );
    }

    #[test]
    fn timeouts_and_bad_responses_keep_their_own_status() {
        for t in [
            ErrorType::ReadTimedout,
            ErrorType::WriteTimedout,
            ErrorType::InvalidHTTPHeader,
        ] {
            let e = Error::explain(t, "x").into_up();
            assert_eq!(decide(&attempt(&e, &Method::GET)), Decision::Other);
        }
    }
}
