//! Story: callers reach the gateway over HTTPS, with HTTP/1.1 or HTTP/2,
//! and the on-prem service learns the original scheme.

use tests::setup::WikiTunnel;
use tests::{body, pattern, upstream, GatewayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_use_https_with_http1_or_http2() {
    let opts = GatewayOptions::new().public_tls();
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;

    for http2 in [false, true] {
        let caller = t.gateway.https_caller(&t.token, http2);
        let echo = caller
            .get("wiki.test", "/secure/page?x=1")
            .send()
            .await
            .echo();
        assert_eq!(echo.target, "/secure/page?x=1", "http2={http2}");
        assert_eq!(
            echo.header("host"),
            Some("wiki.test"),
            "http2={http2}: {echo:?}"
        );
        assert_eq!(
            echo.all("x-forwarded-proto"),
            ["https"],
            "http2={http2}: {echo:?}"
        );
        assert_eq!(
            echo.header("proxy-authorization"),
            None,
            "http2={http2}: {echo:?}"
        );

        let n = 3 << 20;
        let up = caller
            .post("wiki.test", "/upload", body::pattern(n))
            .send()
            .await
            .echo();
        assert_eq!(
            (up.body_len, up.body_sha256),
            (n, pattern::sha256(n)),
            "http2={http2}"
        );
        let down = caller
            .get("wiki.test", &format!("/bytes/{n}"))
            .send_hashing()
            .await;
        assert_eq!(
            (down.len, down.sha256),
            (n, pattern::sha256(n)),
            "http2={http2}"
        );
    }

    let anonymous = t.gateway.https_caller("not-a-token", true);
    assert_eq!(anonymous.get("wiki.test", "/").send().await.status, 401);
}
