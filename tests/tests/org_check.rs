//! Story: a caller token belongs to one organization and reaches only that
//! organization's tunnels; another organization's tunnel answers 403 by
//! explicit route, and 404 by `<name>.<base_domain>` (like a tunnel that
//! does not exist, so names cannot be probed), and its local service never
//! hears of the request. A tunnel with an explicit route is reachable
//! only through it (its plugin chain cannot be skipped by the wildcard).

use tests::{upstream, Agent, AgentOptions, Gateway, GatewayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_reaches_only_its_own_organizations_tunnels() {
    let gateway = Gateway::start(
        GatewayOptions::new()
            .route("wiki.test", "wiki")
            .base_domain("tunnels.test"),
    )
    .await;
    let wiki_tunnel = gateway.create_tunnel("acme", "wiki").await;
    let billing_tunnel = gateway.create_tunnel("globex", "billing").await;
    let wiki = upstream::echo("wiki").await;
    let billing = upstream::echo("billing").await;
    let _wiki_agent =
        Agent::connect(&gateway, &wiki_tunnel, wiki.addr(), AgentOptions::new()).await;
    let _billing_agent = Agent::connect(
        &gateway,
        &billing_tunnel,
        billing.addr(),
        AgentOptions::new(),
    )
    .await;
    let globex = gateway.caller(&gateway.create_caller("globex").await);

    // acme's tunnel by its route; its name under the base domain is no
    // route at all, since the tunnel has an explicit one.
    let reply = globex.get("wiki.test", "/pages/secret").send().await;
    assert_eq!(
        reply.status, 403,
        "a globex caller on acme's tunnel: {reply:?}"
    );
    assert!(
        reply.text().contains("organization"),
        "the 403 should say the organization is the problem: {:?}",
        reply.text()
    );
    let reply = globex
        .get("wiki.tunnels.test", "/pages/secret")
        .send()
        .await;
    assert_eq!(
        reply.status, 404,
        "the wildcard skipped wiki's route: {reply:?}"
    );
    assert_eq!(
        wiki.requests(),
        0,
        "a request refused for its organization reached acme's service"
    );

    // The same caller reaches its own organization's tunnel by name; acme's
    // callers get 404 there, as for a tunnel that does not exist.
    let reply = globex.get("billing.tunnels.test", "/invoices").send().await;
    assert_eq!(reply.echo().server, "billing");
    assert_eq!(billing.requests(), 1);

    // And acme's own callers still reach acme's tunnel.
    let acme = gateway.caller(&gateway.create_caller("acme").await);
    let reply = acme.get("billing.tunnels.test", "/invoices").send().await;
    assert_eq!(
        reply.status, 404,
        "acme on globex's tunnel by name: {reply:?}"
    );
    assert_eq!(billing.requests(), 1);
    assert_eq!(
        acme.get("wiki.test", "/").send().await.echo().server,
        "wiki"
    );
    assert_eq!(wiki.requests(), 1);
}
