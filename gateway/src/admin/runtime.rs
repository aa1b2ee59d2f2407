//! The runtime file: while it serves, the gateway keeps `<store.path>.admin`
//! (mode 0600) with its process id, its admin listener's address and a
//! credential made for this process only. The CLI, run by someone who can
//! read the store (and so could change it anyway), uses it to send its
//! operations through the running gateway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

/// What the runtime file holds.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Runtime {
    pub pid: u32,
    pub admin: SocketAddr,
    pub token: String,
    /// With `admin.tls_cert`: the SHA-256 (hex) of the certificate the
    /// listener presents, which the CLI pins.
    #[serde(default)]
    pub tls_sha256: Option<String>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("pid", &self.pid)
            .field("admin", &self.admin)
            .field("token", &"MASKED")
            .field("tls_sha256", &self.tls_sha256)
            .finish()
    }
}

/// Where the runtime file of the store at `store_path` is.
pub fn path(store_path: &Path) -> PathBuf {
    let mut p = store_path.as_os_str().to_owned();
    p.push(".admin");
    PathBuf::from(p)
}

/// A fresh local credential.
pub fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("local_{}", URL_SAFE_NO_PAD.encode(raw))
}

/// Removes the runtime file when dropped (the gateway is stopping).
#[derive(Debug)]
pub struct RuntimeGuard(PathBuf);

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes the runtime file (replacing one a crashed gateway left): mode
/// 0600, atomically (`keyfile::write_private`).
pub fn write(
    store_path: &Path,
    admin: SocketAddr,
    token: &str,
    tls_sha256: Option<String>,
) -> std::io::Result<RuntimeGuard> {
    let target = path(store_path);
    let body = zeroize::Zeroizing::new(serde_json::to_vec(&Runtime {
        pid: std::process::id(),
        admin,
        token: token.into(),
        tls_sha256,
    })?);
    keyfile::write_private(&target, &body)?;
    Ok(RuntimeGuard(target))
}

/// The runtime file of a gateway that is still running, if any.
pub fn read(store_path: &Path) -> Option<Runtime> {
    let text = keyfile::read_private(&path(store_path)).ok()?;
    let rt: Runtime = serde_json::from_str(&text).ok()?;
    // A file a killed gateway left behind names a process that is gone.
    Path::new(&format!("/proc/{}", rt.pid))
        .exists()
        .then_some(rt)
}
