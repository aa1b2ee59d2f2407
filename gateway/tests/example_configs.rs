//! Every gateway config shipped in `config/` loads and validates.

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
    // process-wide and tests run in parallel).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
    std::env::set_var("GATEWAY__AGENTS__HEARTBEAT_TIMEOUT_SECS", "99");
    let cfg = gateway::config::GatewayConfig::load(&path).unwrap();
    assert_eq!(cfg.agents.heartbeat_timeout_secs, 99);
    std::env::set_var("GATEWAY__AGENTS__HEARTBEAT_TIMEOUT_SECS", "1");
    let err = gateway::config::GatewayConfig::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("agents.heartbeat_timeout_secs"), "{err}");
    std::env::remove_var("GATEWAY__AGENTS__HEARTBEAT_TIMEOUT_SECS");

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
