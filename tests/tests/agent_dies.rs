//! Story: when the agent dies mid-request, or the local service is down,
//! the caller gets a prompt 502, never a hang.

use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;

use tests::setup::WikiTunnel;
use tests::{upstream, Agent, AgentOptions, Gateway, GatewayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_agent_mid_request_gives_502() {
    let mut t = WikiTunnel::start().await;
    // The service would answer in 60 s; the caller must not wait for that.
    let call = t
        .caller
        .get("wiki.test", "/slow/60000")
        .timeout(Duration::from_secs(20));
    let pending = tokio::spawn(call.try_send());
    t.wiki.wait_requests(1, Duration::from_secs(10)).await;

    let killed_at = Instant::now();
    t.agent.kill();
    let reply = pending
        .await
        .unwrap()
        .expect("an HTTP answer after the agent died");
    let took = killed_at.elapsed();
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(
        reply
            .text()
            .contains("of tunnel `wiki` was lost after the request reached it"),
        "{:?}",
        reply.text()
    );
    // The dead agent's connection closes with its process: the gateway
    // knows at once, not at a heartbeat or the service's 60 s.
    assert!(
        took < Duration::from_secs(3),
        "502 took {took:?} after the agent died"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_by_the_agent_dying_never_looks_complete() {
    let mut t = WikiTunnel::start().await;
    let n: u64 = 1 << 30;
    let resp = t
        .caller
        .get("wiki.test", &format!("/bytes/{n}"))
        .open()
        .await
        .expect("the download starts");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0u64;
    tokio::time::timeout(tests::PATIENCE, async {
        while received < (1 << 20) {
            let frame = body.frame().await.expect("more body").expect("body frame");
            received += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
    })
    .await
    .expect("the first MiB of the download within the patience");

    t.agent.kill();
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => received += frame.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(received)
    })
    .await
    .expect("the cut must reach the caller, not leave it hanging");
    // Flow control keeps at most a few MiB in flight, so the agent died
    // with most of the GiB unsent: the caller must see an error, never a
    // clean end of body.
    match outcome {
        Err(e) => assert!(
            received < n,
            "an error after the whole body arrived ({received} bytes): {e}"
        ),
        Ok(len) => {
            panic!("the body ended cleanly after {len} of {n} bytes: the cut looks complete")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_service_that_is_down_gives_502() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let nothing_listens = upstream::closed_port().await;
    let _agent = Agent::connect(&gateway, &tunnel, nothing_listens, AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    let reply = caller
        .get("wiki.test", "/")
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    assert_eq!(reply.status, 502, "{reply:?}");
    // The tunnel itself is fine: a second request gets the same clear answer.
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 502);
}
