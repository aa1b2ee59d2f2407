//! Story: the agent forwards to services on its own machine only; a
//! non-loopback local address is refused unless explicitly allowed.

use tests::setup::WikiTunnel;
use tests::{bin_path, PATIENCE};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_local_address_is_refused_by_default() {
    let t = WikiTunnel::start().await;
    let config = std::fs::read_to_string(t.agent.config_path()).unwrap();
    let loopback = format!("address = \"{}\"", t.wiki.addr());
    // A documentation address: refused at startup, so never contacted.
    let remote = config.replace(&loopback, "address = \"192.0.2.10:80\"");
    assert_ne!(config, remote);
    let path = t.agent.config_path().with_file_name("remote.toml");
    std::fs::write(&path, remote).unwrap();

    let run = Command::new(bin_path("agent"))
        .args(["run", "--config"])
        .arg(&path)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("an agent with a remote local address exits at once")
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "the agent started with a remote local address:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("local.address") || stderr.contains("allow_remote"),
        "stderr should name local.address / allow_remote:\n{stderr}"
    );
    assert!(!stdout.contains("\"connected\""), "{stdout}");
}
