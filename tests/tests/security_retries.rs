//! Story: an agent dies while holding a request. The caller hears the
//! truth (502 naming the lost agent, never the 503 of a tunnel without
//! agents), a request that may have taken effect is never delivered twice,
//! and a safe one is served by another agent of the tunnel, once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::Method;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use tests::body::{self, Body};
use tests::{scrape, Agent, AgentOptions, Caller, Gateway, GatewayOptions, Reply, PATIENCE};

/// A local service behind several agents (one port each) that keeps a
/// ledger of every request delivered to it, across ports. Requests to
/// `/hold` are held without an answer while fewer than `hold` have been
/// held; later ones, and every other path, are answered at once with
/// `served by port N`.
struct Ledger {
    addrs: Vec<SocketAddr>,
    /// (port index, method, path) of every delivery, in order.
    deliveries: Arc<Mutex<Vec<(usize, String, String)>>>,
    changed: watch::Receiver<usize>,
}

impl Ledger {
    async fn start(ports: usize, hold: usize) -> Ledger {
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let (tx, changed) = watch::channel(0);
        let tx = Arc::new(tx);
        let mut addrs = Vec::new();
        for port in 0..ports {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.push(listener.local_addr().expect("address"));
            let (deliveries, tx) = (deliveries.clone(), tx.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (deliveries, tx) = (deliveries.clone(), tx.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (deliveries, tx) = (deliveries.clone(), tx.clone());
                            async move {
                                let held_before = {
                                    let mut d = deliveries.lock().unwrap();
                                    let held = d.iter().filter(|(_, _, p)| p == "/hold").count();
                                    d.push((
                                        port,
                                        req.method().to_string(),
                                        req.uri().path().to_string(),
                                    ));
                                    tx.send_replace(d.len());
                                    held
                                };
                                if req.uri().path() == "/hold" && held_before < hold {
                                    std::future::pending::<()>().await;
                                }
                                Ok::<_, Infallible>(Response::new(body::full(format!(
                                    "served by port {port}"
                                ))))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        }
        Ledger {
            addrs,
            deliveries,
            changed,
        }
    }

    fn deliveries(&self) -> Vec<(usize, String, String)> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Waits until `n` requests were delivered; returns the port of the
    /// `n`th.
    async fn wait_delivery(&self, n: usize) -> usize {
        let mut rx = self.changed.clone();
        tokio::time::timeout(PATIENCE, rx.wait_for(|len| *len >= n))
            .await
            .unwrap_or_else(|_| panic!("delivery #{n} never came: {:?}", self.deliveries()))
            .expect("ledger alive");
        self.deliveries()[n - 1].0
    }
}

/// A gateway routing `wiki.test` to tunnel `wiki`, one agent per ledger
/// port, and a caller.
struct Tunnel {
    gateway: Gateway,
    agents: Vec<Agent>,
    caller: Caller,
}

impl Tunnel {
    async fn start(ledger: &Ledger) -> Tunnel {
        let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
        let tunnel = gateway.create_tunnel("acme", "wiki").await;
        let mut agents = Vec::new();
        for (i, addr) in ledger.addrs.iter().enumerate() {
            let opts = AgentOptions::new().name(&format!("node-{i}-{}", std::process::id()));
            agents.push(Agent::connect(&gateway, &tunnel, *addr, opts).await);
        }
        let caller = gateway.caller(&gateway.create_caller("acme").await);
        Tunnel {
            gateway,
            agents,
            caller,
        }
    }

    /// Sends `method /hold` in the background.
    fn hold(&self, method: Method, payload: Body) -> tokio::task::JoinHandle<Reply> {
        let call = self
            .caller
            .request(method, "wiki.test", "/hold")
            .body(payload)
            .timeout(PATIENCE);
        tokio::spawn(call.send())
    }

    async fn metric(&self, name: &str, reason: &str) -> f64 {
        scrape::metrics(self.gateway.admin())
            .await
            .sum(name, &[("reason", reason)])
    }
}

const RETRIES: &str = "tunnel_gateway_request_retries_total";
const LOST: &str = "tunnel_gateway_requests_lost_total";

fn assert_lost_502(reply: &Reply, agent: &Agent) {
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(
        reply.header("retry-after").is_none(),
        "a lost request is not a tunnel without agents: {reply:?}"
    );
    let text = reply.text();
    assert!(
        text.contains(agent.name()) && text.contains("wiki"),
        "the 502 should name the lost agent and its tunnel: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_agent_dies_is_never_delivered_twice() {
    let ledger = Ledger::start(2, 1).await;
    let mut t = Tunnel::start(&ledger).await;

    let pending = t.hold(Method::POST, body::full("charge the card once"));
    let holder = ledger.wait_delivery(1).await;
    t.agents[holder].kill();

    let reply = pending.await.unwrap();
    assert_lost_502(&reply, &t.agents[holder]);
    assert!(reply.text().contains("not sent again"), "{}", reply.text());
    let posts: Vec<_> = ledger
        .deliveries()
        .into_iter()
        .filter(|(_, m, _)| m == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "the POST reached the service: {posts:?}");
    assert_eq!(t.metric(LOST, "unsafe_method").await, 1.0);
    assert_eq!(t.metric(RETRIES, "agent_lost").await, 0.0);

    // The surviving agent serves the next request.
    let next = t.caller.get("wiki.test", "/hello").send().await;
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.text(), format!("served by port {}", 1 - holder));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_agent_dies_is_served_by_the_other_agent() {
    let ledger = Ledger::start(2, 1).await;
    let mut t = Tunnel::start(&ledger).await;

    let pending = t.hold(Method::GET, body::empty());
    let holder = ledger.wait_delivery(1).await;
    t.agents[holder].kill();

    let reply = pending.await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let other = 1 - holder;
    assert_eq!(reply.text(), format!("served by port {other}"));
    let gets: Vec<_> = ledger.deliveries().into_iter().map(|(p, _, _)| p).collect();
    assert_eq!(gets, vec![holder, other], "exactly one retry, elsewhere");
    assert_eq!(t.metric(RETRIES, "agent_lost").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_is_retried_at_most_once() {
    let ledger = Ledger::start(3, 2).await;
    let mut t = Tunnel::start(&ledger).await;

    let pending = t.hold(Method::GET, body::empty());
    let first = ledger.wait_delivery(1).await;
    t.agents[first].kill();
    let second = ledger.wait_delivery(2).await;
    assert_ne!(first, second, "the retry went to the agent that died");
    t.agents[second].kill();

    let reply = pending.await.unwrap();
    assert_lost_502(&reply, &t.agents[second]);
    assert!(reply.text().contains("retried once"), "{}", reply.text());
    assert_eq!(ledger.deliveries().len(), 2, "{:?}", ledger.deliveries());
    assert_eq!(t.metric(RETRIES, "agent_lost").await, 1.0);
    assert_eq!(t.metric(LOST, "retried_once").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_agent_dying_mid_request_is_502_not_503() {
    let ledger = Ledger::start(1, 1).await;
    let mut t = Tunnel::start(&ledger).await;
    // A first request leaves a pooled tunnel stream behind: the held
    // request reuses it, the case pingora's default would retry into 503.
    let warm = t.caller.get("wiki.test", "/hello").send().await;
    assert_eq!(warm.status, 200, "{warm:?}");

    let pending = t.hold(Method::GET, body::empty());
    ledger.wait_delivery(2).await;
    t.agents[0].kill();

    let reply = pending.await.unwrap();
    assert_lost_502(&reply, &t.agents[0]);
    assert_eq!(ledger.deliveries().len(), 2);
    assert_eq!(t.metric(LOST, "no_other_agent").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_with_no_agent_left_still_says_503() {
    // The other side of the line: no agent at all is 503 with Retry-After,
    // as before, and is not counted as a lost request.
    let ledger = Ledger::start(1, 1).await;
    let mut t = Tunnel::start(&ledger).await;
    t.agents[0].kill();
    t.gateway
        .wait_for("agent_disconnected", &[("agent", t.agents[0].name())])
        .await;
    let reply = t.caller.get("wiki.test", "/hello").send().await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    assert_eq!(t.metric(LOST, "no_other_agent").await, 0.0);
}
