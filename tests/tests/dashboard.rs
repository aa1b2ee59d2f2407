//! Story: the people who run the gateway look at a page, not at `curl
//! /metrics`. In a real headless Chromium (Debian's, through its
//! WebDriver) an operator signs in to the dashboard on the admin listener,
//! sees the tunnel with its agent connected and its rate move as requests
//! pass, rotates the tunnel's key, creates a caller and revokes it (its
//! next request is refused), reads the refusals, plugins and audit pages,
//! disconnects an agent and deletes a tunnel; a read-only token sees
//! everything and changes nothing; a wrong token cannot sign in; names
//! with markup in them are shown as text.
//!
//! Screenshots of every page go to `target/dashboard-screenshots/`.

use std::path::PathBuf;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tests::browser::{key, Browser};
use tests::{
    plugins_dir, upstream, Agent, AgentOptions, Gateway, GatewayOptions, Operator, RequestLoop,
    Route, PATIENCE,
};

/// Where the screenshots go (named in the README).
fn shots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dashboard-screenshots")
}

async fn shot(browser: &Browser, name: &str) {
    browser
        .screenshot(&shots().join(format!("{name}.png")))
        .await
        .expect("screenshot");
}

async fn browser() -> Browser {
    Browser::start().await.expect("headless Chromium")
}

/// A gateway whose `wiki.test` route runs org-check and authz (GET and
/// POST only), the tunnel `wiki` of an organization whose name is markup,
/// its agent and service, and a caller of that organization.
struct Scene {
    gateway: Gateway,
    tunnel: tests::Tunnel,
    _agent: Agent,
    _wiki: upstream::Upstream,
    org: &'static str,
    caller: tests::Caller,
}

/// An organization name is printable ASCII without spaces: markup fits.
const MARKUP_ORG: &str = "<script>alert(1)</script>";
/// A caller name may hold spaces too.
const MARKUP_NAME: &str = "<img src=x onerror=\"alert(2)\"> ci-bot";

async fn scene() -> Scene {
    let gateway = Gateway::start(
        GatewayOptions::new()
            .with_route(
                Route::new("wiki.test", "wiki")
                    .plugin("org-check", "")
                    .plugin("authz", r#"{"rules":[{"methods":["GET","POST"]}]}"#),
            )
            .extra_config("[callers]\nmax_failures_per_minute = 100000"),
    )
    .await;
    let tunnel = gateway.create_tunnel(MARKUP_ORG, "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let agent = Agent::connect(
        &gateway,
        &tunnel,
        wiki.addr(),
        AgentOptions::new().name("wiki-agent-1"),
    )
    .await;
    let caller = gateway.caller(&gateway.create_caller(MARKUP_ORG).await);
    Scene {
        gateway,
        tunnel,
        _agent: agent,
        _wiki: wiki,
        org: MARKUP_ORG,
        caller,
    }
}

/// Opens the dashboard at `hash` ("" for its start).
async fn open(browser: &Browser, gateway: &Gateway, hash: &str) {
    browser
        .goto(&format!("http://{}/ui/{hash}", gateway.admin()))
        .await
        .unwrap();
}

async fn click(browser: &Browser, css: &str) {
    browser.find(css).await.unwrap().click().await.unwrap();
}

async fn type_in(browser: &Browser, css: &str, text: &str) {
    browser
        .find(css)
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

async fn text_of(browser: &Browser, css: &str) -> String {
    browser.find(css).await.unwrap().text().await.unwrap()
}

/// Waits until the page `page` has drawn its data.
async fn wait_page(browser: &Browser, page: &str) {
    browser
        .wait_for(&format!("main#view[data-page={page}]"), PATIENCE)
        .await
        .unwrap();
}

/// Opens the dashboard and signs in with `token` by typing it.
async fn sign_in(browser: &Browser, gateway: &Gateway, token: &str) {
    open(browser, gateway, "").await;
    let field = browser.wait_for("#token", PATIENCE).await.unwrap();
    field.send_keys(token).await.unwrap();
    click(browser, "#signin-submit").await;
    wait_page(browser, "tunnels").await;
}

async fn visit(browser: &Browser, hash: &str, page: &str) {
    click(browser, &format!("nav a[href=\"{hash}\"]")).await;
    wait_page(browser, page).await;
}

/// Confirms the open confirmation panel (typing `typed` first if given).
async fn confirm(browser: &Browser, typed: Option<&str>) {
    browser.wait_for("#confirm", PATIENCE).await.unwrap();
    if let Some(text) = typed {
        type_in(browser, "#confirm-input", text).await;
    }
    click(browser, "#confirm-yes").await;
    browser.wait_gone("#confirm", PATIENCE).await.unwrap();
}

/// The secret shown once, after which the panel is dismissed.
async fn take_secret(browser: &Browser) -> String {
    let secret = browser
        .wait_text("#secret-value", |t: &str| !t.trim().is_empty(), PATIENCE)
        .await
        .unwrap();
    click(browser, "#secret-done").await;
    browser.wait_gone("#secret", PATIENCE).await.unwrap();
    secret.trim().to_string()
}

fn rate_of(text: &str) -> f64 {
    text.trim()
        .trim_end_matches("/s")
        .trim()
        .parse()
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_and_runs_the_gateway_from_the_dashboard() {
    let s = scene().await;
    let gateway = &s.gateway;
    let write = gateway.admin_token("write").await;
    let browser = browser().await;

    // A wrong token does not get in, and the browser keeps no session.
    open(&browser, gateway, "").await;
    browser
        .wait_for("#token", PATIENCE)
        .await
        .unwrap()
        .send_keys("at_not-a-real-token")
        .await
        .unwrap();
    click(&browser, "#signin-submit").await;
    let said = browser
        .wait_text("#signin-error", |t: &str| !t.is_empty(), PATIENCE)
        .await
        .unwrap();
    assert!(said.contains("unknown or revoked admin token"), "{said}");
    assert!(!browser
        .find("nav")
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap());
    assert!(browser.cookies().await.unwrap().is_empty());
    shot(&browser, "sign-in").await;

    // The right one does; the session is a cookie the page cannot read.
    browser.find("#token").await.unwrap().clear().await.unwrap();
    sign_in(&browser, gateway, &write).await;
    let cookies = browser.cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "tunnel_admin_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    let script_sees = browser
        .execute("return document.cookie;", vec![])
        .await
        .unwrap();
    assert_eq!(script_sees, json!(""), "the page's scripts see the cookie");
    let who = text_of(&browser, "#whoami").await;
    assert!(who.contains("ops-write"), "{who}");

    // The tunnel, its organization shown as text, its agent connected.
    let row = "tr[data-tunnel=wiki]";
    browser
        .wait_text(&format!("{row} .agents"), "1", PATIENCE)
        .await
        .unwrap();
    let org = text_of(&browser, &format!("{row} .org")).await;
    assert_eq!(org, s.org, "the organization's name is shown as text");
    let injected = browser
        .execute(
            "return document.querySelectorAll('main script, main img').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(0), "markup in a name became elements");

    // Requests pass: the rate moves without a reload.
    let before = rate_of(&text_of(&browser, &format!("{row} .rate")).await);
    assert_eq!(before, 0.0, "no requests yet");
    let load = RequestLoop::start(&s.caller, "wiki.test", "/load", 2);
    load.wait_more(20).await;
    let moved = browser
        .wait_text(
            &format!("{row} .rate"),
            |t: &str| rate_of(t) > 0.0,
            PATIENCE,
        )
        .await
        .unwrap();
    assert!(rate_of(&moved) > 0.0, "{moved}");
    assert!(
        !browser
            .find_all(&format!("{row} svg.spark"))
            .await
            .unwrap()
            .is_empty(),
        "no chart"
    );
    shot(&browser, "tunnels").await;

    // One tunnel: its agent, its route with the plugin chain.
    click(&browser, &format!("{row} .name a")).await;
    wait_page(&browser, "tunnel").await;
    let conn = gateway.conn_id("wiki-agent-1");
    let agent_row = format!("tr[data-conn=\"{conn}\"]");
    browser
        .wait_text(&format!("{agent_row} .name"), "wiki-agent-1", PATIENCE)
        .await
        .unwrap();
    let chain = text_of(&browser, "tr[data-route] .plugins").await;
    assert!(
        chain.find("org-check").unwrap() < chain.find("authz").unwrap(),
        "chain in order: {chain}"
    );
    browser
        .wait_for("svg#tunnel-chart", PATIENCE)
        .await
        .unwrap();
    // The requests go on while the page is open: its own rate moves too.
    browser
        .wait_text("#tunnel-rate", |t: &str| rate_of(t) > 0.0, PATIENCE)
        .await
        .unwrap();
    shot(&browser, "tunnel").await;
    let outcomes = load.stop().await;
    assert!(
        outcomes.iter().all(|o| o.result == Ok(200)),
        "{:?}",
        tests::admin::failures(&outcomes)
    );

    // Rotate the key: shown once, and it is the tunnel's key from now on.
    click(&browser, "#rotate-key").await;
    let key = take_secret(&browser).await;
    assert!(key.len() >= 40, "a key: {key}");
    let api = gateway.api(&write);
    let t = api.get("/v1/tunnels/wiki").await.expect(200, "show");
    assert_eq!(t.json["key_generation"], 1, "{:?}", t.json);
    assert!(!browser
        .execute("return document.body.innerText;", vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .contains(&key));
    let new_key_agent = Agent::connect(
        gateway,
        &tests::Tunnel {
            key: key.clone(),
            ..s.tunnel.clone()
        },
        s._wiki.addr(),
        AgentOptions::new().name("wiki-agent-2"),
    )
    .await;
    let second = gateway.conn_id("wiki-agent-2");
    browser
        .wait_for(&format!("tr[data-conn=\"{second}\"]"), PATIENCE)
        .await
        .unwrap();

    // Disconnect the first agent: its row goes (it dials again with the
    // previous key, still valid during the overlap, as a new connection).
    click(&browser, &format!("{agent_row} button.disconnect")).await;
    confirm(&browser, None).await;
    browser.wait_gone(&agent_row, PATIENCE).await.unwrap();
    // Drain the second: idle, it leaves at once, and says why.
    let mark = gateway.events().mark();
    click(
        &browser,
        &format!("tr[data-conn=\"{second}\"] button.drain"),
    )
    .await;
    let (gone, _) = tests::lifecycle::disconnected(gateway, mark, "wiki-agent-2").await;
    assert!(
        tests::lifecycle::reason(&gone).contains("drained by operator"),
        "{gone}"
    );
    browser
        .wait_gone(&format!("tr[data-conn=\"{second}\"]"), PATIENCE)
        .await
        .unwrap();
    drop(new_key_agent);

    // Callers: create one (named with markup), use it, revoke it.
    visit(&browser, "#/callers", "callers").await;
    type_in(&browser, "#new-caller-org", s.org).await;
    type_in(&browser, "#new-caller-name", MARKUP_NAME).await;
    click(&browser, "form#new-caller button[type=submit]").await;
    let token = take_secret(&browser).await;
    assert!(token.starts_with("ct_"), "{token}");
    let listed = api.get("/v1/callers").await.expect(200, "callers");
    let id = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == MARKUP_NAME)
        .map(|c| c["id"].as_str().unwrap().to_string())
        .expect("the new caller is listed");
    let caller_row = format!("tr[data-caller=\"{id}\"]");
    let shown = browser
        .wait_text(&format!("{caller_row} .name"), MARKUP_NAME, PATIENCE)
        .await
        .unwrap();
    assert_eq!(shown, MARKUP_NAME);
    let new_caller = gateway.caller(&token);
    assert_eq!(new_caller.get("wiki.test", "/hi").send().await.status, 200);
    click(&browser, &format!("{caller_row} button.revoke")).await;
    confirm(&browser, None).await;
    browser
        .wait_text(&format!("{caller_row} .state"), "revoked", PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        new_caller.get("wiki.test", "/after").send().await.status,
        401,
        "a caller revoked from the dashboard is refused"
    );
    shot(&browser, "callers").await;

    // Refusals: the revoked caller's 401 and authz's denial, with the
    // plugin's name, and never a token or a query string.
    let denied = s
        .caller
        .request(http::Method::DELETE, "wiki.test", "/page?secret=s3cr3t")
        .send()
        .await;
    assert_eq!(denied.status, 403, "{denied:?}");
    visit(&browser, "#/refusals", "refusals").await;
    browser
        .wait_text("#refusals tr .plugin", "authz", PATIENCE)
        .await
        .unwrap();
    browser
        .wait_text("#refusals tr .status", "401", PATIENCE)
        .await
        .unwrap();
    let page = browser
        .execute("return document.documentElement.outerHTML;", vec![])
        .await
        .unwrap();
    let page = page.as_str().unwrap();
    for secret in [token.as_str(), "s3cr3t", key.as_str(), write.as_str()] {
        assert!(!page.contains(secret), "the page shows {secret}");
    }
    shot(&browser, "refusals").await;

    // Plugins: the loaded version's SHA-256 is the file's; a broken
    // replacement is in the history, the loaded version still serves.
    let file = std::fs::read(plugins_dir().join("authz.wasm")).unwrap();
    let mark = gateway.events().mark();
    gateway.replace_plugin("authz", b"not a component");
    gateway
        .wait_for_since(mark, "plugin_rejected", &[("plugin", "authz")])
        .await;
    visit(&browser, "#/plugins", "plugins").await;
    browser
        .wait_text("#plugin-history tr", "rejected", PATIENCE)
        .await
        .unwrap();
    let sha = hex::encode(Sha256::digest(&file));
    browser
        .wait_text("tr[data-plugin=authz] .sha256", sha.as_str(), PATIENCE)
        .await
        .unwrap();
    let decisions = text_of(&browser, "tr[data-plugin=authz] .decisions").await;
    assert!(
        decisions.contains("deny") || decisions.contains('1'),
        "{decisions}"
    );
    shot(&browser, "plugins").await;

    // Audit: every change above, by this token, from the dashboard.
    visit(&browser, "#/audit", "audit").await;
    for action in [
        "tunnel.rotate_key",
        "agent.disconnect",
        "caller.create",
        "caller.revoke",
    ] {
        browser
            .wait_text("#audit tr .action", action, PATIENCE)
            .await
            .unwrap();
    }
    let audit: Vec<Value> = gateway.audit_list().await;
    let revoke = tests::admin::find_audit(&audit, "caller.revoke", &id);
    assert!(
        revoke["actor"].as_str().unwrap().contains("ops-write"),
        "{revoke}"
    );
    assert!(
        revoke["source"].as_str().unwrap().contains("dashboard"),
        "{revoke}"
    );
    shot(&browser, "audit").await;

    // A tunnel made and deleted from the page (deleting asks for its name).
    visit(&browser, "#/tunnels", "tunnels").await;
    type_in(&browser, "#new-tunnel-org", "acme").await;
    type_in(&browser, "#new-tunnel-name", "scratch").await;
    click(&browser, "form#new-tunnel button[type=submit]").await;
    let scratch_key = take_secret(&browser).await;
    assert!(!scratch_key.is_empty());
    browser
        .wait_for("tr[data-tunnel=scratch] .name a", PATIENCE)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_page(&browser, "tunnel").await;
    click(&browser, "#delete-tunnel").await;
    browser.wait_for("#confirm", PATIENCE).await.unwrap();
    // Not without the name typed.
    click(&browser, "#confirm-yes").await;
    assert_eq!(
        api.get("/v1/tunnels/scratch").await.status,
        200,
        "deleted without the name typed"
    );
    confirm(&browser, Some("scratch")).await;
    wait_page(&browser, "tunnels").await;
    browser
        .wait_gone("tr[data-tunnel=scratch]", PATIENCE)
        .await
        .unwrap();
    assert_eq!(api.get("/v1/tunnels/scratch").await.status, 404);

    // Signing out ends the session on the server too.
    let cookie = format!(
        "tunnel_admin_session={}",
        session["value"].as_str().unwrap()
    );
    click(&browser, "#signout").await;
    browser.wait_for("#token", PATIENCE).await.unwrap();
    let after = gateway
        .anonymous_api()
        .with_header("cookie", &cookie)
        .get("/v1/tunnels")
        .await;
    assert_eq!(after.status, 401, "{after:?}");
    browser.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_sees_everything_changes_nothing_and_keyboard_alone_suffices() {
    let s = scene().await;
    let gateway = &s.gateway;
    let read = gateway.admin_token("read").await;
    let browser = browser().await;
    open(&browser, gateway, "").await;
    browser.wait_for("#token", PATIENCE).await.unwrap();

    // Keyboard only: Tab to the token field, type, Enter.
    let mut on_token = false;
    for _ in 0..10 {
        browser.press_key(key::TAB).await.unwrap();
        let id = browser
            .active_element()
            .await
            .unwrap()
            .attr("id")
            .await
            .unwrap();
        if id.as_deref() == Some("token") {
            on_token = true;
            break;
        }
    }
    assert!(on_token, "Tab never reached the token field");
    for c in read.chars() {
        browser.press_key(&c.to_string()).await.unwrap();
    }
    browser.press_key(key::ENTER).await.unwrap();
    wait_page(&browser, "tunnels").await;
    let who = text_of(&browser, "#whoami").await;
    assert!(who.contains("read"), "{who}");
    browser
        .wait_text("tr[data-tunnel=wiki] .agents", "1", PATIENCE)
        .await
        .unwrap();

    // Nothing to change with: no forms, no buttons that change.
    let write_controls = "#new-tunnel, #new-caller, #rotate-key, #delete-tunnel, \
                          button.drain, button.disconnect, button.revoke";
    assert!(browser.find_all(write_controls).await.unwrap().is_empty());

    // Keyboard only: Tab to the Callers link and follow it with Enter.
    let mut on_link = false;
    for _ in 0..30 {
        browser.press_key(key::TAB).await.unwrap();
        let href = browser
            .active_element()
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap();
        if href.as_deref().is_some_and(|h| h.ends_with("#/callers")) {
            on_link = true;
            break;
        }
    }
    assert!(on_link, "Tab never reached the Callers link");
    browser.press_key(key::ENTER).await.unwrap();
    wait_page(&browser, "callers").await;
    assert!(browser.find_all(write_controls).await.unwrap().is_empty());
    browser
        .find("tr[data-tunnel], #callers tbody tr")
        .await
        .expect("the callers are listed");

    // The tunnel page shows the agent, without its buttons.
    open(&browser, gateway, "#/tunnel/wiki").await;
    browser
        .wait_for("main#view[data-page=tunnel] tr[data-conn]", PATIENCE)
        .await
        .unwrap();
    assert!(browser.find_all(write_controls).await.unwrap().is_empty());

    // And the API refuses the session a change even with its CSRF token.
    let answer = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/ui/session').then(r => r.json()).then(me =>
               fetch('/v1/tunnels', {method: 'POST', headers: {
                   'content-type': 'application/json', 'x-csrf-token': me.csrf},
                 body: JSON.stringify({org: 'acme', name: 'sneaky'})}))
             .then(r => r.json().then(b => done([r.status, b.error])))
             .catch(e => done([0, String(e)]));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(answer[0], 403, "{answer}");
    assert!(
        answer[1].as_str().unwrap().contains("read-only"),
        "{answer}"
    );
    let tunnels = gateway.api(&read).get("/v1/tunnels").await.json;
    assert_eq!(tunnels.as_array().unwrap().len(), 1, "{tunnels}");

    // The session cookie never reaches a service, whatever its host.
    let echoed = s
        .caller
        .get("wiki.test", "/cookies")
        .header("cookie", "theme=dark; tunnel_admin_session=abc")
        .send()
        .await
        .echo();
    assert_eq!(echoed.header("cookie"), Some("theme=dark"), "{echoed:?}");

    // The agent gone, a request fails: the tunnel's last error says why.
    drop(s._agent);
    open(&browser, gateway, "#/tunnels").await;
    browser
        .wait_text("tr[data-tunnel=wiki] .agents", "0", PATIENCE)
        .await
        .unwrap();
    let failed = s.caller.get("wiki.test", "/down").send().await;
    assert_eq!(failed.status, 503, "{failed:?}");
    let last = browser
        .wait_text(
            "tr[data-tunnel=wiki] .last-error",
            "no agent is connected",
            PATIENCE,
        )
        .await
        .unwrap();
    assert!(last.contains("503"), "{last}");
    browser
        // Of its two requests in the last minute (the cookie's and this one).
        .wait_text("tr[data-tunnel=wiki] .error-rate", "50%", PATIENCE)
        .await
        .unwrap();

    // Readable on a phone: the page itself does not scroll sideways.
    browser.set_window_size(390, 844).await.unwrap();
    open(&browser, gateway, "#/tunnels").await;
    wait_page(&browser, "tunnels").await;
    let widths = browser
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        widths[0].as_u64().unwrap() <= widths[1].as_u64().unwrap(),
        "the page scrolls sideways on a phone: {widths}"
    );
    shot(&browser, "tunnels-phone").await;
    browser.quit().await.unwrap();
}

/// The session's rules, without a browser: what a forged or stale request
/// meets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_session_needs_its_csrf_token_and_dies_with_its_admin_token() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let (id, write) = gateway.admin_token_with_id("ops", "write").await;
    let anon = gateway.anonymous_api();

    let page = anon.get("/ui/").await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive}");
    }
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(!page.text.contains("<script>"), "inline script in the page");
    assert_eq!(anon.get("/ui/nope.js").await.status, 404);

    // A form cannot sign in (no JSON, no sign-in by forgery); a wrong token
    // cannot either.
    let form = anon
        .clone()
        .with_header("content-type", "application/x-www-form-urlencoded")
        .request(http::Method::POST, "/ui/session", Some(b"token=x".to_vec()))
        .await;
    assert_eq!(form.status, 415, "{form:?}");
    let wrong = anon.post("/ui/session", json!({"token": "at_wrong"})).await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(wrong.header("set-cookie").is_none());

    let signed = anon.post("/ui/session", json!({"token": write})).await;
    assert_eq!(signed.status, 200, "{signed:?}");
    let set = signed.header("set-cookie").unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !signed.text.contains(&write),
        "the answer repeats the token"
    );
    let csrf = signed.json["csrf"].as_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let session = anon.clone().with_header("cookie", &cookie);

    // Reads need only the cookie; a change also needs the CSRF token, and
    // not from another site.
    assert_eq!(session.get("/v1/tunnels").await.status, 200);
    // Hostile or mistyped input gets a clear 4xx, never a panic.
    for (path, status) in [
        ("/v1/activity?tunnel=../etc", 400),
        ("/v1/activity?tunnel=wiki&x=1", 400),
        ("/v1/activity?tunnel=wiki", 200),
        ("/v1/refusals?limit=0", 400),
        ("/v1/refusals?limit=501", 400),
        ("/v1/refusals?limit=x", 400),
        ("/v1/plugins?x=1", 400),
        ("/ui/../Cargo.toml", 404),
    ] {
        let got = session.get(path).await;
        assert_eq!(got.status, status, "{path}: {got:?}");
    }
    let typed = anon.post("/ui/session", json!({"token": 5})).await;
    assert_eq!(typed.status, 400, "{typed:?}");
    assert!(typed.error().contains("token"), "{typed:?}");
    let extra = anon
        .post("/ui/session", json!({"token": "at_x", "admin": true}))
        .await;
    assert_eq!(extra.status, 400, "{extra:?}");
    let put = anon.request(http::Method::PUT, "/ui/session", None).await;
    assert_eq!(put.status, 405, "{put:?}");
    let new = json!({"org": "acme", "name": "wiki"});
    let forged = session.post("/v1/tunnels", new.clone()).await;
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(forged.error().contains("CSRF"), "{forged:?}");
    let cross = session
        .clone()
        .with_header("x-csrf-token", &csrf)
        .with_header("sec-fetch-site", "cross-site")
        .post("/v1/tunnels", new.clone())
        .await;
    assert_eq!(cross.status, 403, "{cross:?}");
    let made = session
        .clone()
        .with_header("x-csrf-token", &csrf)
        .post("/v1/tunnels", new)
        .await;
    assert_eq!(made.status, 201, "{made:?}");

    // The admin token revoked: the session ends with it.
    gateway
        .api(&write)
        .post(&format!("/v1/admin-tokens/{id}/revoke"), json!({}))
        .await
        .expect(200, "revoke");
    let stale = session.get("/v1/tunnels").await;
    assert_eq!(stale.status, 401, "{stale:?}");
    assert_eq!(session.get("/ui/session").await.status, 401);
}

/// `POST path` with a JSON body to an HTTPS admin listener, trusting only
/// the test's CA: status, `Set-Cookie` and body.
async fn https_post(
    addr: std::net::SocketAddr,
    pki: &tests::Pki,
    path: &str,
    body: Value,
) -> (u16, Option<String>, String) {
    use http_body_util::BodyExt as _;
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(pki.root_store())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .expect("TLS to the admin listener, verified against the test CA");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(tests::body::full(body.to_string()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, cookie, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_session_cookie_is_secure_and_the_cli_pins_the_listener() {
    let pki = tests::Pki::generate();
    let files = pki.issue("admin", &["127.0.0.1"]);
    let quoted = |p: &std::path::Path| format!("\"{}\"", p.display());
    let gateway = Gateway::start(
        GatewayOptions::new()
            .pki(pki.clone())
            .route("wiki.test", "wiki")
            .admin_setting("tls_cert", &quoted(&files.cert))
            .admin_setting("tls_key", &quoted(&files.key)),
    )
    .await;
    // The CLI reaches the running gateway through its HTTPS listener: the
    // change is audited as coming from an address, not from the store.
    let (_, write) = gateway.admin_token_with_id("ops", "write").await;
    let made = gateway
        .try_cli(&["caller", "create", "--org", "acme"])
        .await;
    assert!(made.status.success(), "{made:?}");
    assert!(
        !made.stderr.contains("working on the store directly"),
        "the CLI did not get through: {made:?}"
    );
    let audit = gateway.audit_list().await;
    let created = audit
        .iter()
        .find(|e| e["action"] == "caller.create")
        .expect("audited");
    assert!(
        created["source"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{created}"
    );

    let (status, cookie, body) = https_post(
        gateway.admin(),
        &pki,
        "/ui/session",
        json!({"token": write}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cookie = cookie.expect("a session cookie");
    assert!(
        cookie.starts_with("__Host-tunnel_admin_session="),
        "over HTTPS no other host may set it: {cookie}"
    );
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );

    // Plain HTTP gets no answer from it.
    let mut plain = tokio::net::TcpStream::connect(gateway.admin())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut got)).await;
    assert!(!got.starts_with(b"HTTP/"), "plain HTTP was answered");

    // A listener whose certificate is not the announced one is not
    // trusted by the CLI: it says so, and works on the store instead.
    let runtime = gateway.config_path().with_file_name("gateway.db.admin");
    let text = std::fs::read_to_string(&runtime).expect("runtime file");
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["tls_sha256"] = json!("00".repeat(32));
    std::fs::write(&runtime, v.to_string()).unwrap();
    let impostor = gateway.try_cli(&["tunnel", "list"]).await;
    assert!(
        impostor
            .stderr
            .contains("is not the one the running gateway announced"),
        "{impostor:?}"
    );

    // A certificate without its key is a configuration error.
    let refused = Gateway::start_expecting_failure(
        GatewayOptions::new()
            .pki(pki.clone())
            .admin_setting("tls_cert", &quoted(&files.cert)),
    )
    .await;
    assert!(refused.contains("admin.tls_key"), "{refused}");
}
