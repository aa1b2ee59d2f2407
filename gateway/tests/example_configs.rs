//! Every gateway config shipped in `config/` loads and validates.

use std::time::Duration;

#[test]
fn every_gateway_example_config_loads_and_env_overrides_apply() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("gateway") && name.ends_with(".toml") {
            gateway::config::GatewayConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "no gateway*.toml in {}", dir.display());

    // Environment overrides (kept in this one test: the environment is
    // process-wide and tests run in parallel). The file names the new
    // field (`heartbeat_timeout = "30s"`); the old variable still
    // overrides it (a bare number in the old unit), as does the new one.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\nheartbeat_timeout = \"30s\"\n"), "{text}");
    let secs = Duration::from_secs;
    let cases = [
        ("GATEWAY__AGENTS__HEARTBEAT_TIMEOUT_SECS", "99", secs(99)),
        ("GATEWAY__AGENTS__HEARTBEAT_TIMEOUT", "99", secs(99)),
        ("GATEWAY__AGENTS__HEARTBEAT_TIMEOUT", "1m 40s", secs(100)),
        (
            "GATEWAY__AGENTS__HEARTBEAT_TIMEOUT",
            "10500ms",
            Duration::from_millis(10_500),
        ),
    ];
    for (var, value, want) in cases {
        std::env::set_var(var, value);
        let cfg = gateway::config::GatewayConfig::load(&path)
            .unwrap_or_else(|e| panic!("{var}={value}: {e}"));
        assert_eq!(cfg.agents.heartbeat_timeout, want, "{var}={value}");
        std::env::remove_var(var);
    }
    for (var, value, says) in [
        (
            "GATEWAY__AGENTS__HEARTBEAT_TIMEOUT_SECS",
            "1",
            "agents.heartbeat_timeout",
        ),
        (
            "GATEWAY__AGENTS__HEARTBEAT_TIMEOUT",
            "9s",
            "agents.heartbeat_timeout",
        ),
        (
            "GATEWAY__AGENTS__HEARTBEAT_TIMEOUT",
            "soon",
            "agents.heartbeat_timeout: \"soon\" is not a duration",
        ),
        (
            "GATEWAY__PUBLIC__UPSTREAM_TIMEOUT_SECS",
            "0",
            "public.upstream_timeout",
        ),
    ] {
        std::env::set_var(var, value);
        let err = gateway::config::GatewayConfig::load(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{var}={value}: {err}");
        std::env::remove_var(var);
    }
    // Both names of one field in the environment: refused, naming both.
    std::env::set_var("GATEWAY__PUBLIC__UPSTREAM_TIMEOUT_SECS", "60");
    std::env::set_var("GATEWAY__PUBLIC__UPSTREAM_TIMEOUT", "60s");
    let err = gateway::config::GatewayConfig::load(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "(GATEWAY__PUBLIC__UPSTREAM_TIMEOUT_SECS and GATEWAY__PUBLIC__UPSTREAM_TIMEOUT)"
        ),
        "{err}"
    );
    std::env::remove_var("GATEWAY__PUBLIC__UPSTREAM_TIMEOUT_SECS");
    std::env::remove_var("GATEWAY__PUBLIC__UPSTREAM_TIMEOUT");

    // A file in the old form (every duration `<name>_secs`/`<name>_ms`
    // with a number) still loads, to the same values, and a new-style
    // variable overrides it.
    let mut old_style = text.clone();
    for (new, old) in [
        ("grace_period = \"10s\"", "grace_period_secs = 10"),
        ("upstream_timeout = \"60s\"", "upstream_timeout_secs = 60"),
        ("keepalive = \"60s\"", "keepalive_secs = 60"),
        (
            "header_read_timeout = \"10s\"",
            "header_read_timeout_secs = 10",
        ),
        ("read_timeout = \"60s\"", "read_timeout_secs = 60"),
        ("write_timeout = \"60s\"", "write_timeout_secs = 60"),
        ("handshake_timeout = \"10s\"", "handshake_timeout_secs = 10"),
        (
            "heartbeat_interval = \"10s\"",
            "heartbeat_interval_secs = 10",
        ),
        ("heartbeat_timeout = \"30s\"", "heartbeat_timeout_secs = 30"),
        ("tls_timeout = \"3s\"", "tls_timeout_secs = 3"),
        ("refresh = \"5s\"", "refresh_secs = 5"),
        ("reload_interval = \"1s\"", "reload_interval_ms = 1000"),
        ("call_timeout = \"50ms\"", "call_timeout_ms = 50"),
        ("export_interval = \"1s\"", "export_interval_ms = 1000"),
        ("export_timeout = \"5s\"", "export_timeout_ms = 5000"),
    ] {
        let line = format!("\n{new}\n");
        assert!(
            old_style.contains(&line),
            "config/gateway.toml has no `{new}`"
        );
        old_style = old_style.replace(&line, &format!("\n{old}\n"));
    }
    let dir = std::env::temp_dir().join(format!("gw-old-style-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let old_path = dir.join("gateway.toml");
    std::fs::write(&old_path, &old_style).unwrap();
    let as_json = |c: &gateway::config::GatewayConfig| serde_json::to_value(c).unwrap();
    let old_cfg = gateway::config::GatewayConfig::load(&old_path).unwrap();
    let new_cfg = gateway::config::GatewayConfig::load(&path).unwrap();
    assert_eq!(as_json(&old_cfg), as_json(&new_cfg));
    std::env::set_var("GATEWAY__PLUGINS__CALL_TIMEOUT", "75ms");
    let cfg = gateway::config::GatewayConfig::load(&old_path).unwrap();
    assert_eq!(cfg.plugins.call_timeout, Duration::from_millis(75));
    std::env::remove_var("GATEWAY__PLUGINS__CALL_TIMEOUT");
    std::fs::remove_dir_all(&dir).unwrap();

    // The collector can be named from the environment, and a bad one is
    // refused naming the field.
    std::env::set_var("GATEWAY__TELEMETRY__ENDPOINT", "http://collector:4317");
    let cfg = gateway::config::GatewayConfig::load(&path).unwrap();
    assert_eq!(
        cfg.telemetry.endpoint.as_deref(),
        Some("http://collector:4317")
    );
    std::env::set_var("GATEWAY__TELEMETRY__ENDPOINT", "collector:4317");
    let err = gateway::config::GatewayConfig::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("telemetry.endpoint"), "{err}");
    std::env::remove_var("GATEWAY__TELEMETRY__ENDPOINT");
    std::env::set_var("GATEWAY__LOG__FORMAT", "xml");
    let err = gateway::config::GatewayConfig::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("format"), "{err}");
    std::env::remove_var("GATEWAY__LOG__FORMAT");
}
