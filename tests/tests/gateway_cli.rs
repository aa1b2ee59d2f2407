//! Story: an operator sets up the gateway: creates tunnels and caller
//! tokens, lists tunnels (keys are shown once only), overrides settings from
//! the environment, and is told which field of a bad config is wrong.

use tests::{bin_path, Gateway, GatewayOptions, PATIENCE};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_are_listed_without_their_keys() {
    let gateway = Gateway::start(GatewayOptions::new()).await;
    let wiki = gateway.create_tunnel("acme", "wiki").await;
    let ci = gateway.create_tunnel("globex", "ci").await;
    assert_ne!(wiki.id, ci.id);
    assert_ne!(wiki.key, ci.key, "every tunnel gets its own random key");

    let listed = gateway.list_tunnels().await;
    for tunnel in [&wiki, &ci] {
        let entry = listed
            .iter()
            .find(|t| t["id"] == tunnel.id.as_str())
            .unwrap_or_else(|| panic!("{} missing from {listed:?}", tunnel.name));
        assert_eq!(
            (entry["name"].as_str(), entry["org"].as_str()),
            (Some(tunnel.name.as_str()), Some(tunnel.org.as_str()))
        );
    }
    let text = serde_json::to_string(&listed).unwrap();
    assert!(
        !text.contains(&wiki.key) && !text.contains(&ci.key),
        "a key was listed: {text}"
    );

    let one = gateway.create_caller("acme").await;
    let two = gateway.create_caller("acme").await;
    assert_ne!(one, two);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_overrides_the_config_file() {
    // The file says 127.0.0.1:0; the environment names another loopback
    // address, still port 0 (a port picked here and released could be
    // taken by anyone before the gateway binds it).
    let opts = GatewayOptions::new().env("GATEWAY__PUBLIC__LISTEN", "127.0.0.2:0");
    let gateway = Gateway::start(opts).await;
    let addr = gateway.public_addr();
    assert_eq!(
        addr.ip().to_string(),
        "127.0.0.2",
        "the public listener is on {addr}, not where the environment said"
    );
    assert_ne!(addr.port(), 0);
}

/// `gateway serve --config PATH` for a config it must refuse: its output,
/// once it has exited.
async fn serve_once(path: &std::path::Path) -> std::process::Output {
    let run = Command::new(bin_path("gateway"))
        .args(["serve", "--config"])
        .arg(path)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("a gateway with a bad config exits at once")
        .expect("run gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_naming_the_field() {
    let mut gateway = Gateway::start(GatewayOptions::new()).await;
    gateway.terminate().await;
    let config = std::fs::read_to_string(gateway.config_path()).unwrap();
    let broken = config.replacen("listen = \"127.0.0.1:0\"", "listen = \"not an address\"", 1);
    assert_ne!(config, broken);
    let path = gateway.config_path().with_file_name("broken.toml");
    std::fs::write(&path, broken).unwrap();

    let out = serve_once(&path).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a gateway with a bad listen address started"
    );
    assert!(
        stderr.contains("public.listen"),
        "stderr should name public.listen:\n{stderr}"
    );

    // A file that cannot be read as a configuration at all: its cause is
    // said once, not once more as the error's source.
    let unreadable = gateway.config_path().with_file_name("unreadable.toml");
    std::fs::write(&unreadable, "[public]\nlisten = 5\n").unwrap();
    let out = serve_once(&unreadable).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.matches("missing configuration field").count(),
        1,
        "the cause once, after the file's name:\n{stderr}"
    );
    assert!(stderr.contains("unreadable.toml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_gateway_gracefully() {
    let mut gateway = Gateway::start(GatewayOptions::new()).await;
    let status = gateway.terminate().await;
    assert!(
        status.success(),
        "gateway exit after SIGTERM: {status}\n{}",
        gateway.logs()
    );
}
