//! Story: an on-prem node is shut down (SIGTERM) under load; the gateway
//! stops sending it new requests, the ones it holds finish, every caller
//! gets its answer, and the agent exits cleanly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tests::{upstream, Agent, AgentOptions, Gateway, GatewayOptions, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_agent_finishes_its_requests_and_gets_no_new_ones() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let leaving = upstream::echo("leaving").await;
    let staying = upstream::echo("staying").await;
    let mut leaving_agent =
        Agent::connect(&gateway, &tunnel, leaving.addr(), AgentOptions::new()).await;
    let _staying_agent =
        Agent::connect(&gateway, &tunnel, staying.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);

    // Load: 8 callers, each sending 1-second requests back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let drained = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..8)
        .map(|worker| {
            let (caller, stop, drained, outcomes) = (
                caller.clone(),
                stop.clone(),
                drained.clone(),
                outcomes.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let sent_after_drain = drained.load(Ordering::SeqCst);
                    let target = format!("/slow/1000?worker={worker}&i={i}");
                    let result = caller.get("wiki.test", &target).try_send().await;
                    outcomes
                        .lock()
                        .unwrap()
                        .push((target, sent_after_drain, result));
                    i += 1;
                }
            })
        })
        .collect();

    // Both nodes are busy, then the first one is told to leave.
    leaving
        .stats()
        .in_flight
        .wait_at_least(1, "requests at the leaving node", PATIENCE)
        .await;
    staying
        .stats()
        .in_flight
        .wait_at_least(1, "requests at the staying node", PATIENCE)
        .await;
    leaving_agent.begin_terminate();
    leaving_agent.wait_event("draining", PATIENCE).await;
    gateway
        .wait_for("agent_draining", &[("agent", leaving_agent.name())])
        .await;
    drained.store(true, Ordering::SeqCst);

    let status = leaving_agent.wait_exit().await;
    assert_eq!(
        status.code(),
        Some(0),
        "drained agent exit\n{}",
        leaving_agent.logs()
    );
    leaving_agent.wait_event("stopped", PATIENCE).await;

    // The load goes on with one node until every worker has had a request
    // sent after the drain answered, then stops.
    tests::eventually(
        "a request of each worker sent after the drain answered",
        PATIENCE,
        || async {
            let after = outcomes
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, after_drain, _)| *after_drain)
                .count();
            if after >= 8 {
                Ok(())
            } else {
                Err(format!("{after} of 8"))
            }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for worker in load {
        worker.await.unwrap();
    }

    let outcomes = outcomes.lock().unwrap();
    let mut failures = Vec::new();
    for (target, after_drain, result) in outcomes.iter() {
        match result {
            Ok(reply) if reply.status == 200 => {
                if *after_drain && reply.echo().server == "leaving" {
                    failures.push(format!(
                        "{target}: sent after draining but served by the leaving node"
                    ));
                }
            }
            Ok(reply) => {
                failures.push(format!("{target}: {} {}", reply.status, reply.first_line()))
            }
            Err(e) => failures.push(format!("{target}: {e}")),
        }
    }
    assert!(
        outcomes.len() >= 16,
        "too little load: {} requests",
        outcomes.len()
    );
    assert!(
        outcomes.iter().any(|o| o.1),
        "no request was sent during the drain"
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed:\n{}",
        failures.len(),
        outcomes.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_leaves_at_once_without_waiting_out_the_grace() {
    let t = tests::setup::WikiTunnel::start().await;
    let mut agent = t.agent;
    // Served, and finished: nothing is in flight when SIGTERM comes.
    let reply = t.caller.get("wiki.test", "/done").send().await;
    assert_eq!(reply.status, 200);
    assert_eq!(t.wiki.stats().in_flight.get(), 0);

    let asked = std::time::Instant::now();
    let status = agent.terminate().await;
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{}", agent.logs());
    assert!(
        took < Duration::from_secs(5),
        "an idle agent took {took:?} to drain (grace is 10 s):\n{}",
        agent.logs()
    );
}
