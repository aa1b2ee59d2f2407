//! Story: what the README promises about a request on its way through the
//! plugins and the agent's connections to the local service.
//!
//! - A plugin component that imports WASI is refused at start and at
//!   reload, naming the import; the running version keeps serving.
//! - When every sandbox (`plugins.max_sandboxes`) is busy, a request is
//!   answered 503 with `Retry-After: 1` and `policy sandboxes are all busy;
//!   retry shortly`, and reaches nothing.
//! - A plugin decision the gateway will not apply (a denial status outside
//!   400-599, an edit of a gateway-managed header) is a 500 `policy plugin
//!   `x` returned an invalid decision` on a kept connection, and reaches
//!   nothing; 400 and 599 are still the plugin's to give.
//! - Sequential requests of one caller reach the local service over a
//!   kept-alive connection or two, not one each; two callers never share a
//!   connection.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use tests::body;
use tests::setup::WikiTunnel;
use tests::{eventually, scrape, Agent, AgentOptions, Gateway, GatewayOptions, Route, PATIENCE};

// ---------------------------------------------------------------------
// WASI imports.

/// The smallest component that imports WASI: `wasi:cli/environment@0.2.0`
/// with its `get-arguments: func() -> list<string>`, and nothing else
/// (component binary format, layer 1).
///
/// Hand-assembled because a plugin built against `plugins/sdk` cannot use
/// `std` (the SDK is `no_std` on wasm32 and brings its own panic handler,
/// so `std::env` does not link), and no tool to build components is a
/// dependency of the tests.
fn wasi_component() -> Vec<u8> {
    fn name(s: &str) -> Vec<u8> {
        assert!(s.len() < 128, "one-byte lengths only");
        let mut v = vec![0x00, s.len() as u8];
        v.extend(s.as_bytes());
        v
    }
    fn section(id: u8, body: Vec<u8>) -> Vec<u8> {
        assert!(body.len() < 128, "one-byte lengths only");
        let mut v = vec![id, body.len() as u8];
        v.extend(body);
        v
    }
    // One instance type: (type list<string>) (type (func (result 0)))
    // (export "get-arguments" (func (type 1))).
    let mut types = vec![1, 0x42, 3];
    types.extend([0x01, 0x70, 0x73]);
    types.extend([0x01, 0x40, 0x00, 0x00, 0x00]);
    types.push(0x04);
    types.extend(name("get-arguments"));
    types.extend([0x01, 0x01]);
    // One import: an instance of that type.
    let mut imports = vec![1];
    imports.extend(name("wasi:cli/environment@0.2.0"));
    imports.extend([0x05, 0x00]);
    let mut component = b"\0asm\x0d\x00\x01\x00".to_vec();
    component.extend(section(7, types));
    component.extend(section(10, imports));
    component
}

const WASI_IMPORT: &str = "wasi:cli/environment@0.2.0";
const NOT_GIVEN: &str = "the component needs imports the gateway does not give plugins";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_importing_wasi_is_refused_at_start_and_at_reload_naming_the_import() {
    let stderr = Gateway::start_expecting_failure(
        GatewayOptions::new()
            .plugin_file("env-reader", wasi_component())
            .with_route(Route::new("wiki.test", "wiki").plugin("env-reader", "")),
    )
    .await;
    assert!(
        stderr.contains("env-reader.wasm") && stderr.contains(NOT_GIVEN),
        "the start should fail naming the file and why:\n{stderr}"
    );
    assert!(
        stderr.contains(WASI_IMPORT),
        "the error should name the import:\n{stderr}"
    );

    // At reload: refused the same way, and the running version serves on.
    let WikiTunnel {
        gateway,
        wiki: _wiki,
        agent: _agent,
        caller,
        ..
    } = WikiTunnel::start_routed(
        GatewayOptions::new()
            .plugin_setting("reload_interval", "\"100ms\"")
            .with_route(Route::new("wiki.test", "wiki").plugin("faulty", "allow")),
    )
    .await;
    let mark = gateway.events().mark();
    gateway.replace_plugin("faulty", &wasi_component());
    let rejected = gateway
        .wait_for_since(mark, "plugin_rejected", &[("plugin", "faulty")])
        .await;
    let error = rejected["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(NOT_GIVEN) && error.contains(WASI_IMPORT),
        "{rejected}"
    );
    let served = caller.get("wiki.test", "/after").send().await;
    assert_eq!(served.echo().header("x-faulty"), Some("allow"));
}

// ---------------------------------------------------------------------
// Busy sandboxes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_sandbox_busy_requests_get_503_retry_after_and_reach_nothing() {
    let deadline_ms = 5000;
    let WikiTunnel {
        gateway,
        wiki,
        agent: _agent,
        caller,
        ..
    } = WikiTunnel::start_routed(
        GatewayOptions::new()
            .plugin_setting("max_sandboxes", "1")
            .plugin_setting("call_timeout", &format!("\"{deadline_ms}ms\""))
            .with_route(Route::new("spin.test", "wiki").plugin("faulty", "loop"))
            .with_route(Route::new("wiki.test", "wiki").plugin("faulty", "allow")),
    )
    .await;
    let busy_body = "policy sandboxes are all busy; retry shortly";
    let spin = |c: &tests::Caller| tokio::spawn(c.get("spin.test", "/spin").send());

    // The one sandbox goes to a plugin that spins until its deadline. (A
    // probe may take the sandbox first, and the spinning request is then
    // the one refused: it is sent again.)
    let mut spinning = spin(&caller);
    // Spinning requests that were refused as busy themselves (a probe had
    // the sandbox): each counts as a busy failure too.
    let mut refused_spinners = Vec::new();
    let served = AtomicU64::new(0);
    let served_ref = &served;
    let mut n = 0;
    let first = eventually("a request refused as busy", PATIENCE, || {
        n += 1;
        if spinning.is_finished() {
            refused_spinners.push(std::mem::replace(&mut spinning, spin(&caller)));
        }
        let probe = caller.get("wiki.test", &format!("/probe-{n}")).send();
        let sent = n;
        async move {
            let reply = probe.await;
            match reply.status.as_u16() {
                503 => Ok(reply),
                200 => {
                    let s = served_ref.fetch_add(1, Ordering::SeqCst) + 1;
                    Err(format!("{sent} probes, {s} served"))
                }
                _ => panic!("{reply:?}"),
            }
        }
    })
    .await;
    let served = served.load(Ordering::SeqCst);
    let mut busy = 1;
    for refused in refused_spinners {
        let reply = refused.await.unwrap();
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.first_line(), busy_body, "{reply:?}");
        busy += 1;
    }

    // While it spins, every request that needs a sandbox is refused.
    let probes: Vec<_> = (0..4)
        .map(|i| tokio::spawn(caller.get("wiki.test", &format!("/busy-{i}")).send()))
        .collect();
    let mut replies = vec![first];
    for p in probes {
        replies.push(p.await.unwrap());
        busy += 1;
    }
    assert!(
        !spinning.is_finished(),
        "the spinning request ended before the refused ones were answered"
    );
    for reply in &replies {
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.header("retry-after"), Some("1"), "{reply:?}");
        assert_eq!(reply.first_line(), busy_body, "{reply:?}");
    }
    assert_eq!(
        wiki.requests(),
        served,
        "a request refused as busy reached the local service"
    );

    // The spinning one meets its deadline; the sandbox is free again.
    let stopped = spinning.await.unwrap();
    assert_eq!(stopped.status, 503, "{stopped:?}");
    assert!(
        stopped
            .text()
            .contains(&format!("did not decide within {deadline_ms} ms")),
        "{stopped:?}"
    );
    let after = caller.get("wiki.test", "/after").send().await;
    assert_eq!(after.echo().header("x-faulty"), Some("allow"));

    let m = scrape::metrics(gateway.admin()).await;
    assert_eq!(
        m.sum(
            "tunnel_gateway_plugin_failures_total",
            &[("plugin", "faulty"), ("kind", "busy")]
        ),
        busy as f64,
        "{}",
        m.text
    );
}

// ---------------------------------------------------------------------
// Invalid decisions.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// A plugin made from `plugins/template` that allows every request and
/// sets the one header its configuration (`NAME: VALUE`) names.
const HEADER_SETTER: &str = r#"#![cfg_attr(target_arch = "wasm32", no_std)]
extern crate alloc;

use alloc::string::String;
use plugin_sdk::{Context, Decision, HeaderEdit, Policy, Request};

pub struct SetHeader {
    name: String,
    value: String,
}

impl Policy for SetHeader {
    fn init(config: &str) -> Result<Self, String> {
        let (name, value) = config
            .split_once(':')
            .ok_or_else(|| String::from("config: `NAME: VALUE`"))?;
        Ok(SetHeader {
            name: name.trim().into(),
            value: value.trim().into(),
        })
    }

    fn on_request(&self, _ctx: &Context, _req: &Request) -> Decision {
        Decision::allow_with(alloc::vec![HeaderEdit::set(&self.name, self.value.as_bytes())])
    }
}

plugin_sdk::export_policy!(SetHeader);
"#;

const SETTER: &str = "promises-header-setter";

/// Copies the template, puts [`HEADER_SETTER`] in it and builds it as the
/// template's README says, into the plugins' target folder (where the
/// dependencies are already built); returns the component.
async fn build_header_setter() -> Vec<u8> {
    let work = tempfile::tempdir().unwrap();
    let src = work.path();
    let template = repo().join("plugins/template");
    for rel in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        let dest = src.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(template.join(rel), &dest)
            .unwrap_or_else(|e| panic!("copying plugins/template/{rel}: {e}"));
    }
    let mut manifest = std::fs::read_to_string(src.join("Cargo.toml")).unwrap();
    let sdk = repo().join("plugins/sdk");
    for (old, new) in [
        (r#"name = "my-policy""#, format!("name = {SETTER:?}")),
        (
            r#"path = "../sdk""#,
            format!("path = {:?}", sdk.display().to_string()),
        ),
    ] {
        assert!(
            manifest.contains(old),
            "plugins/template/Cargo.toml no longer has {old}"
        );
        manifest = manifest.replacen(old, &new, 1);
    }
    std::fs::write(src.join("Cargo.toml"), manifest).unwrap();
    std::fs::create_dir_all(src.join("src")).unwrap();
    std::fs::write(src.join("src/lib.rs"), HEADER_SETTER).unwrap();

    let wasm = tests::build_plugin(src, SETTER).await;
    std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_the_gateway_will_not_apply_are_500_and_reach_nothing() {
    let setter = build_header_setter().await;
    // (host, plugin, config, status, first line of the body)
    let invalid = |plugin: &str| format!("policy plugin `{plugin}` returned an invalid decision");
    let cases: Vec<(&str, &str, &str, u16, String)> = vec![
        ("s200.test", "faulty", "deny-200", 500, invalid("faulty")),
        ("s302.test", "faulty", "deny-302", 500, invalid("faulty")),
        ("s600.test", "faulty", "deny-600", 500, invalid("faulty")),
        (
            "s400.test",
            "faulty",
            "deny-400",
            400,
            "denied by faulty (deny-400)".into(),
        ),
        (
            "s599.test",
            "faulty",
            "deny-599",
            599,
            "denied by faulty (deny-599)".into(),
        ),
        (
            "xff.test",
            SETTER,
            "x-forwarded-for: 6.6.6.6",
            500,
            invalid(SETTER),
        ),
        (
            "host.test",
            SETTER,
            "host: admin.internal",
            500,
            invalid(SETTER),
        ),
        (
            "length.test",
            SETTER,
            "content-length: 0",
            500,
            invalid(SETTER),
        ),
    ];
    let mut opts = GatewayOptions::new()
        .plugin_file(SETTER, setter)
        .with_route(Route::new("team.test", "wiki").plugin(SETTER, "x-team: blue"));
    for (host, plugin, config, _, _) in &cases {
        opts = opts.with_route(Route::new(host, "wiki").plugin(plugin, config));
    }
    let WikiTunnel {
        gateway,
        wiki,
        agent: _agent,
        caller,
        ..
    } = WikiTunnel::start_routed(opts).await;

    // The plugin does work, and its edits are applied when allowed.
    let team = caller.get("team.test", "/page").send().await;
    assert_eq!(team.echo().header("x-team"), Some("blue"));

    // Every refusal on one kept-alive connection: each keeps it.
    let mut conn = caller.keep_alive().await;
    for (host, _, config, status, line) in &cases {
        let reply = conn.get(host, "/page").await;
        assert_eq!(reply.status, *status, "{config}: {reply:?}");
        assert_eq!(&reply.first_line(), line, "{config}: {reply:?}");
    }
    assert_eq!(conn.get("team.test", "/kept").await.status, 200);
    assert_eq!(
        wiki.requests(),
        2,
        "a request with an invalid (or denying) decision reached the service"
    );

    let m = scrape::metrics(gateway.admin()).await;
    for plugin in ["faulty", SETTER] {
        assert_eq!(
            m.sum(
                "tunnel_gateway_plugin_failures_total",
                &[("plugin", plugin), ("kind", "invalid")]
            ),
            3.0,
            "{plugin}: {}",
            m.text
        );
    }
    let logs = gateway.full_logs();
    for why in [
        "denial status 302 is not 400-599",
        "header `x-forwarded-for` is managed by the gateway",
    ] {
        assert!(logs.contains(why), "no log line saying {why:?}");
    }
}

// ---------------------------------------------------------------------
// Connection reuse to the local service.

/// A local service that numbers its TCP connections and records, for each
/// request, the connection it came on and its `x-caller` header.
struct Counting {
    addr: SocketAddr,
    accepted: Arc<Mutex<usize>>,
    seen: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Counting {
    async fn start() -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (accepted.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let conn = {
                    let mut n = a.lock().unwrap();
                    *n += 1;
                    *n
                };
                let seen = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let caller = req
                            .headers()
                            .get("x-caller")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        seen.lock().unwrap().push((conn, caller));
                        async move { Ok::<_, Infallible>(Response::new(body::full("ok"))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Counting {
            addr,
            accepted,
            seen,
        }
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }

    /// The connections that carried requests of each caller.
    fn connections_by_caller(&self) -> BTreeMap<String, BTreeSet<usize>> {
        let mut by = BTreeMap::<String, BTreeSet<usize>>::new();
        for (conn, caller) in self.seen.lock().unwrap().iter() {
            by.entry(caller.clone()).or_default().insert(*conn);
        }
        by
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_callers_requests_share_kept_alive_connections_and_two_callers_never_do() {
    let gateway = Gateway::start(GatewayOptions::new().route("intranet.test", "intranet")).await;
    let tunnel = gateway.create_tunnel("acme", "intranet").await;
    let service = Counting::start().await;
    let _agent = Agent::connect(&gateway, &tunnel, service.addr, AgentOptions::new()).await;
    let alice = gateway.caller(&gateway.create_caller("acme").await);
    let bob = gateway.caller(&gateway.create_caller("acme").await);

    // Ten requests of one caller, one after another (each on a new
    // connection to the gateway).
    let n = 10;
    for i in 0..n {
        let reply = alice
            .get("intranet.test", &format!("/a/{i}"))
            .header("x-caller", "alice")
            .send()
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let used = service.accepted();
    assert!(
        used <= n / 2,
        "{n} sequential requests of one caller took {used} connections to the service"
    );

    // Two callers taking turns: each keeps to connections of its own.
    for i in 0..n {
        for (caller, name) in [(&alice, "alice"), (&bob, "bob")] {
            let reply = caller
                .get("intranet.test", &format!("/turns/{i}"))
                .header("x-caller", name)
                .send()
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    }
    let by = service.connections_by_caller();
    let (a, b) = (&by["alice"], &by["bob"]);
    assert!(
        a.is_disjoint(b),
        "alice and bob were served on the same connection: alice {a:?}, bob {b:?}"
    );
    assert!(
        b.len() <= n / 2,
        "bob's {n} requests took {} connections: {b:?}",
        b.len()
    );
    assert_eq!(by.len(), 2, "{by:?}");
}
