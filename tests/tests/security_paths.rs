//! Security story: the path a caller sends is judged once, and routing,
//! the host's checks and the plugins all judge that same path, so no
//! spelling of a path reaches something its route or its `authz` rules
//! keep out. A service on Tomcat or Jetty (Jira, Confluence) strips
//! `;params` and resolves `..`: `/upload/..;/admin/x` is `/admin/x` there.
//! Anything two readers could take differently is 400, and the service
//! never hears of it; ordinary paths still reach it byte for byte.

use std::time::Duration;

use tests::setup::WikiTunnel;
use tests::upstream::{self, Echo};
use tests::{wire, Agent, AgentOptions, Gateway, GatewayOptions, Route};

/// A raw request, so no client library normalises the path on the way.
fn raw(method: &str, token: &str, host: &str, path: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

const WAIT: Duration = Duration::from_secs(10);

/// Sends each path and collects those that did not get `want`.
async fn expect_status(
    addr: std::net::SocketAddr,
    method: &str,
    token: &str,
    host: &str,
    paths: &[&str],
    want: u16,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for path in paths {
        let reply = wire::exchange(addr, &raw(method, token, host, path), WAIT).await;
        if reply.status() != Some(want) {
            wrong.push(format!(
                "{method} {host}{path}: expected {want}, got {:?}: {}",
                reply.status(),
                reply.text().lines().last().unwrap_or_default()
            ));
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_escape_the_upload_prefix_with_dot_dot_semicolon() {
    // The shipped `wiki-uploads` example: uploads only, under /upload/.
    let rules = r#"{"rules":[{"methods":["PUT","POST"],"path_prefixes":["/upload/"]}]}"#;
    let route = Route::new("wiki.test", "wiki")
        .path_prefix("/upload/")
        .plugin("org-check", "")
        .plugin("authz", rules);
    let t = WikiTunnel::start_with(
        GatewayOptions::new().with_route(route),
        upstream::echo("wiki").await,
    )
    .await;
    let addr = t.gateway.public_addr();
    let attacks = [
        "/upload/..;/admin/x",
        "/upload/.;/admin/x",
        "/upload/..;jsessionid=1/admin/x",
        "/upload/%2e%2e;/admin/x",
        "/upload/x;/../admin",
    ];
    let wrong = expect_status(addr, "POST", &t.token, "wiki.test", &attacks, 400).await;
    assert!(
        wrong.is_empty(),
        "attacks not refused:\n{}",
        wrong.join("\n")
    );
    assert_eq!(t.wiki.requests(), 0, "an attack reached the wiki");

    let ok = wire::exchange(
        addr,
        &raw("POST", &t.token, "wiki.test", "/upload/a.png"),
        WAIT,
    )
    .await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text());
    assert_eq!(t.wiki.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confusable_paths_get_400_and_reach_no_service() {
    let t = WikiTunnel::start().await;
    let addr = t.gateway.public_addr();
    let attacks = [
        "//admin",
        "/upload//admin",
        "/a/%00/b",
        "/a%00",
        "/a/%0a",
        "/a/%zz",
        "/a/%4",
        "/a/%c0%ae%c0%ae/admin",
        "/a/%c0%af",
        "/a/%ff",
        "/a/%2fadmin",
        "/a/%5cadmin",
        "/a;x",
        "/a/..",
        "/a/%2E",
    ];
    let wrong = expect_status(addr, "GET", &t.token, "wiki.test", &attacks, 400).await;
    assert!(wrong.is_empty(), "not refused:\n{}", wrong.join("\n"));
    assert_eq!(t.wiki.requests(), 0, "a confusable path reached the wiki");

    // What passes reaches the service exactly as sent.
    for path in ["/%61dmin/x", "/a%20b/c", "/a/..b/c", "/.well-known/x"] {
        let reply = wire::exchange(addr, &raw("GET", &t.token, "wiki.test", path), WAIT).await;
        assert_eq!(reply.status(), Some(200), "{path}: {}", reply.text());
        let echo: Echo = serde_json::from_str(reply.body_text().trim()).unwrap();
        assert_eq!(echo.target, path, "the service got another target");
    }
}

/// Three tunnels behind one host: `/admin`, `/api/` and everything else.
struct Tools {
    gateway: Gateway,
    site: upstream::Upstream,
    admin: upstream::Upstream,
    _api: upstream::Upstream,
    token: String,
    _agents: Vec<Agent>,
}

async fn tools() -> Tools {
    let gateway = Gateway::start(
        GatewayOptions::new()
            .with_route(Route::new("tools.test", "site"))
            .with_route(Route::new("tools.test", "admin").path_prefix("/admin"))
            .with_route(Route::new("tools.test", "api").path_prefix("/api/")),
    )
    .await;
    let site = upstream::echo("site").await;
    let admin = upstream::echo("admin").await;
    let api = upstream::echo("api").await;
    let mut agents = Vec::new();
    for (name, svc) in [("site", &site), ("admin", &admin), ("api", &api)] {
        let tunnel = gateway.create_tunnel("acme", name).await;
        agents.push(Agent::connect(&gateway, &tunnel, svc.addr(), AgentOptions::new()).await);
    }
    let token = gateway.create_caller("acme").await;
    Tools {
        gateway,
        site,
        admin,
        _api: api,
        token,
        _agents: agents,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_spelling_of_a_prefix_reaches_that_prefixs_route() {
    let t = tools().await;
    let caller = t.gateway.caller(&t.token);
    // Encoded letters and another case name the admin route's paths: a
    // case-insensitive or decoding service would serve /admin for them.
    for path in ["/admin/x", "/%61dmin/x", "/ADMIN/x", "/Admin", "/admin"] {
        let reply = caller.get("tools.test", path).send().await;
        assert_eq!(reply.echo().server, "admin", "{path} went elsewhere");
    }
    // A prefix covers whole segments only.
    for (path, server) in [
        ("/adminx", "site"),
        ("/administrator/x", "site"),
        ("/api", "api"),
        ("/api/v2", "api"),
        ("/apix", "site"),
    ] {
        let reply = caller.get("tools.test", path).send().await;
        assert_eq!(reply.echo().server, server, "{path}");
    }
    assert_eq!(t.admin.requests(), 5);
    assert_eq!(t.site.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_allow_path_params_and_encoded_slashes_but_never_dot_segments() {
    let opts = GatewayOptions::new()
        .with_route(
            Route::new("tools.test", "wiki")
                .path_prefix("/servlet")
                .allow_path_params(),
        )
        .with_route(
            Route::new("tools.test", "wiki")
                .path_prefix("/projects")
                .allow_encoded_slash(),
        );
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let addr = t.gateway.public_addr();
    for path in ["/servlet/a;jsessionid=1/b", "/projects/group%2Fname/issues"] {
        let reply = wire::exchange(addr, &raw("GET", &t.token, "tools.test", path), WAIT).await;
        assert_eq!(reply.status(), Some(200), "{path}: {}", reply.text());
        let echo: Echo = serde_json::from_str(reply.body_text().trim()).unwrap();
        assert_eq!(echo.target, path, "the service got another target");
    }
    let still_refused = [
        "/servlet/..;/admin",
        "/servlet/a%2Fb",
        "/projects/a;x",
        "/projects/a%2F..%2Fadmin",
        "/projects/%2F",
    ];
    let wrong = expect_status(addr, "GET", &t.token, "tools.test", &still_refused, 400).await;
    assert!(wrong.is_empty(), "not refused:\n{}", wrong.join("\n"));
    assert_eq!(t.wiki.requests(), 2);
}
