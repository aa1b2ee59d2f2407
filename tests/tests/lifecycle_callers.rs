//! Story: a caller token leaks; the operator revokes it while it is in use
//! and the very next request is refused, other callers unaffected. Tokens
//! with an expiry stop working on their own; listings never show a token.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::admin::{find_audit, Operator, RequestLoop};
use tests::eventually;
use tests::setup::WikiTunnel;
use tests::{upstream, GatewayOptions};

fn id(v: &Value) -> String {
    v["id"].as_str().expect("caller id").to_string()
}

fn token(v: &Value) -> String {
    v["token"].as_str().expect("caller token").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_revoked_while_sending_is_refused_on_its_next_request() {
    // The loop keeps sending the revoked token: without a larger budget
    // for failed credentials its source would soon get 429 instead of 401.
    let opts = GatewayOptions::new().extra_config("[callers]\nmax_failures_per_minute = 100000");
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let gateway = &t.gateway;
    let leaked = gateway.create_named_caller("acme", "ci-bot", None).await;
    let leaked_caller = gateway.caller(&token(&leaked));

    let load = RequestLoop::start(&leaked_caller, "wiki.test", "/leaked", 2);
    // A connection the caller keeps open across the revoke.
    let mut kept = leaked_caller.keep_alive().await;
    assert_eq!(kept.get("wiki.test", "/kept").await.status, 200);
    load.wait_more(6).await;
    let asked = Instant::now();
    let revoked = gateway.cli_json(&["caller", "revoke", &id(&leaked)]).await;
    let answered = Instant::now();
    let on_kept = kept.get("wiki.test", "/kept-after").await;
    assert_eq!(
        on_kept.status, 401,
        "a connection authenticated before the revoke is still served: {on_kept:?}"
    );
    load.wait_more(6).await;
    let outcomes = load.stop().await;

    assert_eq!(revoked["id"], leaked["id"], "{revoked}");
    assert!(
        revoked["revoked_at"].is_u64(),
        "revoke should print revoked_at: {revoked}"
    );
    let before: Vec<_> = outcomes.iter().filter(|o| o.done < asked).collect();
    let after: Vec<_> = outcomes.iter().filter(|o| o.sent >= answered).collect();
    assert!(!before.is_empty() && !after.is_empty(), "{outcomes:?}");
    for o in &before {
        assert_eq!(o.result, Ok(200), "before the revoke: {o:?}");
    }
    let served: Vec<_> = after
        .iter()
        .filter(|o| o.result != Ok(401))
        .map(|o| {
            format!(
                "{} {:?} sent {:?} after revoke returned",
                o.target,
                o.result,
                o.sent - answered
            )
        })
        .collect();
    assert!(
        served.is_empty(),
        "{} of {} requests sent after `caller revoke` returned were not refused with 401:\n{}",
        served.len(),
        after.len(),
        served.join("\n")
    );

    // Everyone else keeps working.
    assert_eq!(t.caller.get("wiki.test", "/other").send().await.status, 200);
    let listed: Vec<Value> =
        serde_json::from_value(gateway.cli_json(&["caller", "list"]).await).unwrap();
    let entry = listed
        .iter()
        .find(|c| c["id"] == leaked["id"])
        .unwrap_or_else(|| panic!("revoked caller not listed: {listed:?}"));
    assert_eq!(entry["state"], "revoked", "{entry}");
    let audit = gateway.audit_list().await;
    let e = find_audit(&audit, "caller.revoke", &id(&leaked));
    assert!(
        e["actor"].as_str().unwrap_or_default().starts_with("cli:"),
        "{e}"
    );

    let unknown = gateway
        .try_cli(&["caller", "revoke", "cal_doesnotexist"])
        .await;
    assert!(
        !unknown.status.success(),
        "revoking an unknown caller succeeded: {unknown:?}"
    );
    assert!(unknown.stderr.contains("cal_doesnotexist"), "{unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_revoked_while_the_gateway_is_stopped_is_refused_after_restart() {
    let mut t = WikiTunnel::start().await;
    let leaked = t.gateway.create_named_caller("acme", "old-job", None).await;
    t.gateway.terminate().await;
    t.gateway.cli(&["caller", "revoke", &id(&leaked)]).await;
    t.gateway.restart().await;
    t.agent.wait_connected().await;
    let refused = t
        .gateway
        .caller(&token(&leaked))
        .get("wiki.test", "/")
        .send()
        .await;
    assert_eq!(refused.status, 401, "{refused:?}");
    let fine = t
        .gateway
        .caller(&t.token)
        .get("wiki.test", "/")
        .send()
        .await;
    assert_eq!(fine.status, 200);
    let audit = t.gateway.audit_list().await;
    assert_eq!(
        find_audit(&audit, "caller.revoke", &id(&leaked))["source"],
        "local"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_token_stops_working_when_it_expires() {
    let t = WikiTunnel::start().await;
    let created_at = Instant::now();
    let short = t
        .gateway
        .create_named_caller("acme", "temp", Some("3s"))
        .await;
    assert!(
        short["expires_at"].is_u64(),
        "expires_at should be printed: {short}"
    );
    let caller = t.gateway.caller(&token(&short));
    let first = caller.get("wiki.test", "/").send().await;
    assert_eq!(first.status, 200, "a fresh token with an expiry: {first:?}");
    assert!(
        created_at.elapsed() < Duration::from_millis(1500),
        "too slow to prove anything"
    );

    let refused_at = eventually(
        "the expired token is refused",
        Duration::from_secs(6),
        || {
            let caller = caller.clone();
            async move {
                match caller
                    .get("wiki.test", "/poll")
                    .send()
                    .await
                    .status
                    .as_u16()
                {
                    401 => Ok(Instant::now()),
                    other => Err(format!("status {other}")),
                }
            }
        },
    )
    .await;
    // Expiry is kept in whole seconds: a 3 s token lives 2 to 3 s.
    assert!(
        refused_at - created_at >= Duration::from_millis(1900),
        "refused {:?} after creation, before its 3 s expiry",
        refused_at - created_at
    );
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 401);
    assert_eq!(t.caller.get("wiki.test", "/").send().await.status, 200);

    let listed: Vec<Value> =
        serde_json::from_value(t.gateway.cli_json(&["caller", "list"]).await).unwrap();
    let entry = listed
        .iter()
        .find(|c| c["id"] == short["id"])
        .expect("listed");
    assert_eq!(entry["state"], "expired", "{entry}");

    let bad = t
        .gateway
        .try_cli(&["caller", "create", "--org", "acme", "--expires", "soon"])
        .await;
    assert!(
        !bad.status.success(),
        "--expires soon was accepted: {bad:?}"
    );
    assert!(
        bad.stderr.contains("expires"),
        "the error should name --expires: {bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_listed_by_name_and_prefix_never_by_token() {
    let t = WikiTunnel::start().await;
    let gateway = &t.gateway;
    let one = gateway.create_named_caller("acme", "billing", None).await;
    let two = gateway
        .create_named_caller("acme", "reports", Some("30d"))
        .await;
    let read = gateway.admin_token("read").await;

    let cli = gateway.cli_json(&["caller", "list"]).await;
    let api = gateway
        .api(&read)
        .get("/v1/callers")
        .await
        .expect(200, "GET /v1/callers")
        .json;
    let plain = gateway.cli(&["caller", "list"]).await;
    for (how, listed) in [("cli", &cli), ("api", &api)] {
        let listed = listed
            .as_array()
            .unwrap_or_else(|| panic!("{how}: not a list: {listed}"));
        for (created, name) in [(&one, "billing"), (&two, "reports")] {
            let tok = token(created);
            let entry = listed
                .iter()
                .find(|c| c["id"] == created["id"])
                .unwrap_or_else(|| panic!("{how}: {name} missing from {listed:?}"));
            assert_eq!(entry["name"], name, "{how}: {entry}");
            assert_eq!(entry["org"], "acme", "{how}: {entry}");
            assert_eq!(entry["token_prefix"], &tok[3..11], "{how}: {entry}");
            assert_eq!(entry["state"], "active", "{how}: {entry}");
            assert!(entry.get("token").is_none(), "{how}: {entry}");
        }
    }
    assert!(
        plain.contains("billing") && plain.contains(&token(&one)[3..11]),
        "{plain}"
    );
    for text in [cli.to_string(), api.to_string(), plain] {
        for created in [&one, &two] {
            assert!(
                !text.contains(&token(created)),
                "a token was listed: {text}"
            );
        }
        assert!(!text.contains(&t.token), "a token was listed: {text}");
    }
}
