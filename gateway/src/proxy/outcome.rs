//! What a caller is answered when the gateway answers itself: every status
//! the gateway chooses is decided here, in [`Outcome::respond`], and
//! nowhere else. The README's table "What a caller is answered" is this
//! function's table; a test below reads the README and fails when the two
//! disagree.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use telemetry::attr;

use super::Ctx;
use crate::plugins::{Denial, Failure, WitHeader};
use crate::retry::NotRetried;

/// Seconds a caller is told to wait when the tunnel has no agent or the
/// store cannot be read.
const RETRY_AFTER_SECS: u64 = 5;

/// Why the gateway answers a request itself instead of (or after failing
/// at) forwarding it: one variant per row of the README's table.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Framing that could smuggle a request, or a Host, target or path the
    /// gateway will not forward; also a form body that does not match its
    /// `Content-Length`.
    BadRequest(String),
    /// The header block is over `max_header_bytes`.
    HeadersTooLarge,
    /// No route for the Host and path.
    NoRoute { host: String },
    /// The source sent too many unknown credentials lately.
    TooManyFailures { retry_after: Duration },
    /// No caller credential, or an unknown one.
    NoCredential,
    /// The callers' or tunnels' store could not be read.
    StoreUnavailable(&'static str),
    /// The route's tunnel does not exist (or, on the wildcard, belongs to
    /// another organization: it must look the same).
    NoTunnel { name: String },
    /// The body is over the route's limit: declared in `Content-Length`,
    /// or found while streaming it.
    BodyTooLarge { declared: Option<u64>, limit: u64 },
    /// A form body the plugins were to see did not arrive in time.
    BodyLate,
    /// The caller's organization is not the tunnel's.
    OtherOrganization,
    /// A plugin denied the request: its own status, headers and body.
    PluginDenied { plugin: Arc<str>, denial: Denial },
    /// A plugin could not decide.
    PluginFailed { plugin: Arc<str>, failure: Failure },
    /// The tunnel has no agent connected (or none left for a retry).
    NoAgent { tunnel: String },
    /// The agent was lost after the request reached it, and the request
    /// was not sent again (`why` says why, see [`crate::retry`]).
    Lost {
        agent: String,
        tunnel: String,
        why: String,
    },
    /// The agent could not reach its local service.
    ServiceUnreachable { tunnel: String },
    /// The local service did not accept the connection in time.
    ServiceNotAccepting { tunnel: String },
    /// The local service did not answer (or stopped answering) in time.
    ServiceTooSlow { tunnel: String },
    /// The tunnel failed while the request was in flight.
    TunnelFailed { tunnel: String },
    /// No agent of the tunnel here, and no instance holding one could be
    /// reached to relay to.
    RelayFailed { tunnel: String },
    /// pingora stopped the request with a status of its own.
    Status(u16),
    /// The caller sent something that could not be read as HTTP.
    CallerError,
    /// The caller went away: nobody to answer.
    CallerGone,
    /// A bug: nothing the caller did.
    Internal,
}

/// The body of an answer.
pub(super) enum Body {
    /// The gateway's own words (a line of plain text).
    Text(String),
    /// A plugin's denial: its headers and body, as it wrote them.
    Plugin {
        headers: Vec<WitHeader>,
        body: Vec<u8>,
    },
}

/// A response the gateway writes itself.
pub(super) struct Answer {
    pub status: u16,
    pub body: Body,
    /// Close the connection after answering.
    pub close: bool,
    /// Extra headers (`Retry-After`, `Proxy-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
    /// Why, for the log line and the request's span: the body for the
    /// gateway's own answers, the plugin's reason for a denial.
    pub reason: String,
}

impl Outcome {
    /// A 400 for a request the gateway will not forward as it is.
    pub(super) fn bad_request(why: &str) -> Self {
        Outcome::BadRequest(why.to_string())
    }

    /// The error table: status, body, connection and headers of each
    /// outcome; `None` when there is nobody left to answer.
    pub(super) fn respond(self) -> Option<Answer> {
        use Outcome::*;
        let (status, text, close, headers): (u16, String, bool, Vec<(&'static str, String)>) =
            match self {
                BadRequest(why) => (400, format!("bad request: {why}"), true, vec![]),
                HeadersTooLarge => (431, "request header fields too large".into(), true, vec![]),
                NoRoute { host } => (404, format!("no route for host `{host}`"), false, vec![]),
                TooManyFailures { retry_after } => (
                    429,
                    "too many unknown caller credentials from this address; retry later".into(),
                    true,
                    vec![("retry-after", retry_after.as_secs().max(1).to_string())],
                ),
                NoCredential => (
                    401,
                    "missing or unknown caller credential (Proxy-Authorization: Bearer <token>)"
                        .into(),
                    false,
                    vec![(
                        "proxy-authenticate",
                        "Bearer realm=\"tunnel-gateway\"".into(),
                    )],
                ),
                StoreUnavailable(what) => (
                    503,
                    format!("{what} store unavailable"),
                    false,
                    vec![("retry-after", RETRY_AFTER_SECS.to_string())],
                ),
                NoTunnel { name } => (404, format!("no tunnel named `{name}`"), false, vec![]),
                BodyTooLarge {
                    declared: Some(len),
                    limit,
                } => (
                    413,
                    format!(
                        "request body of {len} bytes exceeds this route's limit of {limit} bytes"
                    ),
                    true,
                    vec![],
                ),
                BodyTooLarge {
                    declared: None,
                    limit,
                } => (
                    413,
                    format!("request body exceeds this route's limit of {limit} bytes"),
                    true,
                    vec![],
                ),
                BodyLate => (408, "request body not received in time".into(), true, vec![]),
                OtherOrganization => (
                    403,
                    "this caller's organization may not use this tunnel".into(),
                    false,
                    vec![],
                ),
                PluginDenied { denial, .. } => {
                    return Some(Answer {
                        status: denial.status,
                        body: Body::Plugin {
                            headers: denial.headers,
                            body: denial.body,
                        },
                        close: false,
                        headers: vec![],
                        reason: denial.reason,
                    })
                }
                PluginFailed { plugin, failure } => match failure {
                    Failure::Trap(_) => {
                        (500, format!("policy plugin `{plugin}` failed"), false, vec![])
                    }
                    Failure::Memory(_) => (
                        500,
                        format!("policy plugin `{plugin}` exceeded its memory limit"),
                        false,
                        vec![],
                    ),
                    Failure::Init(_) => (
                        500,
                        format!("policy plugin `{plugin}` refused its configuration"),
                        false,
                        vec![],
                    ),
                    Failure::Invalid(_) => (
                        500,
                        format!("policy plugin `{plugin}` returned an invalid decision"),
                        false,
                        vec![],
                    ),
                    Failure::Deadline(d) => (
                        503,
                        format!(
                            "policy plugin `{plugin}` did not decide within {} ms",
                            d.as_millis()
                        ),
                        false,
                        vec![],
                    ),
                    Failure::Busy => (
                        503,
                        "policy sandboxes are all busy; retry shortly".into(),
                        false,
                        vec![("retry-after", "1".into())],
                    ),
                },
                NoAgent { tunnel } => (
                    503,
                    format!("no agent is connected for tunnel `{tunnel}`; retry shortly"),
                    true,
                    vec![("retry-after", RETRY_AFTER_SECS.to_string())],
                ),
                Lost { agent, tunnel, why } => (
                    502,
                    format!(
                        "agent `{agent}` of tunnel `{tunnel}` was lost after the request reached it; {why}"
                    ),
                    true,
                    vec![],
                ),
                ServiceUnreachable { tunnel } => (
                    502,
                    format!("the agent of tunnel `{tunnel}` could not reach its local service"),
                    true,
                    vec![],
                ),
                ServiceNotAccepting { tunnel } => (
                    504,
                    format!("the local service behind tunnel `{tunnel}` did not accept in time"),
                    true,
                    vec![],
                ),
                ServiceTooSlow { tunnel } => (
                    504,
                    format!("the local service behind tunnel `{tunnel}` did not answer in time"),
                    true,
                    vec![],
                ),
                TunnelFailed { tunnel } => (
                    502,
                    format!("tunnel `{tunnel}` failed while the request was in flight"),
                    true,
                    vec![],
                ),
                RelayFailed { tunnel } => (
                    502,
                    format!(
                        "no gateway instance holding an agent of tunnel `{tunnel}` could be reached"
                    ),
                    true,
                    vec![],
                ),
                Status(code) => (code, "request failed".into(), true, vec![]),
                CallerError => (400, "bad request".into(), true, vec![]),
                CallerGone => return None,
                Internal => (500, "internal gateway error".into(), true, vec![]),
            };
        Some(Answer {
            status,
            reason: text.clone(),
            body: Body::Text(text),
            close,
            headers,
        })
    }

    /// The outcome of a request pingora or the tunnel failed: what
    /// `fail_to_proxy` answers.
    pub(super) fn of_error(e: &Error, ctx: &Ctx, method: &str) -> Outcome {
        let tunnel = ctx.tunnel.as_ref().map_or("?", |t| t.name.as_str());
        // A request lost with its agent is 502, never the 503 of a tunnel
        // without agents, even when the retry found no agent left.
        let lost = ctx.lost.as_ref().and_then(|l| {
            let why = match (l.not_retried, e.etype()) {
                (Some(n), _) => n.explain(method),
                (None, ErrorType::HTTPStatus(503)) if ctx.no_agent => {
                    NotRetried::NoOtherAgent.explain(method)
                }
                _ => return None,
            };
            Some(Outcome::Lost {
                agent: l.agent.clone(),
                tunnel: tunnel.to_string(),
                why,
            })
        });
        if let Some(lost) = lost {
            return lost;
        }
        let tunnel = tunnel.to_string();
        // The relay's connection or TLS handshake failed (nothing sent).
        if ctx.relay_to.is_some()
            && e.esource() == &ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectTimedout
                    | ErrorType::ConnectRefused
                    | ErrorType::ConnectError
                    | ErrorType::ConnectNoRoute
                    | ErrorType::TLSHandshakeFailure
                    | ErrorType::TLSHandshakeTimedout
                    | ErrorType::InvalidCert
                    | ErrorType::HandshakeError
            )
        {
            return Outcome::RelayFailed { tunnel };
        }
        match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(503), _) if ctx.no_agent => Outcome::NoAgent { tunnel },
            (ErrorType::HTTPStatus(413), _) => Outcome::BodyTooLarge {
                declared: None,
                limit: ctx.body_limit,
            },
            (ErrorType::HTTPStatus(c), _) => Outcome::Status(*c),
            (ErrorType::ReadTimedout | ErrorType::WriteTimedout, ErrorSource::Upstream) => {
                Outcome::ServiceTooSlow { tunnel }
            }
            (ErrorType::ConnectTimedout, _) => Outcome::ServiceNotAccepting { tunnel },
            (ErrorType::ConnectRefused, _) => Outcome::ServiceUnreachable { tunnel },
            (_, ErrorSource::Upstream) => Outcome::TunnelFailed { tunnel },
            (
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => Outcome::CallerGone,
            (_, ErrorSource::Downstream) => Outcome::CallerError,
            _ => Outcome::Internal,
        }
    }

    /// The plugin that denied or failed, for the request's span.
    fn plugin(&self) -> Option<&Arc<str>> {
        match self {
            Outcome::PluginDenied { plugin, .. } | Outcome::PluginFailed { plugin, .. } => {
                Some(plugin)
            }
            _ => None,
        }
    }

    /// Answers a request refused before it entered a tunnel, with the
    /// refusal on the log and on the request's span.
    pub(super) async fn refuse(self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let plugin = self.plugin().cloned();
        // The recent refusals never show what the caller wrote: not the
        // Host of an unrouted request, nor a wildcard tunnel name taken
        // from it.
        let shown = match &self {
            Outcome::NoRoute { .. } => Some("no route for the Host and path"),
            Outcome::NoTunnel { .. } => Some("the route's tunnel does not exist"),
            _ => None,
        };
        let Some(mut answer) = self.respond() else {
            return Ok(());
        };
        crate::activity::ACTIVITY.refused(crate::activity::Refusal {
            at: 0,
            route: ctx.route.as_deref().map(str::to_string),
            tunnel: ctx.tunnel.as_ref().map(|t| t.name.clone()),
            org: ctx.caller.as_ref().map(|c| c.org.clone()),
            status: answer.status,
            plugin: plugin.as_deref().map(str::to_string),
            reason: shown.map_or_else(|| answer.reason.clone(), str::to_string),
        });
        ctx.answered = Some(answer.reason.clone());
        // A body left unread would have to be drained before the
        // connection could serve another request: close instead.
        if !session.as_mut().is_body_done() {
            answer.close = true;
        }
        tracing::info!(client = ?session.client_addr(), status = answer.status, trace_id = %ctx.trace_id, "refused: {:?}", answer.reason);
        // Which plugin refused and why: its status and its reason (never
        // the request's credentials or signatures).
        if !ctx.span.is_disabled() {
            if let Some(p) = plugin {
                attr(&ctx.span, "policy.refused_by", p.to_string());
            }
            attr(&ctx.span, "refusal.reason", answer.reason.clone());
        }
        answer.write(session).await
    }
}

impl Answer {
    /// Writes the whole response.
    pub(super) async fn write(self, session: &mut Session) -> Result<()> {
        let (body, own_headers) = match self.body {
            Body::Text(text) => (Bytes::from(format!("{text}\n")), Vec::new()),
            Body::Plugin { headers, body } => (Bytes::from(body), headers),
        };
        let mut resp = ResponseHeader::build(
            self.status,
            Some(4 + self.headers.len() + own_headers.len()),
        )?;
        for h in &own_headers {
            // Names and values were checked by the plugin host.
            resp.append_header(h.name.clone(), h.value.as_slice())?;
        }
        let plugin_typed = own_headers.iter().any(|h| h.name == "content-type");
        if !plugin_typed && !body.is_empty() {
            resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
        }
        resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        for (name, value) in self.headers {
            resp.insert_header(name, value)?;
        }
        if self.close {
            resp.insert_header(header::CONNECTION, "close")?;
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One example of every outcome, with the situation its README row
    /// names.
    fn examples() -> Vec<(&'static str, Outcome)> {
        let t = || "wiki".to_string();
        let plugin: Arc<str> = Arc::from("authz");
        let failed = |failure| Outcome::PluginFailed {
            plugin: plugin.clone(),
            failure,
        };
        vec![
            (
                "framing that could smuggle a request; a bad Host, target or path; a form body that does not match its `Content-Length`",
                Outcome::BadRequest("two Host headers".into()),
            ),
            ("header fields over `max_header_bytes`", Outcome::HeadersTooLarge),
            ("no route for the Host and path", Outcome::NoRoute { host: "x.test".into() }),
            (
                "too many unknown credentials from the source (`callers.max_failures_per_minute`)",
                Outcome::TooManyFailures { retry_after: Duration::from_secs(30) },
            ),
            ("caller credential missing or unknown", Outcome::NoCredential),
            ("the store of callers or tunnels cannot be read", Outcome::StoreUnavailable("credential")),
            (
                "the route's tunnel does not exist (on the wildcard, also one of another organization)",
                Outcome::NoTunnel { name: t() },
            ),
            (
                "a body over the route's `max_body_bytes`, declared",
                Outcome::BodyTooLarge { declared: Some(10), limit: 5 },
            ),
            (
                "a body over the route's `max_body_bytes`, found while streaming it",
                Outcome::BodyTooLarge { declared: None, limit: 5 },
            ),
            (
                "a form body for the plugins not received within `upstream_timeout`",
                Outcome::BodyLate,
            ),
            (
                "a plugin denies",
                Outcome::PluginDenied {
                    plugin: plugin.clone(),
                    denial: Denial {
                        status: 451,
                        headers: vec![],
                        body: b"no".to_vec(),
                        reason: "rule".into(),
                    },
                },
            ),
            (
                "a plugin traps, grows past `max_memory_bytes`, refuses its configuration or returns an invalid decision",
                failed(Failure::Trap("unreachable".into())),
            ),
            (
                "a plugin traps, grows past `max_memory_bytes`, refuses its configuration or returns an invalid decision",
                failed(Failure::Memory(1)),
            ),
            (
                "a plugin traps, grows past `max_memory_bytes`, refuses its configuration or returns an invalid decision",
                failed(Failure::Init("no".into())),
            ),
            (
                "a plugin traps, grows past `max_memory_bytes`, refuses its configuration or returns an invalid decision",
                failed(Failure::Invalid("status 99".into())),
            ),
            ("a plugin runs past `call_timeout`", failed(Failure::Deadline(Duration::from_millis(50)))),
            ("every plugin sandbox is busy (`max_sandboxes`)", failed(Failure::Busy)),
            (
                "the caller's organization is not the tunnel's (and the route is not `cross_org`)",
                Outcome::OtherOrganization,
            ),
            ("no agent of the tunnel is connected", Outcome::NoAgent { tunnel: t() }),
            (
                "the agent was lost after the request reached it, and the request was not sent again",
                Outcome::Lost { agent: "a1".into(), tunnel: t(), why: "POST is not sent twice".into() },
            ),
            ("the agent cannot reach its local service", Outcome::ServiceUnreachable { tunnel: t() }),
            ("the local service does not accept in time", Outcome::ServiceNotAccepting { tunnel: t() }),
            (
                "the local service does not answer in time (`upstream_timeout`)",
                Outcome::ServiceTooSlow { tunnel: t() },
            ),
            ("the tunnel fails while the request is in flight", Outcome::TunnelFailed { tunnel: t() }),
            (
                "no agent of the tunnel here, and no gateway instance holding one can be reached (see Running several gateways)",
                Outcome::RelayFailed { tunnel: t() },
            ),
            ("pingora stops the request with a status of its own", Outcome::Status(502)),
            ("the caller sends something that is not HTTP", Outcome::CallerError),
            ("the caller goes away", Outcome::CallerGone),
            ("anything else (a bug)", Outcome::Internal),
        ]
    }

    /// The rows of the README's table "What a caller is answered":
    /// situation, status, connection, headers.
    fn readme_rows() -> Vec<[String; 4]> {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("### What a caller is answered")
            .expect("the README has the section `What a caller is answered`");
        readme[start..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|l| {
                let cells: Vec<String> = l
                    .trim_matches('|')
                    .split(" | ")
                    .map(|c| c.trim().to_string())
                    .collect();
                cells
                    .try_into()
                    .unwrap_or_else(|c| panic!("a row of 4 cells: {c:?}"))
            })
            .collect()
    }

    /// What the README's row must say for this answer.
    fn row_of(situation: &str, outcome: Outcome) -> [String; 4] {
        let plugin_status = matches!(outcome, Outcome::PluginDenied { .. });
        let status = match outcome {
            Outcome::PluginDenied { .. } => Some("the plugin's"),
            Outcome::Status(_) => Some("pingora's"),
            _ => None,
        };
        let Some(a) = outcome.respond() else {
            return [
                situation.into(),
                "none".into(),
                "closed".into(),
                String::new(),
            ];
        };
        let status = status.map_or_else(|| a.status.to_string(), str::to_string);
        let connection = if a.close { "closed" } else { "kept" };
        let mut headers: Vec<String> = a
            .headers
            .iter()
            .map(|(n, _)| match *n {
                "retry-after" => "`Retry-After`".to_string(),
                "proxy-authenticate" => "`Proxy-Authenticate`".to_string(),
                other => format!("`{other}`"),
            })
            .collect();
        if plugin_status {
            headers.push("the plugin's".into());
        }
        [
            situation.into(),
            status,
            connection.into(),
            headers.join(", "),
        ]
    }

    #[test]
    fn the_readme_table_is_what_respond_answers() {
        let rows = readme_rows();
        let mut expected: Vec<[String; 4]> = Vec::new();
        for (situation, outcome) in examples() {
            let row = row_of(situation, outcome);
            if !expected.contains(&row) {
                expected.push(row);
            }
        }
        for row in &expected {
            assert!(
                rows.contains(row),
                "the README's table lacks (or says otherwise than) this row:\n| {} |",
                row.join(" | ")
            );
        }
        for row in &rows {
            assert!(
                expected.contains(row),
                "the README's table has a row no outcome answers:\n| {} |",
                row.join(" | ")
            );
        }
    }

    #[test]
    fn a_denial_is_the_plugins_own_answer() {
        let a = Outcome::PluginDenied {
            plugin: Arc::from("authz"),
            denial: Denial {
                status: 451,
                headers: vec![WitHeader {
                    name: "x-why".into(),
                    value: b"legal".to_vec(),
                }],
                body: b"gone".to_vec(),
                reason: "rule 3".into(),
            },
        }
        .respond()
        .expect("answered");
        assert_eq!(
            (a.status, a.close, a.reason.as_str()),
            (451, false, "rule 3")
        );
        match a.body {
            Body::Plugin { headers, body } => {
                assert_eq!(headers.len(), 1);
                assert_eq!(body, b"gone");
            }
            Body::Text(t) => panic!("the gateway's words instead of the plugin's: {t}"),
        }
    }

    #[test]
    fn waiting_answers_say_how_long() {
        let secs = |o: Outcome| {
            o.respond()
                .expect("answered")
                .headers
                .into_iter()
                .find(|(n, _)| *n == "retry-after")
                .map(|(_, v)| v)
        };
        assert_eq!(
            secs(Outcome::NoAgent { tunnel: "t".into() }).as_deref(),
            Some("5")
        );
        assert_eq!(
            secs(Outcome::StoreUnavailable("tunnel")).as_deref(),
            Some("5")
        );
        assert_eq!(
            secs(Outcome::TooManyFailures {
                retry_after: Duration::from_millis(200)
            })
            .as_deref(),
            Some("1"),
            "never Retry-After: 0"
        );
        assert_eq!(
            secs(Outcome::TooManyFailures {
                retry_after: Duration::from_secs(42)
            })
            .as_deref(),
            Some("42")
        );
    }
}
