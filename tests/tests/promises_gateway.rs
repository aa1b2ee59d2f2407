//! Promises of the README about the gateway that no other story checked,
//! each an inline module with its own story:
//!
//! - [`trace_sampling`]: `telemetry.sampling_ratio` and
//!   `follow_incoming_sampling` decide which requests are recorded;
//! - [`replay_set`]: the plugins' replay set fails closed when full and
//!   keeps what it holds across reloads;
//! - [`handshake_refusals`]: agents' handshakes the gateway cannot take
//!   (a protocol version it does not speak, an oversized or malformed
//!   hello, names that are not valid, messages out of order, a silent
//!   agent, every pending slot taken) are closed without a verdict, counted
//!   and named in its log, and never look like a wrong key.

mod trace_sampling {
    //! Story: an operator keeps the volume of traces in hand with the
    //! gateway's `telemetry.sampling_ratio`, and decides with
    //! `follow_incoming_sampling` whether a caller's `traceparent` sampled flag
    //! counts (by default it does not: any caller could otherwise have every
    //! request recorded, or none). The agent follows the gateway's decision.
    //!
    //! What was recorded is read from a real OTLP collector after both
    //! processes stopped gracefully: each flushes what it queued before it
    //! exits, so "never exported" is checked once nothing more can come, not
    //! after a guessed wait. What was decided is also visible at once in the
    //! `traceparent` the local service receives (sampled flag `01` or `00`).

    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use sha2::{Digest as _, Sha256};
    use tests::otlp::{describe, Collector, ReceivedSpan};
    use tests::upstream::{self, Upstream};
    use tests::{Agent, AgentOptions, Caller, Gateway, GatewayOptions, Route};

    /// How long spans of a sampled request may take to reach the collector
    /// while the processes run (exports every 50 ms).
    const EXPORT_WAIT: Duration = Duration::from_secs(20);

    /// A gateway and its agent exporting to `collector` under the service
    /// names `<service>` and `<service>-agent`, the wiki behind them, and a
    /// caller.
    struct Traced {
        gateway: Gateway,
        agent: Agent,
        wiki: Upstream,
        caller: Caller,
        service: String,
    }

    /// `sampling` is the gateway's extra `[telemetry]` lines (ratio, follow).
    async fn traced(collector: &Collector, service: &str, sampling: &str) -> Traced {
        let gateway = Gateway::start(
            GatewayOptions::new()
                .with_route(Route::new("wiki.test", "wiki").plugin("org-check", ""))
                .extra_config(&format!(
                    "[telemetry]\nendpoint = \"{}\"\nprotocol = \"grpc\"\n\
                     export_interval = \"50ms\"\nservice_name = \"{service}\"\n{sampling}\n",
                    collector.grpc_endpoint()
                )),
        )
        .await;
        let tunnel = gateway.create_tunnel("acme", "wiki").await;
        let wiki = upstream::echo("wiki").await;
        // The agent's own settings are the defaults: it follows the gateway.
        let agent = Agent::connect(
            &gateway,
            &tunnel,
            wiki.addr(),
            AgentOptions::new().extra_config(&format!(
                "[telemetry]\nendpoint = \"{}\"\nprotocol = \"http/protobuf\"\n\
                 export_interval = \"50ms\"\nservice_name = \"{service}-agent\"\n",
                collector.http_endpoint()
            )),
        )
        .await;
        let caller = gateway.caller(&gateway.create_caller("acme").await);
        Traced {
            gateway,
            agent,
            wiki,
            caller,
            service: service.to_string(),
        }
    }

    impl Traced {
        /// Sends `GET path` with `traceparent` (when given); returns the trace
        /// id and sampled flag of the `traceparent` the local service got.
        async fn send(&self, path: &str, traceparent: Option<&str>) -> (String, String) {
            let mut call = self.caller.get("wiki.test", path);
            if let Some(tp) = traceparent {
                call = call.header("traceparent", tp);
            }
            let reply = call.send().await;
            let echo = reply.echo();
            let received = echo.header("traceparent").unwrap_or_else(|| {
                panic!("{path}: the local service got no traceparent: {echo:?}")
            });
            let parts: Vec<&str> = received.split('-').collect();
            assert_eq!(parts.len(), 4, "{path}: traceparent {received}");
            (parts[1].to_string(), parts[3].to_string())
        }

        /// Stops the agent (it drains, exits 0) and then the gateway (SIGTERM):
        /// both flush their queued spans on the way out, so once this returns
        /// the collector holds everything either will ever export.
        async fn stop(mut self) {
            let status = self.agent.terminate().await;
            assert_eq!(status.code(), Some(0), "{}", self.agent.logs());
            let status = self.gateway.terminate().await;
            assert!(status.success(), "{status}: {}", self.gateway.logs());
        }
    }

    /// A caller's `traceparent` for `trace_id` with `flags`.
    fn traceparent(trace_id: &str, flags: &str) -> String {
        format!("00-{trace_id}-00f067aa0ba902b7-{flags}")
    }

    /// A trace id drawn from `seed`: fixed for the test, spread like random ones.
    fn trace_id(seed: &str) -> String {
        hex::encode(&Sha256::digest(seed.as_bytes())[..16])
    }

    /// Spans of `service`, by trace id.
    fn by_trace<'a>(spans: &'a [ReceivedSpan], service: &str) -> BTreeMap<&'a str, Vec<&'a str>> {
        let mut traces: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for s in spans.iter().filter(|s| s.service == service) {
            traces
                .entry(s.trace_id.as_str())
                .or_default()
                .push(s.name.as_str());
        }
        traces
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_ratio_0_a_callers_sampled_flag_records_its_request_only_where_the_gateway_follows_it(
    ) {
        let collector = Collector::start().await;
        let following = traced(
            &collector,
            "gw-following",
            "sampling_ratio = 0.0\nfollow_incoming_sampling = true",
        )
        .await;
        // `follow_incoming_sampling` unset: the gateway's default (false).
        let deciding = traced(&collector, "gw-deciding", "sampling_ratio = 0.0").await;

        // The same three requests to each: no traceparent, an unsampled one,
        // a sampled one.
        let mut sampled = BTreeMap::new();
        let mut decisions = BTreeMap::new();
        for stack in [&following, &deciding] {
            let (_, flag) = stack.send("/no-traceparent", None).await;
            assert_eq!(
                flag, "00",
                "{}: ratio 0 records nothing of its own",
                stack.service
            );
            let unsampled = trace_id(&format!("{} unsampled", stack.service));
            let (id, flag) = stack
                .send("/unsampled", Some(&traceparent(&unsampled, "00")))
                .await;
            assert_eq!((id.as_str(), flag.as_str()), (unsampled.as_str(), "00"));
            let wanted = trace_id(&format!("{} sampled", stack.service));
            let (id, flag) = stack
                .send("/sampled", Some(&traceparent(&wanted, "01")))
                .await;
            assert_eq!(id, wanted, "the caller's trace is continued either way");
            decisions.insert(stack.service.clone(), flag);
            sampled.insert(stack.service.clone(), wanted);
        }
        assert_eq!(
            decisions["gw-following"], "01",
            "a gateway that follows callers records the sampled request"
        );
        assert_eq!(
            decisions["gw-deciding"], "00",
            "by default a caller's sampled flag does not make the gateway record its request"
        );

        // While they run, the followed request's spans arrive from both
        // processes: the export works in this configuration.
        let wanted = sampled["gw-following"].clone();
        collector
            .wait_for("the followed request's spans", EXPORT_WAIT, |spans| {
                let of = |svc: &str, name: &str| {
                    spans
                        .iter()
                        .any(|s| s.trace_id == wanted && s.service == svc && s.name == name)
                };
                of("gw-following", "request") && of("gw-following-agent", "tunnel request")
            })
            .await;

        following.stop().await;
        deciding.stop().await;
        let spans = collector.spans();
        for service in ["gw-following", "gw-following-agent"] {
            let traces = by_trace(&spans, service);
            assert_eq!(
                traces.keys().copied().collect::<Vec<_>>(),
                [wanted.as_str()],
                "{service} recorded exactly the request whose caller asked for it:\n{}",
                describe(&spans)
            );
        }
        for service in ["gw-deciding", "gw-deciding-agent"] {
            assert!(
                by_trace(&spans, service).is_empty(),
                "{service} recorded a request at ratio 0 because its caller asked:\n{}",
                describe(&spans)
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_ratio_1_every_request_is_recorded_whatever_its_caller_says() {
        let collector = Collector::start().await;
        let stack = traced(&collector, "gw-all", "sampling_ratio = 1.0").await;

        let mut sent = BTreeSet::new();
        for i in 0..12 {
            let given = trace_id(&format!("all {i}"));
            let traceparent = match i % 3 {
                0 => None,
                1 => Some(traceparent(&given, "00")),
                _ => Some(traceparent(&given, "01")),
            };
            let (id, flag) = stack
                .send(&format!("/all/{i}"), traceparent.as_deref())
                .await;
            assert_eq!(flag, "01", "request {i} ({traceparent:?}) was not recorded");
            if traceparent.is_some() {
                assert_eq!(id, given, "request {i} continues its caller's trace");
            }
            sent.insert(id);
        }
        assert_eq!(sent.len(), 12, "one trace per request");
        assert_eq!(stack.wiki.requests(), 12);

        stack.stop().await;
        let spans = collector.spans();
        for (service, span) in [("gw-all", "request"), ("gw-all-agent", "tunnel request")] {
            let traces = by_trace(&spans, service);
            let recorded: BTreeSet<String> = traces.keys().map(|t| t.to_string()).collect();
            assert_eq!(
                recorded,
                sent,
                "{service} recorded every request, nothing else:\n{}",
                describe(&spans)
            );
            for (trace, names) in &traces {
                assert_eq!(
                    names.iter().filter(|n| **n == span).count(),
                    1,
                    "{service}: trace {trace} has one `{span}` span: {names:?}"
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_ratio_one_half_the_trace_id_decides_and_always_the_same_way() {
        let collector = Collector::start().await;
        let stack = traced(&collector, "gw-half", "sampling_ratio = 0.5").await;

        // Each trace id twice, once flagged sampled and once not: the gateway
        // decides by the id alone, the same way both times.
        let mut recorded = BTreeSet::new();
        let mut skipped = BTreeSet::new();
        for i in 0..32 {
            let id = trace_id(&format!("half {i}"));
            let (_, first) = stack
                .send(&format!("/half/{i}/a"), Some(&traceparent(&id, "01")))
                .await;
            let (_, second) = stack
                .send(&format!("/half/{i}/b"), Some(&traceparent(&id, "00")))
                .await;
            assert_eq!(
                first, second,
                "trace {id}: the caller's flag changed the gateway's decision"
            );
            if first == "01" {
                recorded.insert(id);
            } else {
                skipped.insert(id);
            }
        }
        // About half of them (32 draws at 0.5: a count outside 4..=28 has odds
        // of about one in a million).
        assert!(
            (4..=28).contains(&recorded.len()),
            "{} of 32 traces recorded at ratio 0.5",
            recorded.len()
        );

        stack.stop().await;
        let spans = collector.spans();
        for (service, span) in [("gw-half", "request"), ("gw-half-agent", "tunnel request")] {
            let traces = by_trace(&spans, service);
            let got: BTreeSet<String> = traces.keys().map(|t| t.to_string()).collect();
            assert_eq!(
                got,
                recorded,
                "{service} exported exactly the traces it decided to record:\n{}",
                describe(&spans)
            );
            for (trace, names) in &traces {
                assert_eq!(
                    names.iter().filter(|n| **n == span).count(),
                    2,
                    "{service}: both requests of trace {trace} are in it: {names:?}"
                );
            }
        }
    }
}

mod replay_set {
    //! Story: the oauth1 plugin refuses a replayed nonce through the host's
    //! bounded replay set (`plugins.max_replay_keys`). When the set is full it
    //! fails closed: a fresh nonce is refused like a replay (401
    //! `oauth_problem=nonce_used`), never let through unchecked, and counted
    //! (`tunnel_gateway_plugin_replay_refusals_total{limit="set"}`). What the
    //! set holds is kept across a configuration reload and across a hot reload
    //! of the plugin file: a nonce seen before either is still refused after
    //! it, and a full set stays full.

    use sha2::{Digest as _, Sha256};
    use tests::upstream::{self, Upstream};
    use tests::{plugin_wasm, scrape, Agent, AgentOptions, Caller, Gateway, GatewayOptions, Reply};
    use tests::{Route, PATIENCE};

    /// Live keys the replay set holds.
    const KEYS: usize = 4;

    /// The oauth1 plugin without consumers: it checks the parameters, the
    /// timestamp window and the nonce (the service would check signatures).
    fn oauth1_config(window_secs: u64) -> String {
        format!(
            r#"{{"public_base_url": "https://jira.example.com", "timestamp_window_secs": {window_secs}}}"#
        )
    }

    /// `wasm` with a custom section appended: the same plugin, another file
    /// (another SHA-256), as a rebuild of the same source would be.
    fn with_custom_section(mut wasm: Vec<u8>, note: &str) -> Vec<u8> {
        let name = b"rebuild";
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(note.as_bytes());
        assert!(body.len() < 128, "one-byte LEB128 size");
        wasm.push(0); // custom section id
        wasm.push(body.len() as u8);
        wasm.extend_from_slice(&body);
        wasm
    }

    struct Jira {
        gateway: Gateway,
        service: Upstream,
        caller: Caller,
        timestamp: u64,
        _agent: Agent,
    }

    impl Jira {
        async fn send(&self, host: &str, nonce: &str) -> Reply {
            self.caller
                .get(host, "/rest/api/2/myself")
                .header("authorization", &tests::oauth_header(nonce, self.timestamp))
                .send()
                .await
        }

        /// `nonce` is served: it reached the service.
        async fn served(&self, host: &str, nonce: &str) {
            let before = self.service.requests();
            let reply = self.send(host, nonce).await;
            assert_eq!(reply.status, 200, "{host} nonce {nonce}: {reply:?}");
            assert_eq!(self.service.requests(), before + 1);
        }

        /// `nonce` is refused with the plugin's answer, and the service gets
        /// nothing.
        async fn refused(&self, host: &str, nonce: &str, why: &str) {
            let before = self.service.requests();
            let reply = self.send(host, nonce).await;
            assert_eq!(reply.status, 401, "{host} nonce {nonce} ({why}): {reply:?}");
            assert_eq!(
                reply.text(),
                "oauth_problem=nonce_used\n",
                "{host} nonce {nonce} ({why})"
            );
            assert_eq!(
                reply.header("www-authenticate"),
                Some("OAuth realm=\"jira.example.com\""),
                "{host} nonce {nonce} ({why}): {reply:?}"
            );
            assert_eq!(
                self.service.requests(),
                before,
                "{host} nonce {nonce} ({why}) reached the service"
            );
        }

        /// Rewrites the oauth1 config's window from `from` to `to` and reloads
        /// on SIGHUP; the route's plugin chain is reported changed.
        async fn reload_config(&self, from: u64, to: u64) {
            let mark = self.gateway.events().mark();
            let (old, new) = (
                format!("\\\"timestamp_window_secs\\\": {from}}}"),
                format!("\\\"timestamp_window_secs\\\": {to}}}"),
            );
            self.gateway.rewrite_config(|c| {
                assert_eq!(c.matches(&old).count(), 2, "{old} in:\n{c}");
                c.replace(&old, &new)
            });
            self.gateway.sighup();
            let event = self.gateway.wait_reload(mark).await;
            assert_eq!(event["event"], "config_reloaded", "{event}");
            assert_eq!(
                event["routes"]["changed"],
                serde_json::json!(["route-0", "route-1"]),
                "{event}"
            );
        }

        async fn set_refusals(&self) -> f64 {
            let m = scrape::metrics(self.gateway.admin()).await;
            assert_eq!(
                m.sum(
                    "tunnel_gateway_plugin_replay_refusals_total",
                    &[("plugin", "oauth1"), ("limit", "org_share")]
                ),
                0.0,
                "the organization's share is the whole set here:\n{}",
                m.text
            );
            m.sum(
                "tunnel_gateway_plugin_replay_refusals_total",
                &[("plugin", "oauth1"), ("org", "acme"), ("limit", "set")],
            )
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_replay_set_fails_closed_and_what_it_holds_survives_reloads() {
        // Two routes with oauth1 share the plugin's one set (their keys are
        // kept apart, the room is not). One organization may fill all of it.
        let gateway = Gateway::start(
            GatewayOptions::new()
                .plugin_setting("max_replay_keys", &KEYS.to_string())
                .plugin_setting("replay_share_per_org", "1.0")
                .plugin_setting("reload_interval", "\"100ms\"")
                .with_route(
                    Route::new("jira.test", "jira")
                        .plugin("org-check", "")
                        .plugin("oauth1", &oauth1_config(600)),
                )
                .with_route(
                    Route::new("confluence.test", "jira")
                        .plugin("org-check", "")
                        .plugin("oauth1", &oauth1_config(600)),
                ),
        )
        .await;
        let tunnel = gateway.create_tunnel("acme", "jira").await;
        let service = upstream::echo("jira").await;
        let agent = Agent::connect(&gateway, &tunnel, service.addr(), AgentOptions::new()).await;
        let caller = gateway.caller(&gateway.create_caller("acme").await);
        let jira = Jira {
            gateway,
            service,
            caller,
            timestamp: tests::unix_now(),
            _agent: agent,
        };

        // A nonce seen before a configuration reload is refused after it.
        jira.served("jira.test", "n1").await;
        jira.reload_config(600, 900).await;
        jira.refused("jira.test", "n1", "seen before the config reload")
            .await;
        jira.served("jira.test", "n2").await;

        // ... and after the plugin file is replaced by another build.
        let rebuilt = with_custom_section(plugin_wasm("oauth1"), "second build");
        let sha256 = hex::encode(Sha256::digest(&rebuilt));
        let mark = jira.gateway.events().mark();
        jira.gateway.replace_plugin("oauth1", &rebuilt);
        jira.gateway
            .events()
            .wait_after(
                mark,
                "oauth1's new build loaded",
                |e| {
                    e["event"] == "plugin_loaded"
                        && e["plugin"] == "oauth1"
                        && e["sha256"] == *sha256
                },
                PATIENCE,
            )
            .await;
        jira.refused("jira.test", "n2", "seen before the plugin reload")
            .await;

        // The set fills up: n1 and n2 on one route, n3 and n4 on the other.
        jira.served("confluence.test", "n3").await;
        jira.served("confluence.test", "n4").await;
        assert_eq!(jira.set_refusals().await, 0.0);

        // Full: fresh nonces are refused on either route, as replays would be.
        jira.refused("jira.test", "n5", "fresh, set full").await;
        jira.refused("confluence.test", "n6", "fresh, set full")
            .await;
        assert_eq!(jira.set_refusals().await, 2.0);

        // A reload does not empty it.
        jira.reload_config(900, 1200).await;
        jira.refused("jira.test", "n7", "fresh, set full after the reload")
            .await;
        jira.refused("jira.test", "n1", "seen before both reloads")
            .await;
        assert_eq!(jira.set_refusals().await, 3.0);
        assert_eq!(jira.service.requests(), KEYS as u64);
    }
}

mod handshake_refusals {
    //! Story: the agents' listener is on the internet, so it meets clients
    //! that are not a well-behaved agent of this release: one speaking a
    //! protocol version the gateway does not, one sending an oversized or
    //! malformed hello, names that are not valid (and would forge log
    //! lines), messages out of order, one that goes silent after its hello,
    //! and more connections than `agents.max_pending_handshakes`.
    //!
    //! Each is closed without a verdict (never `rejected`, which would tell
    //! a real agent its key is wrong and make it exit), counted in
    //! `tunnel_gateway_agent_handshakes_rejected_total` by reason, and
    //! named in the gateway's log; none emits `agent_rejected` or becomes
    //! an agent, and real agents connect and serve afterwards. A hand-rolled
    //! client (TLS 1.3, the WebSocket upgrade, then raw messages) sends what
    //! the real agent never would.

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use futures_util::{SinkExt as _, StreamExt as _};
    use rustls::pki_types::ServerName;
    use serde_json::json;
    use tests::events::kind;
    use tests::{scrape, upstream, Agent, AgentOptions, Gateway, GatewayOptions, PATIENCE};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tokio_tungstenite::tungstenite::{self, Message as Ws};
    use tokio_tungstenite::WebSocketStream;

    const REFUSED: &str = "tunnel_gateway_agent_handshakes_rejected_total";

    /// The gateway closes a connection that broke the protocol at once: far
    /// sooner than the handshake deadline (10 s) would.
    const AT_ONCE: Duration = Duration::from_secs(5);

    /// One WebSocket connection to the agents' listener.
    struct Session {
        ws: WebSocketStream<TlsStream<TcpStream>>,
    }

    /// What came back.
    #[derive(Debug)]
    enum Next {
        /// A handshake message (JSON text).
        Text(String),
        /// The gateway closed the connection, after this long.
        Closed(Duration),
    }

    async fn tls(gateway: &Gateway) -> TlsStream<TcpStream> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(gateway.pki().root_store())
        .with_no_client_auth();
        let tcp = TcpStream::connect(gateway.agents_addr())
            .await
            .expect("connect to the agents' listener");
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS 1.3 with the agents' listener")
    }

    impl Session {
        /// TLS and the WebSocket upgrade on the agents' path.
        async fn open(gateway: &Gateway) -> Session {
            let (ws, _) = tokio_tungstenite::client_async(gateway.agents_url(), tls(gateway).await)
                .await
                .expect("WebSocket upgrade on the agents' listener");
            Session { ws }
        }

        async fn text(&mut self, text: String) {
            self.ws.send(Ws::text(text)).await.expect("send");
        }

        async fn binary(&mut self, bytes: Vec<u8>) {
            self.ws.send(Ws::binary(bytes)).await.expect("send");
        }

        /// The next handshake message, or the end of the connection.
        async fn next(&mut self) -> Next {
            let started = Instant::now();
            loop {
                let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                    .await
                    .expect("the gateway answers or closes");
                match frame {
                    Some(Ok(Ws::Text(text))) => return Next::Text(text.as_str().to_string()),
                    Some(Ok(Ws::Ping(_) | Ws::Pong(_) | Ws::Frame(_))) => continue,
                    Some(Ok(Ws::Binary(b))) => panic!("binary frame from the gateway: {b:?}"),
                    Some(Ok(Ws::Close(_)) | Err(_)) | None => {
                        return Next::Closed(started.elapsed())
                    }
                }
            }
        }

        /// Expects the gateway's challenge.
        async fn challenge(&mut self, what: &str) {
            match self.next().await {
                Next::Text(t) if t.contains(r#""type":"challenge""#) => {}
                other => panic!("{what}: expected a challenge, got {other:?}"),
            }
        }

        /// Expects the connection to close with no message, at once.
        async fn closed_without_a_verdict(&mut self, what: &str) {
            match self.next().await {
                Next::Closed(after) => assert!(
                    after < AT_ONCE,
                    "{what}: closed only after {after:?}, not at once"
                ),
                Next::Text(t) => panic!("{what}: the gateway answered {t}"),
            }
        }
    }

    fn hello(version: u32, tunnel_id: &str, agent: &str) -> String {
        json!({"type": "hello", "version": version, "tunnel_id": tunnel_id, "agent": agent})
            .to_string()
    }

    async fn refusals(gateway: &Gateway, reason: &str) -> f64 {
        scrape::metrics(gateway.admin())
            .await
            .sum(REFUSED, &[("reason", reason)])
    }

    /// No event says an agent was rejected or connected.
    fn no_agent_events(gateway: &Gateway) {
        let events = gateway.events().snapshot();
        let seen: Vec<_> = events
            .iter()
            .filter(|e| kind(e).starts_with("agent_"))
            .collect();
        assert!(seen.is_empty(), "agent events: {seen:?}");
    }

    /// A real agent still connects and serves.
    async fn a_real_agent_serves(gateway: &Gateway, tunnel: &tests::Tunnel) -> Agent {
        let wiki = upstream::echo("wiki").await;
        let agent = Agent::connect(gateway, tunnel, wiki.addr(), AgentOptions::new()).await;
        let caller = gateway.caller(&gateway.create_caller("acme").await);
        let reply = caller.get("wiki.test", "/after").send().await;
        assert_eq!(reply.echo().server, "wiki");
        agent
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hellos_the_gateway_cannot_take_are_closed_and_named_in_its_log() {
        let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
        let tunnel = gateway.create_tunnel("acme", "wiki").await;
        let id = tunnel.id.as_str();
        let oversized = hello(2, id, &"a".repeat(5000));
        let proof = json!({"type": "proof", "mac": protocol::handshake::b64(&[7; 32])}).to_string();
        // What each client sends first, and what the gateway's log says.
        let cases: Vec<(&str, Vec<Ws>, String)> = vec![
            (
                "an oversized hello",
                vec![Ws::text(oversized.clone())],
                format!(
                    "handshake message is {} bytes, over the 4096 byte limit",
                    oversized.len()
                ),
            ),
            (
                "an agent name with a space",
                vec![Ws::text(hello(2, id, "node 1"))],
                "agent must be 1-128 characters of A-Z a-z 0-9 . _ -".into(),
            ),
            (
                "an agent name of 129 characters",
                vec![Ws::text(hello(2, id, &"n".repeat(129)))],
                "agent must be 1-128 characters".into(),
            ),
            (
                "a tunnel id forging a log line",
                vec![Ws::text(hello(
                    2,
                    &format!("{id}\nFORGED agent connected"),
                    "node-1",
                ))],
                "tunnel_id must be 1-128 characters".into(),
            ),
            (
                "text that is not JSON",
                vec![Ws::text("hello, gateway")],
                "malformed handshake message".into(),
            ),
            (
                "a binary frame",
                vec![Ws::binary(b"\x00\x01hello".to_vec())],
                "malformed handshake message: binary message during handshake".into(),
            ),
            (
                "a proof before any hello",
                vec![Ws::text(proof)],
                "expected a hello message, got proof".into(),
            ),
        ];
        let mut count = 0.0;
        for (what, frames, _) in &cases {
            let mut s = Session::open(&gateway).await;
            for frame in frames.clone() {
                match frame {
                    Ws::Text(t) => s.text(t.as_str().to_string()).await,
                    Ws::Binary(b) => s.binary(b.to_vec()).await,
                    other => unreachable!("{other:?}"),
                }
            }
            s.closed_without_a_verdict(what).await;
            count += 1.0;
            assert_eq!(refusals(&gateway, "protocol").await, count, "{what}");
        }

        // A version the gateway does not speak: the client is told to try
        // later (never `rejected`), with both sides' versions, and the
        // connection closes.
        for version in [3u32, 0] {
            let mut s = Session::open(&gateway).await;
            s.text(hello(version, id, "node-1")).await;
            match s.next().await {
                Next::Text(t) => {
                    let m: serde_json::Value = serde_json::from_str(&t).expect("JSON");
                    assert_eq!(m["type"], "try_later", "{t}");
                    assert_eq!(
                        m["reason"],
                        format!(
                            "the agent speaks protocol version {version}; this gateway speaks 1 to 2"
                        ),
                        "{t}"
                    );
                }
                other => panic!("protocol version {version}: expected the reason, got {other:?}"),
            }
            match s.next().await {
                Next::Closed(_) => {}
                Next::Text(t) => panic!("protocol version {version}: then {t}"),
            }
            count += 1.0;
            assert_eq!(refusals(&gateway, "protocol").await, count);
            gateway
                .wait_log(&format!(
                    "unsupported protocol version {version} (this side speaks 1 to 2)"
                ))
                .await;
        }

        // A good hello, then something else than the proof.
        let mut s = Session::open(&gateway).await;
        s.text(hello(2, id, "node-1")).await;
        s.challenge("a good hello").await;
        s.text(hello(2, id, "node-1")).await;
        s.closed_without_a_verdict("a second hello instead of the proof")
            .await;
        let mut s = Session::open(&gateway).await;
        s.text(hello(2, id, "node-1")).await;
        s.challenge("a good hello").await;
        s.text(json!({"type": "proof", "mac": "not base64!"}).to_string())
            .await;
        s.closed_without_a_verdict("a proof that is not base64")
            .await;
        count += 2.0;

        // The upgrade on another path is answered 404.
        let other = format!(
            "wss://localhost:{}/_tunnel/v2",
            gateway.agents_addr().port()
        );
        match tokio_tungstenite::client_async(other, tls(&gateway).await).await {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
            Err(e) => panic!("upgrade on another path: {e}"),
            Ok(_) => panic!("the gateway upgraded a connection on another path"),
        }
        count += 1.0;

        assert_eq!(refusals(&gateway, "protocol").await, count);
        for reason in ["key", "timeout"] {
            assert_eq!(refusals(&gateway, reason).await, 0.0, "reason {reason}");
        }
        no_agent_events(&gateway);
        for (_, _, logged) in &cases {
            gateway.wait_log(logged).await;
        }
        gateway
            .wait_log("agent handshake failed: protocol: expected a proof message, got hello")
            .await;
        gateway.wait_log("mac is not base64").await;
        let logs = gateway.full_logs();
        assert!(
            !logs.lines().any(|l| l.starts_with("FORGED")),
            "a client's tunnel id forged a log line:\n{logs}"
        );

        let _agent = a_real_agent_serves(&gateway, &tunnel).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_silent_after_its_hello_is_cut_off_at_the_handshake_deadline() {
        let gateway = Gateway::start(
            GatewayOptions::new()
                .route("wiki.test", "wiki")
                .env("GATEWAY__AGENTS__HANDSHAKE_TIMEOUT", "3s"),
        )
        .await;
        let tunnel = gateway.create_tunnel("acme", "wiki").await;

        let started = Instant::now();
        let mut s = Session::open(&gateway).await;
        s.text(hello(2, &tunnel.id, "node-1")).await;
        s.challenge("a good hello").await;
        // No proof: the gateway gives up at its deadline, without a verdict.
        match s.next().await {
            Next::Closed(_) => {}
            Next::Text(t) => panic!("the gateway answered a silent client: {t}"),
        }
        let held = started.elapsed();
        assert!(
            held >= Duration::from_millis(2500) && held < Duration::from_secs(9),
            "a silent client was held {held:?} (handshake_timeout = 3s)"
        );
        assert_eq!(refusals(&gateway, "timeout").await, 1.0);
        assert_eq!(refusals(&gateway, "key").await, 0.0);
        gateway.wait_log("agent handshake timed out after 3s").await;
        no_agent_events(&gateway);

        let _agent = a_real_agent_serves(&gateway, &tunnel).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_every_pending_handshake_slot_taken_an_agent_is_turned_away_until_one_frees() {
        let gateway = Gateway::start(
            GatewayOptions::new()
                .route("wiki.test", "wiki")
                .agents_setting("max_pending_handshakes", "2"),
        )
        .await;
        let tunnel = gateway.create_tunnel("acme", "wiki").await;
        let wiki = upstream::echo("wiki").await;

        // Two clients past TLS and the upgrade that say nothing more hold
        // both slots (for up to the 10 s handshake deadline).
        let holders = [Session::open(&gateway).await, Session::open(&gateway).await];
        let agent = Agent::start(&gateway, &tunnel, wiki.addr(), AgentOptions::new()).await;
        let failed = agent.wait_event("connect_failed", PATIENCE).await;
        // It retries with backoff: turned away again while the slots are held.
        let mark = agent.events().mark();
        agent
            .wait_event_after(mark, "connect_failed", PATIENCE)
            .await;
        assert!(failed["reason"].is_string(), "{failed}");
        assert!(refusals(&gateway, "busy").await >= 2.0);
        gateway
            .wait_log("agent connection refused: agents.max_pending_handshakes reached")
            .await;
        no_agent_events(&gateway);

        // One slot frees: the agent gets in at its next attempt.
        drop(holders);
        agent.wait_connected().await;
        let caller = gateway.caller(&gateway.create_caller("acme").await);
        assert_eq!(caller.get("wiki.test", "/").send().await.status, 200);
        assert!(
            !agent
                .events()
                .snapshot()
                .iter()
                .any(|e| kind(e) == "rejected"),
            "a busy gateway must never tell an agent its key is wrong"
        );
    }
}
