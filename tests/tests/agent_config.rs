//! Story: the agent forwards to services on its own machine only; a
//! non-loopback local address is refused unless explicitly allowed. Its
//! name is logged by the gateway before it is authenticated, so a name with
//! spaces or control characters is refused at start. A config written
//! before durations became text (`interval_secs = 5`) still runs.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use tests::setup::WikiTunnel;
use tests::{bin_path, Agent, AgentOptions, PATIENCE};
use tokio::io::{AsyncRead, AsyncReadExt as _};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_name_with_a_space_or_a_newline_is_refused_at_start() {
    let t = WikiTunnel::start().await;
    let config = std::fs::read_to_string(t.agent.config_path()).unwrap();
    let current = format!("agent_name = \"{}\"", t.agent.name());
    assert!(config.contains(&current), "{config}");

    let cases = [
        ("a space", "node one", "space.toml"),
        ("a newline", "node\nforged", "newline.toml"),
    ];
    let mut failures = Vec::new();
    for (what, name, file) in cases {
        // JSON string escapes are valid TOML: the newline is a real one.
        let quoted = serde_json::to_string(name).unwrap();
        let bad = config.replace(&current, &format!("agent_name = {quoted}"));
        assert_ne!(config, bad);
        let path = t.agent.config_path().with_file_name(file);
        std::fs::write(&path, bad).unwrap();

        let (status, stdout, stderr) = run_agent(&path).await;
        let refused = status.is_some_and(|s| !s.success());
        if !refused || !stderr.contains("tunnel.agent_name") || stdout.contains("\"connected\"") {
            let first = |text: &str| text.lines().take(4).collect::<Vec<_>>().join("\n");
            let outcome = match status {
                Some(status) => format!("exited with {status}"),
                None => format!("still running after {PATIENCE:?}"),
            };
            failures.push(format!(
                "{what} in agent_name: expected a non-zero exit with stderr naming \
                 tunnel.agent_name; the agent {outcome}\nstdout:\n{}\nstderr:\n{}",
                first(&stdout),
                first(&stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad names were not refused at start:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// `agent run --config path`, given [`PATIENCE`] to exit; returns its exit
/// status (`None` if it was still running and had to be killed), stdout and
/// stderr.
async fn run_agent(path: &Path) -> (Option<ExitStatus>, String, String) {
    let mut child = Command::new(bin_path("agent"))
        .args(["run", "--config"])
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agent run");
    let read = |pipe: Option<Box<dyn AsyncRead + Unpin + Send>>| {
        tokio::spawn(async move {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text).await;
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = match tokio::time::timeout(PATIENCE, child.wait()).await {
        Ok(status) => Some(status.expect("wait for the agent")),
        Err(_) => {
            child.kill().await.expect("kill the agent");
            None
        }
    };
    let stdout = stdout.await.expect("stdout reader");
    let stderr = stderr.await.expect("stderr reader");
    (status, stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_name_of_letters_digits_dots_dashes_and_underscores_connects() {
    let t = WikiTunnel::start().await;
    let agent = Agent::connect(
        &t.gateway,
        &t.tunnel,
        t.wiki.addr(),
        AgentOptions::new().name("rack-2.node_01"),
    )
    .await;
    assert_eq!(agent.name(), "rack-2.node_01");
    t.gateway
        .wait_for("agent_connected", &[("agent", "rack-2.node_01")])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_without_a_certificate_or_with_a_cut_one_is_refused_at_start_naming_it() {
    let t = WikiTunnel::start().await;
    let config = std::fs::read_to_string(t.agent.config_path()).unwrap();
    let ca = t.gateway.pki().ca_file.to_string_lossy().into_owned();
    let current = format!("ca_file = {}", serde_json::to_string(&ca).unwrap());
    assert!(config.contains(&current), "{config}");

    for (what, pem, expect) in [
        (
            "no certificate",
            "a note, not PEM\n",
            "no certificate found",
        ),
        (
            "a cut certificate",
            "-----BEGIN CERTIFICATE-----\nMIIB\n",
            "malformed PEM certificate",
        ),
    ] {
        let bad_ca = t.agent.config_path().with_file_name("bad-ca.pem");
        std::fs::write(&bad_ca, pem).unwrap();
        let quoted = serde_json::to_string(&bad_ca.to_string_lossy()).unwrap();
        let path = t.agent.config_path().with_file_name("bad-ca.toml");
        std::fs::write(
            &path,
            config.replace(&current, &format!("ca_file = {quoted}")),
        )
        .unwrap();

        let (status, stdout, stderr) = run_agent(&path).await;
        assert!(
            status.is_some_and(|s| !s.success()),
            "{what}: the agent did not exit with an error ({status:?})\n{stderr}"
        );
        assert!(
            stderr.contains("gateway.ca_file")
                && stderr.contains(&*bad_ca.to_string_lossy())
                && stderr.contains(expect),
            "{what}: stderr should name gateway.ca_file, the file and {expect:?}:\n{stderr}"
        );
        assert!(!stdout.contains("\"connected\""), "{stdout}");
    }
}

/// The harness writes durations as text (`interval = "5s"`); a config of
/// an older deployment names them with their unit and a bare number
/// (`interval_secs = 5`, `initial_backoff_ms = 100`). That one still
/// loads, connects and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_the_old_duration_names_still_connects_and_serves() {
    let t = WikiTunnel::start().await;
    let config = std::fs::read_to_string(t.agent.config_path()).unwrap();
    let current = format!("agent_name = \"{}\"", t.agent.name());
    assert!(config.contains(&current), "{config}");
    let mut old = config.replace(&current, "agent_name = \"old-style\"");
    for (new, was) in [
        ("interval = \"5s\"", "interval_secs = 5"),
        ("timeout = \"15s\"", "timeout_secs = 15"),
        ("initial_backoff = \"100ms\"", "initial_backoff_ms = 100"),
        ("max_backoff = \"2s\"", "max_backoff_ms = 2000"),
        ("stable_after = \"30s\"", "stable_after_secs = 30"),
        ("grace = \"10s\"", "grace_secs = 10"),
    ] {
        let line = format!("\n{new}\n");
        assert!(old.contains(&line), "no `{new}` in:\n{old}");
        old = old.replace(&line, &format!("\n{was}\n"));
    }
    // The two connect timeouts the harness leaves at their defaults.
    old = old
        .replacen("[tunnel]", "connect_timeout_secs = 10\n\n[tunnel]", 1)
        .replacen("[local]\n", "[local]\nconnect_timeout_secs = 5\n", 1);
    let path = t.agent.config_path().with_file_name("old-style.toml");
    std::fs::write(&path, &old).unwrap();

    let mut command = Command::new(bin_path("agent"));
    command
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for var in ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
        command.env_remove(var);
    }
    let mut child = command.spawn().expect("spawn agent run");
    t.gateway
        .wait_for("agent_connected", &[("agent", "old-style")])
        .await;
    // With the harness's agent gone, only the old-style one serves.
    let mut first = t.agent;
    assert_eq!(first.terminate().await.code(), Some(0));
    let reply = t.caller.get("wiki.test", "/old-style").send().await;
    assert_eq!(reply.status, 200);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the old-style agent exited"
    );
    child.kill().await.unwrap();
}
