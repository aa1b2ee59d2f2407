//! Story: the gateway sends each request to the tunnel its Host (and path)
//! names, and answers 404 for anything it has no route for.

use tests::setup::WikiTunnel;
use tests::{upstream, Agent, AgentOptions, Gateway, GatewayOptions, Route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_tunnel_their_host_names() {
    let gateway = Gateway::start(
        GatewayOptions::new()
            .route("wiki.test", "wiki")
            .route("ci.test", "ci")
            .with_route(Route::new("tools.test", "ci").path_prefix("/ci/"))
            .base_domain("tunnels.test"),
    )
    .await;
    let wiki_tunnel = gateway.create_tunnel("acme", "wiki").await;
    let ci_tunnel = gateway.create_tunnel("acme", "ci").await;
    let wiki = upstream::echo("wiki").await;
    let ci = upstream::echo("ci").await;
    let _wiki_agent =
        Agent::connect(&gateway, &wiki_tunnel, wiki.addr(), AgentOptions::new()).await;
    let _ci_agent = Agent::connect(&gateway, &ci_tunnel, ci.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);

    let served_by = |host: &'static str, path: &'static str| {
        let caller = caller.clone();
        async move { caller.get(host, path).send().await.echo().server }
    };
    assert_eq!(served_by("wiki.test", "/pages/home").await, "wiki");
    assert_eq!(served_by("ci.test", "/jobs/1").await, "ci");
    assert_eq!(
        served_by("wiki.test:8080", "/").await,
        "wiki",
        "the port in Host is ignored"
    );
    let echo = caller.get("wiki.test:8080", "/").send().await.echo();
    assert_eq!(
        echo.header("host"),
        Some("wiki.test:8080"),
        "Host is forwarded as sent"
    );
    assert_eq!(
        served_by("tools.test", "/ci/build").await,
        "ci",
        "path prefix route"
    );

    // One kept-alive connection, a different host on each request: each
    // request is routed on its own, not by the connection it came on.
    let mut connection = caller.keep_alive().await;
    for (host, server) in [
        ("wiki.test", "wiki"),
        ("ci.test", "ci"),
        ("wiki.test", "wiki"),
    ] {
        let reply = connection.get(host, "/same-connection").await;
        assert_eq!(
            reply.echo().server,
            server,
            "Host {host} on a reused connection"
        );
    }
    let unrouted = connection.get("unknown.test", "/").await;
    assert_eq!(unrouted.status, 404, "{unrouted:?}");

    let outside_prefix = caller.get("tools.test", "/other").send().await;
    assert_eq!(outside_prefix.status, 404, "{outside_prefix:?}");

    // The echo saw the request target as the caller sent it.
    let echo = caller
        .get("wiki.test", "/pages/home?rev=2")
        .send()
        .await
        .echo();
    assert_eq!(echo.target, "/pages/home?rev=2");
    assert_eq!(echo.header("host"), Some("wiki.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_is_reachable_by_name_under_the_base_domain() {
    let WikiTunnel {
        gateway: _gateway,
        wiki: _wiki,
        agent: _agent,
        caller,
        ..
    } = WikiTunnel::start_routed(GatewayOptions::new().base_domain("tunnels.test")).await;

    let reply = caller.get("wiki.tunnels.test", "/space/KEY").send().await;
    let echo = reply.echo();
    assert_eq!(
        (echo.server.as_str(), echo.target.as_str()),
        ("wiki", "/space/KEY")
    );

    let nameless = caller.get("nope.tunnels.test", "/").send().await;
    assert_eq!(nameless.status, 404, "{nameless:?}");
    let deeper = caller.get("x.wiki.tunnels.test", "/").send().await;
    assert_eq!(
        deeper.status, 404,
        "only one label names a tunnel: {deeper:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_gets_404_and_reaches_no_service() {
    let WikiTunnel {
        gateway: _gateway,
        wiki,
        agent: _agent,
        caller,
        ..
    } = WikiTunnel::start_routed(GatewayOptions::new().route("wiki.test", "wiki")).await;

    for host in ["unknown.test", "wiki.test.evil", "ki.test"] {
        let reply = caller.get(host, "/").send().await;
        assert_eq!(reply.status, 404, "Host {host}: {reply:?}");
    }
    assert_eq!(wiki.requests(), 0, "a 404 must not reach the local service");
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 200);
}
