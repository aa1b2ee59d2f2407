//! Builds the policy plugins in `plugins/` (their own workspace) for
//! `wasm32-wasip2`, so the end-to-end tests, the demo and the benchmark
//! (`bench/`, through this library) run the real components. The `.wasm`
//! files land in `target/plugins/dist` under the names routes use
//! (`org-check.wasm`, ...); `PLUGINS_DIR` tells the crate where.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates of the plugin workspace and the names routes give them.
const PLUGINS: &[(&str, &str)] = &[
    ("org_check", "org-check"),
    ("authz", "authz"),
    ("oauth1", "oauth1"),
    ("faulty", "faulty"),
    ("faulty_next", "faulty-next"),
];

include!("src/outer_build_env.rs");

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    for watched in ["plugins", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    // A separate target folder: the outer cargo holds the lock on its own.
    let plugin_target = target.join("plugins");

    ensure_wasm_target();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // From the plugin folder, so cargo reads plugins/.cargo/config.toml.
    cmd.current_dir(root.join("plugins"));
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(root.join("plugins/Cargo.toml"))
    .arg("--target-dir")
    .arg(&plugin_target);
    for var in OUTER_BUILD_ENV {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build the plugins");
    if !status.success() {
        panic!(
            "building the policy plugins (plugins/) for wasm32-wasip2 failed: see the errors above"
        );
    }

    let built = plugin_target.join("wasm32-wasip2/release");
    let dist = plugin_target.join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    for (krate, name) in PLUGINS {
        let from = built.join(format!("{krate}.wasm"));
        let to = dist.join(format!("{name}.wasm"));
        copy_if_changed(&from, &to);
    }
    println!("cargo:rustc-env=PLUGINS_DIR={}", dist.display());
}

/// Installs the `wasm32-wasip2` standard library with rustup when missing.
fn ensure_wasm_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = sysroot.is_some_and(|s| s.join("lib/rustlib/wasm32-wasip2").is_dir());
    if installed {
        return;
    }
    let ok = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        panic!(
            "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed; \
             install it to build the policy plugins"
        );
    }
}

/// Copies only when the content differs, so the destination's modification
/// time (which the gateway's hot reload watches) moves only on change.
fn copy_if_changed(from: &Path, to: &Path) {
    let new = std::fs::read(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    if std::fs::read(to).ok().as_deref() == Some(new.as_slice()) {
        return;
    }
    let tmp = to.with_extension("wasm.tmp");
    std::fs::write(&tmp, &new).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}
