//! Security story: one organization's callers never reach another
//! organization's tunnel, whatever plugin chain a route lists. The gateway
//! checks `caller.org == tunnel.org` itself on every request (the
//! `org-check` plugin still decides first and explains), unless a route
//! says `cross_org = true`. On the wildcard, a tunnel of another
//! organization answers exactly like a tunnel that does not exist, so its
//! name cannot be probed.

use tests::{plugin_wasm, upstream, Agent, AgentOptions, Gateway, GatewayOptions, Route};

/// acme owns `wiki` (behind wiki.test, chain `authz` only, which allows
/// everything with no rules) and globex owns `billing` (wildcard only,
/// whose chain is `authz` too).
struct TwoOrgs {
    /// Kept running for the story's length.
    _gateway: Gateway,
    wiki: upstream::Upstream,
    billing: upstream::Upstream,
    acme: tests::Caller,
    globex: tests::Caller,
    _agents: Vec<Agent>,
}

async fn two_orgs(opts: GatewayOptions) -> TwoOrgs {
    let gateway = Gateway::start(
        opts.base_domain("tunnels.test")
            .plugin_file("authz", plugin_wasm("authz"))
            .extra_config("[[routing.plugins]]\nname = \"authz\"\n"),
    )
    .await;
    let wiki = upstream::echo("wiki").await;
    let billing = upstream::echo("billing").await;
    let mut agents = Vec::new();
    for (org, name, svc) in [("acme", "wiki", &wiki), ("globex", "billing", &billing)] {
        let tunnel = gateway.create_tunnel(org, name).await;
        agents.push(Agent::connect(&gateway, &tunnel, svc.addr(), AgentOptions::new()).await);
    }
    let acme = gateway.caller(&gateway.create_caller("acme").await);
    let globex = gateway.caller(&gateway.create_caller("globex").await);
    TwoOrgs {
        _gateway: gateway,
        wiki,
        billing,
        acme,
        globex,
        _agents: agents,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_without_org_check_does_not_open_another_organizations_tunnel() {
    let t = two_orgs(
        GatewayOptions::new().with_route(Route::new("wiki.test", "wiki").plugin("authz", "")),
    )
    .await;

    let reply = t.globex.get("wiki.test", "/secret").send().await;
    assert_eq!(reply.status, 403, "globex on acme's route: {reply:?}");
    assert!(reply.text().contains("organization"), "{}", reply.text());
    let reply = t.acme.get("billing.tunnels.test", "/invoices").send().await;
    assert_eq!(
        reply.status, 404,
        "acme on globex's tunnel by name: {reply:?}"
    );
    assert_eq!(t.wiki.requests() + t.billing.requests(), 0);

    // Each organization still reaches its own.
    assert_eq!(
        t.acme.get("wiki.test", "/").send().await.echo().server,
        "wiki"
    );
    let own = t.globex.get("billing.tunnels.test", "/").send().await;
    assert_eq!(own.echo().server, "billing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_caller_cannot_tell_a_foreign_tunnel_from_a_missing_one() {
    let t = two_orgs(GatewayOptions::new()).await;
    let foreign = t.acme.get("billing.tunnels.test", "/").send().await;
    let missing = t.acme.get("nosuch.tunnels.test", "/").send().await;
    assert_eq!(foreign.status, 404, "{foreign:?}");
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(
        foreign.text().replace("billing", "NAME"),
        missing.text().replace("nosuch", "NAME"),
        "the bodies differ beyond the name asked for"
    );
    let names = |r: &tests::Reply| {
        let mut h: Vec<String> = r
            .headers
            .keys()
            .map(|k| k.as_str().to_string())
            .filter(|k| k != "date")
            .collect();
        h.sort();
        h
    };
    assert_eq!(names(&foreign), names(&missing), "the headers differ");
    assert_eq!(t.billing.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_says_cross_org_lets_other_organizations_through() {
    let t = two_orgs(
        GatewayOptions::new().with_route(
            Route::new("wiki.test", "wiki")
                .plugin("authz", "")
                .cross_org(),
        ),
    )
    .await;
    let reply = t.globex.get("wiki.test", "/shared").send().await;
    assert_eq!(reply.echo().server, "wiki", "cross_org route: {reply:?}");
    // The wildcard did not opt out.
    let reply = t.acme.get("billing.tunnels.test", "/").send().await;
    assert_eq!(reply.status, 404);
}
