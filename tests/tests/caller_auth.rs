//! Story: only callers holding a caller token get through, and the token
//! never reaches the on-prem service.

use tests::setup::WikiTunnel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_a_token_gets_401() {
    let t = WikiTunnel::start().await;
    let reply = t
        .gateway
        .anonymous_caller()
        .get("wiki.test", "/")
        .send()
        .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(
        t.wiki.requests(),
        0,
        "a refused caller must not reach the service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_an_unknown_or_malformed_token_gets_401() {
    let t = WikiTunnel::start().await;
    let forged = t.caller.with_token("not-a-real-token");
    assert_eq!(forged.get("wiki.test", "/").send().await.status, 401);
    let mangled = format!("{}x", t.token);
    assert_eq!(
        t.caller
            .with_token(&mangled)
            .get("wiki.test", "/")
            .send()
            .await
            .status,
        401
    );
    let basic = t
        .gateway
        .anonymous_caller()
        .get("wiki.test", "/")
        .header("proxy-authorization", &format!("Basic {}", t.token))
        .send()
        .await;
    assert_eq!(
        basic.status, 401,
        "only Bearer is a caller credential: {basic:?}"
    );
    assert_eq!(t.wiki.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_caller_gets_through_and_its_token_is_not_forwarded() {
    let t = WikiTunnel::start().await;
    let reply = t
        .caller
        .get("wiki.test", "/rest/api/2/issue/X-1")
        .send()
        .await;
    let echo = reply.echo();
    assert_eq!(echo.target, "/rest/api/2/issue/X-1");
    assert_eq!(
        echo.header("proxy-authorization"),
        None,
        "caller token leaked: {echo:?}"
    );
    assert!(
        !echo.headers.iter().any(|(_, v)| v.contains(&t.token)),
        "caller token leaked in some header: {echo:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_belong_to_the_gateway_that_issued_them() {
    let t = WikiTunnel::start().await;
    let other = WikiTunnel::start().await;
    let stranger = t.caller.with_token(&other.token);
    assert_eq!(stranger.get("wiki.test", "/").send().await.status, 401);
}
