//! Story: OAuth 1.0a requests (what Atlassian application links send) are
//! judged at the edge by the `oauth1` plugin, and an independent
//! implementation agrees on both ends: Python's oauthlib signs the
//! requests, and the local service behind the agent verifies every one it
//! receives again with oauthlib.
//!
//! Callers sign the public URL they know (`https://jira.example.com/...`),
//! not the gateway's address; the route's `public_base_url` says so.
//!
//! - an RSA-SHA1 GET with a query passes, and reaches the service with its
//!   Authorization header and query intact (the service verifies it);
//! - an altered path or query, a wrong RSA key, a stale timestamp or a
//!   replayed request is refused with 401, `oauth_problem=...` and
//!   `WWW-Authenticate: OAuth`, and never reaches the service;
//! - an HMAC-SHA1 request with a token passes; a wrong consumer secret
//!   does not;
//! - a signed form POST passes with its body intact (OAuth parameters in
//!   the header or in the body); one altered body parameter is refused;
//! - a request without OAuth is refused, unless the route allows unsigned
//!   requests (where signed ones are still checked).

use serde_json::{json, Value};
use tests::caller::Call;
use tests::upstream::oauthlib::{self, OauthService, Sign, Signed};
use tests::{Agent, AgentOptions, Gateway, GatewayOptions, Reply, Route};

/// What callers sign against, deliberately not the gateway's address.
const PUBLIC: &str = "https://jira.example.com";
/// The key pair of the RSA-SHA1 vector in `shared/oauth1-vectors.md`.
const RSA_PUBLIC_KEY: &str = include_str!("../oauth/rsa-sha1.pub.pem");
const RSA_PRIVATE_KEY: &str = include_str!("../oauth/rsa-sha1.key.pem");
/// An application link's consumer key (the `:` is percent-encoded in the
/// header oauthlib sends).
const RSA_CONSUMER: &str = "jira:1a2b3c4d";
/// The client and token credentials of RFC 5849 §1.2.
const HMAC_CONSUMER: &str = "dpf43f3p2l4k3l03";
const HMAC_SECRET: &str = "kd94hf93k423kf44";
const TOKEN: &str = "nnch734d00sl2jdk";
const TOKEN_SECRET: &str = "pfkkdhi9sl3r4s00";

/// A query with what encoders disagree on: `+` and `%20` for spaces, an
/// encoded `=` and `"`, a raw `~` and `,`, a repeated name, an empty value.
const SEARCH: &str = "/rest/api/2/search?jql=project%20%3D%20OPS+AND+text%20~%20%22edge%22\
                      &fields=summary,status&expand=names&expand=schema&startAt=&maxResults=5";
/// A form body with the same kind of parts.
const COMMENT: &str = "body=Deployed+via+the+gateway+%26+agent%21&visibility=role%3AAdmins\
                       &label=~edge&label=a%2Bb&notify=";

fn url(target: &str) -> String {
    format!("{PUBLIC}{target}")
}

/// The plugin's configuration, which the oauthlib service shares.
fn oauth1_config(allow_unsigned: bool) -> String {
    json!({
        "public_base_url": PUBLIC,
        "allow_unsigned": allow_unsigned,
        "consumers": [
            {"key": RSA_CONSUMER, "rsa_public_key": RSA_PUBLIC_KEY},
            {"key": HMAC_CONSUMER, "secret": HMAC_SECRET, "token_secrets": {TOKEN: TOKEN_SECRET}},
        ],
    })
    .to_string()
}

/// The service's answer to a request it verified itself.
fn verified(reply: &Reply, what: &str) -> Value {
    assert_eq!(
        reply.status, 200,
        "{what}: expected the service's 200: {reply:?}"
    );
    let answer: Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{what}: not the service's JSON ({e}): {reply:?}"));
    assert_eq!(
        answer["verified"], true,
        "{what}: oauthlib did not verify what the gateway let through: {answer:#}"
    );
    answer
}

/// Sends `call`, expects the plugin's 401 with `problem`, and checks the
/// service received nothing.
async fn refused(service: &OauthService, call: Call, problem: &str, what: &str) {
    let before = service.requests().await;
    let reply = call.send().await;
    assert_eq!(reply.status, 401, "{what}: {reply:?}");
    assert_eq!(
        reply.text(),
        format!("oauth_problem={problem}\n"),
        "{what}: the plugin's problem: {reply:?}"
    );
    assert_eq!(
        reply.header("www-authenticate"),
        Some("OAuth realm=\"jira.example.com\""),
        "{what}: the challenge: {reply:?}"
    );
    assert_eq!(
        service.requests().await,
        before,
        "{what}: a refused request reached the service: {:?}",
        service.seen().last()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth1_requests_are_verified_at_the_edge_as_oauthlib_verifies_them() {
    let strict = oauth1_config(false);
    let lenient = oauth1_config(true);
    let search = url(SEARCH);
    let issue = url("/rest/api/2/issue/OPS-1?expand=changelog");
    let comment = url("/rest/api/2/issue/OPS-1/comment");
    let rsa = |method: &str, url: &str| Sign::rsa(method, url, RSA_CONSUMER, RSA_PRIVATE_KEY);
    let hmac = |method: &str, url: &str| {
        Sign::hmac(method, url, HMAC_CONSUMER, HMAC_SECRET).token(TOKEN, TOKEN_SECRET)
    };
    let requests = [
        rsa("GET", &search),
        rsa("GET", &search),
        rsa("GET", &search),
        Sign::rsa_with_a_wrong_key("GET", &search, RSA_CONSUMER),
        rsa("GET", &search).timestamp(tests::unix_now() - 3600),
        rsa("GET", &search),
        hmac("GET", &issue).realm("Jira"),
        Sign::hmac("GET", &issue, HMAC_CONSUMER, "not-the-secret").token(TOKEN, TOKEN_SECRET),
        hmac("POST", &comment).form_body(COMMENT),
        hmac("POST", &comment).form_body(COMMENT),
        hmac("POST", &comment).form_body(COMMENT).oauth_in_body(),
        Sign::rsa_with_a_wrong_key("GET", &search, RSA_CONSUMER),
    ];

    // Python signs and the service starts while the gateway starts.
    let (signed, service, gateway) = tokio::join!(
        oauthlib::sign(&requests),
        oauthlib::service(&strict),
        Gateway::start(
            GatewayOptions::new()
                .with_route(
                    Route::new("jira.test", "jira")
                        .form_body_bytes(4096)
                        .plugin("org-check", "")
                        .plugin("oauth1", &strict),
                )
                .with_route(
                    Route::new("jira-web.test", "jira")
                        .form_body_bytes(4096)
                        .plugin("org-check", "")
                        .plugin("oauth1", &lenient),
                ),
        ),
    );
    // In the order of `requests`.
    let mut signed = signed.into_iter();
    let mut next = move || -> Signed { signed.next().expect("one signed request each") };
    let (good, altered_path, altered_query, wrong_key) = (next(), next(), next(), next());
    let (stale, replayed, with_token, wrong_secret) = (next(), next(), next(), next());
    let (form, altered_form, oauth_in_form, wrong_key_web) = (next(), next(), next(), next());
    let tunnel = gateway.create_tunnel("acme", "jira").await;
    let _agent = Agent::connect(&gateway, &tunnel, service.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);

    // 1. RSA-SHA1 GET with a query: through, and verified again behind the
    // agent, so the header and the query arrived as signed.
    let answer = verified(
        &good.call(&caller, "jira.test").send().await,
        "RSA-SHA1 GET",
    );
    assert_eq!(answer["target"], SEARCH, "{answer:#}");
    assert_eq!(answer["authorization"], json!(good.authorization));
    assert_eq!(answer["consumer"], RSA_CONSUMER);
    assert_eq!(answer["signature_method"], "RSA-SHA1");
    assert_eq!(service.requests().await, 1);

    // 2. Refused at the edge, before the tunnel.
    let other_path = SEARCH.replacen("/search", "/user", 1);
    refused(
        &service,
        altered_path
            .with_target(&other_path)
            .call(&caller, "jira.test"),
        "signature_invalid",
        "altered path",
    )
    .await;
    let other_query = SEARCH.replacen("maxResults=5", "maxResults=500", 1);
    refused(
        &service,
        altered_query
            .with_target(&other_query)
            .call(&caller, "jira.test"),
        "signature_invalid",
        "altered query",
    )
    .await;
    refused(
        &service,
        wrong_key.call(&caller, "jira.test"),
        "signature_invalid",
        "wrong RSA key",
    )
    .await;
    refused(
        &service,
        stale.call(&caller, "jira.test"),
        "timestamp_refused",
        "timestamp an hour old",
    )
    .await;
    verified(
        &replayed.call(&caller, "jira.test").send().await,
        "first use of a nonce",
    );
    refused(
        &service,
        replayed.call(&caller, "jira.test"),
        "nonce_used",
        "the same signed request again",
    )
    .await;

    // 3. HMAC-SHA1 with a token.
    let answer = verified(
        &with_token.call(&caller, "jira.test").send().await,
        "HMAC-SHA1 with a token",
    );
    assert_eq!(answer["token"], TOKEN);
    assert_eq!(answer["signature_method"], "HMAC-SHA1");
    refused(
        &service,
        wrong_secret.call(&caller, "jira.test"),
        "signature_invalid",
        "wrong consumer secret",
    )
    .await;

    // 4. Signed form bodies: verified with the body as sent; one altered
    // parameter (same length, same Content-Length) is caught.
    let answer = verified(&form.call(&caller, "jira.test").send().await, "form POST");
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["body"], COMMENT, "the body arrives intact");
    assert_eq!(answer["content_type"], "application/x-www-form-urlencoded");
    let tampered = COMMENT.replacen("role%3AAdmins", "role%3AUsers!", 1);
    assert_eq!(tampered.len(), COMMENT.len());
    refused(
        &service,
        altered_form.with_body(&tampered).call(&caller, "jira.test"),
        "signature_invalid",
        "altered form parameter",
    )
    .await;
    let sent = oauth_in_form.body.clone().expect("a body");
    assert!(oauth_in_form.authorization.is_none() && sent.contains("oauth_signature="));
    let answer = verified(
        &oauth_in_form.call(&caller, "jira.test").send().await,
        "OAuth parameters in the form body",
    );
    assert_eq!(answer["body"], sent.as_str());
    assert_eq!(answer["authorization"], Value::Null);

    // 5. No OAuth at all: refused where `allow_unsigned` is false; let
    // through where it is true (the service serves it anonymously), where
    // signed requests are still verified.
    refused(
        &service,
        caller.get("jira.test", "/rest/api/2/myself"),
        "parameter_absent",
        "no OAuth",
    )
    .await;
    let reply = caller.get("jira-web.test", "/browse/OPS-1").send().await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let answer: Value = serde_json::from_slice(&reply.body).expect("the service's JSON");
    assert_eq!(answer["anonymous"], true, "{answer:#}");
    refused(
        &service,
        wrong_key_web.call(&caller, "jira-web.test"),
        "signature_invalid",
        "wrong RSA key where unsigned requests pass",
    )
    .await;

    // Everything that reached the service verified there (or was unsigned).
    let seen = service.seen();
    assert_eq!(service.requests().await, 6, "{seen:#?}");
    assert_eq!(seen.len(), 6, "the service's own answers: {seen:#?}");
    for answer in &seen {
        assert_eq!(answer["status"], 200, "{answer:#}");
    }
}
