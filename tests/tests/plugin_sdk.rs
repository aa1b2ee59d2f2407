//! Story: a user writes a policy plugin of their own. They copy
//! `plugins/template`, change its rule, build it for wasm32-wasip2, check
//! the build with `gateway plugin check`, drop it into the gateway's
//! plugin folder, and their rule decides requests. `plugin check` refuses
//! what a gateway would refuse, with the gateway's own message.

use std::path::{Path, PathBuf};
use std::process::Output;

use tests::setup::WikiTunnel;
use tests::{bin_path, plugin_wasm, Gateway};
use tests::{GatewayOptions, Route};
use tokio::process::Command;

const TEAM_CONFIG: &str = r#"{"header": "x-team", "allow": ["blue", "green"]}"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// Copies the template's sources (not any build output) to `to`.
fn copy_template(to: &Path) {
    let from = repo().join("plugins/template");
    for rel in [
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
        "src/lib.rs",
    ] {
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(from.join(rel), &dest)
            .unwrap_or_else(|e| panic!("copying plugins/template/{rel}: {e}"));
    }
}

/// Replaces `old` (which must be there) with `new` in the file `path`.
fn edit(path: &Path, old: &str, new: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains(old),
        "{} no longer contains {old:?}: update this story with the template",
        path.display()
    );
    std::fs::write(path, text.replacen(old, new, 1)).unwrap();
}

async fn plugin_check(args: &[&str]) -> Output {
    Command::new(bin_path("gateway"))
        .args(["plugin", "check"])
        .args(args)
        .output()
        .await
        .expect("running gateway plugin check")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `plugin check` and returns its error message, which must come
/// with a non-zero exit.
async fn refused(args: &[&str]) -> String {
    let out = plugin_check(args).await;
    assert!(
        !out.status.success(),
        "plugin check {args:?} passed:\n{}",
        stdout(&out)
    );
    stderr(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_made_from_the_template_is_checked_installed_and_decides_requests() {
    // Copy the template, name the plugin and change its rule.
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("team-rule");
    copy_template(&src);
    let sdk = repo().join("plugins/sdk");
    edit(
        &src.join("Cargo.toml"),
        r#"name = "my-policy""#,
        r#"name = "team-rule""#,
    );
    edit(
        &src.join("Cargo.toml"),
        r#"path = "../sdk""#,
        &format!("path = {:?}", sdk.display().to_string()),
    );
    edit(
        &src.join("src/lib.rs"),
        "pub const DENY_STATUS: u16 = 403;",
        "pub const DENY_STATUS: u16 = 451;",
    );
    let wasm = tests::build_plugin(&src, "team-rule").await;
    let wasm_arg = wasm.to_str().unwrap();

    // What the gateway would say, before installing it.
    let out = plugin_check(&[wasm_arg, "--config", TEAM_CONFIG]).await;
    let said = stdout(&out);
    assert!(out.status.success(), "{said}{}", stderr(&out));
    assert!(
        said.contains("ok: plugin team-rule 0.1.0 would load"),
        "{said}"
    );
    assert!(
        said.contains("install  <plugins.dir>/team-rule.wasm"),
        "{said}"
    );
    assert!(said.contains("accepted 1 configuration"), "{said}");
    assert!(
        said.contains("this file is named team_rule.wasm"),
        "cargo's file name is not the one to install under: {said}"
    );
    let e = refused(&[wasm_arg, "--config", r#"{"header": "x-team"}"#]).await;
    assert!(
        e.contains("init refused its configuration") && e.contains("missing field `allow`"),
        "{e}"
    );
    let e = refused(&[wasm_arg, "--name", "my-policy", "--config", TEAM_CONFIG]).await;
    assert!(
        e.contains(r#"holds the plugin "team-rule""#) && e.contains(r#"not "my-policy""#),
        "{e}"
    );

    // Installed, it decides the route's requests.
    let WikiTunnel {
        gateway: _gateway,
        wiki,
        agent: _agent,
        caller,
        ..
    } = WikiTunnel::start_routed(
        GatewayOptions::new()
            .plugin_file("team-rule", std::fs::read(&wasm).unwrap())
            .with_route(Route::new("wiki.test", "wiki").plugin("team-rule", TEAM_CONFIG)),
    )
    .await;

    let reply = caller
        .get("wiki.test", "/pages/1")
        .header("x-team", "green")
        .send()
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(wiki.requests(), 1);
    for team in [None, Some("red")] {
        let mut call = caller.get("wiki.test", "/pages/1");
        if let Some(team) = team {
            call = call.header("x-team", team);
        }
        let reply = call.send().await;
        assert_eq!(reply.status, 451, "the changed rule decides: {reply:?}");
        let why = if team.is_some() {
            "has a value not allowed"
        } else {
            "is missing"
        };
        assert_eq!(reply.text(), format!("451: header x-team {why}\n"));
    }
    assert_eq!(wiki.requests(), 1, "a denied request reached the service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_check_refuses_what_a_gateway_would_refuse_with_its_message() {
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str, bytes: &[u8]| {
        let p = work.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };

    let text = path("notes.wasm", b"not a plugin");
    let e = refused(&[&text]).await;
    assert!(e.contains("does not start with `\\0asm`"), "{e}");
    let core = path("core.wasm", b"\0asm\x01\0\0\0");
    let e = refused(&[&core]).await;
    assert!(
        e.contains("core module") && e.contains("wasm32-wasip2"),
        "{e}"
    );
    let e = refused(&[work.path().join("absent.wasm").to_str().unwrap()]).await;
    assert!(
        e.contains("absent.wasm") && e.contains("No such file"),
        "{e}"
    );

    let authz = path("authz.wasm", &plugin_wasm("authz"));
    let e = refused(&[&authz, "--name", "org-check"]).await;
    assert!(e.contains(r#"holds the plugin "authz""#), "{e}");
    let e = refused(&[&authz, "--config", r#"{"rules": [{"methods": []}]}"#]).await;
    assert!(e.contains("`rules[0].methods` is an empty list"), "{e}");
    let faulty = path("faulty.wasm", &plugin_wasm("faulty"));
    let e = refused(&[&faulty, "--config", "allow", "--config", "init-error"]).await;
    assert!(e.contains("refusing to load, as configured"), "{e}");
    let e = refused(&[&faulty, "--config", "init-loop"]).await;
    assert!(e.contains("init: ran past its 50 ms deadline"), "{e}");

    // With a gateway's configuration: its routes give the configurations
    // and its pins apply.
    let good = r#"{"rules": [{"methods": ["GET"]}]}"#;
    let gateway = Gateway::start(
        GatewayOptions::new()
            .with_route(Route::new("wiki.test", "wiki").plugin("authz", good))
            .with_route(Route::new("ci.test", "ci").plugin("authz", "")),
    )
    .await;
    let config = gateway.config_path().to_str().unwrap().to_string();
    let out = plugin_check(&[&authz, "--gateway-config", &config]).await;
    let said = stdout(&out);
    assert!(out.status.success(), "{said}{}", stderr(&out));
    assert!(
        said.contains("accepted 2 configurations (those of the routes that list it)"),
        "{said}"
    );
    let install = format!("install  {}/authz.wasm", gateway.plugins_dir().display());
    assert!(said.contains(&install), "{said}");
    assert!(
        !said.contains("note:"),
        "the file has the right name: {said}"
    );

    // Variants of that configuration, beside it.
    let text = std::fs::read_to_string(gateway.config_path()).unwrap();
    let variant = |name: &str, edit: &dyn Fn(&str) -> String| {
        let edited = edit(&text);
        assert_ne!(edited, text, "the edit for {name} changed nothing");
        path(name, edited.as_bytes())
    };
    let quoted = |s: &str| serde_json::to_string(s).unwrap();
    let bad_route = variant("bad-route.toml", &|t| {
        t.replace(&quoted(good), &quoted(r#"{"rules": [{"orgs": []}]}"#))
    });
    let e = refused(&[&authz, "--gateway-config", &bad_route]).await;
    assert!(e.contains("`rules[0].orgs` is an empty list"), "{e}");

    let pin = "ab".repeat(32);
    let pinned = variant("pinned.toml", &|t| {
        t.replace(
            "[plugins]",
            &format!("[plugins]\nsha256 = {{ authz = \"{pin}\" }}"),
        )
    });
    let e = refused(&[&authz, "--gateway-config", &pinned]).await;
    assert!(
        e.contains("pinned in plugins.sha256") && e.contains(&pin),
        "{e}"
    );
}
