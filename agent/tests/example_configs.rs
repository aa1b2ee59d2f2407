//! Every agent config shipped in `config/` loads and validates.

#[test]
fn every_agent_example_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("agent") && name.ends_with(".toml") {
            agent::config::AgentConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the agent examples in {}", dir.display());
    // In this one test: the environment is process-wide and tests run in
    // parallel.
    durations_are_overridden_from_the_environment_by_either_name();
}

/// Environment overrides of durations, by the old name (a bare number in
/// its unit) or the new one, over `config/agent.toml`, which writes the
/// new names.
fn durations_are_overridden_from_the_environment_by_either_name() {
    use std::time::Duration;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\ngrace = \"30s\"\n"), "{text}");
    assert!(text.contains("\ninitial_backoff = \"500ms\"\n"), "{text}");
    let load = || agent::config::AgentConfig::load(&path).map_err(|e| e.to_string());
    for (var, value, grace) in [
        ("AGENT__DRAIN__GRACE_SECS", "60", Duration::from_secs(60)),
        ("AGENT__DRAIN__GRACE", "60", Duration::from_secs(60)),
        ("AGENT__DRAIN__GRACE", "1m30s", Duration::from_secs(90)),
    ] {
        std::env::set_var(var, value);
        let cfg = load().unwrap_or_else(|e| panic!("{var}={value}: {e}"));
        assert_eq!(cfg.drain.grace, grace, "{var}={value}");
        std::env::remove_var(var);
    }
    for (var, value, backoff) in [
        (
            "AGENT__RECONNECT__INITIAL_BACKOFF_MS",
            "250",
            Duration::from_millis(250),
        ),
        (
            "AGENT__RECONNECT__INITIAL_BACKOFF",
            "250",
            Duration::from_millis(250),
        ),
        (
            "AGENT__RECONNECT__INITIAL_BACKOFF",
            "2s",
            Duration::from_secs(2),
        ),
    ] {
        std::env::set_var(var, value);
        let cfg = load().unwrap_or_else(|e| panic!("{var}={value}: {e}"));
        assert_eq!(cfg.reconnect.initial_backoff, backoff, "{var}={value}");
        std::env::remove_var(var);
    }
    std::env::set_var("AGENT__HEARTBEAT__INTERVAL_SECS", "0");
    let err = load().unwrap_err();
    assert!(err.contains("`heartbeat.interval`"), "{err}");
    std::env::remove_var("AGENT__HEARTBEAT__INTERVAL_SECS");
    std::env::set_var("AGENT__RECONNECT__MAX_BACKOFF", "forever");
    let err = load().unwrap_err();
    assert!(
        err.contains("reconnect.max_backoff: \"forever\" is not a duration"),
        "{err}"
    );
    std::env::remove_var("AGENT__RECONNECT__MAX_BACKOFF");
}
