//! Hands pingora a real socket for each tunnel stream so its keep-alive
//! pool works.
//!
//! pingora 0.9 checks a pooled connection's file descriptor with
//! `getpeername` before reusing it; a virtual socket has no descriptor
//! (fd -1), so virtual connections are never reused and every request
//! would open a new tunnel stream and a new connection to the local
//! service. Instead the [`TunnelConnector`](crate::connector::TunnelConnector)
//! connects a Unix socket to this bridge, names the agent with a one-time
//! token, and waits for one status byte; the bridge opens the HTTP/2
//! `CONNECT` stream in that agent's tunnel and splices the two. pingora
//! then pools the Unix socket like any other connection (keyed per agent
//! by `group_key`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::connector::{open_stream, OpenError};
use crate::registry::AgentConn;

/// Length of the one-time token a connector sends first.
pub const TOKEN_LEN: usize = 16;

/// Status byte the bridge answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BridgeStatus {
    /// The tunnel stream is open; bytes flow from now on.
    Open = 0,
    /// The agent could not reach its local service.
    Refused = 1,
    /// The agent connection is gone, did not answer, or the token was unknown.
    TunnelGone = 2,
    /// The agent's local service did not accept the connection in time.
    Timeout = 3,
}

impl BridgeStatus {
    /// Decodes a status byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        [Self::Open, Self::Refused, Self::TunnelGone, Self::Timeout]
            .into_iter()
            .find(|s| *s as u8 == b)
    }
}

/// The bridge's socket and the streams waiting to be opened.
pub struct Bridge {
    path: PathBuf,
    dir: PathBuf,
    pending: Mutex<HashMap<[u8; TOKEN_LEN], Arc<AgentConn>>>,
    listener: Mutex<Option<std::os::unix::net::UnixListener>>,
    open_timeout: Duration,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").field("path", &self.path).finish()
    }
}

impl Bridge {
    /// Binds the bridge socket in a fresh private (0700) directory.
    pub fn bind(open_timeout: Duration) -> std::io::Result<Arc<Self>> {
        use std::os::unix::fs::DirBuilderExt;
        let mut rnd = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut rnd);
        let dir = std::env::temp_dir().join(format!(
            "tunnel-gateway-{}-{}",
            std::process::id(),
            hex::encode(rnd)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("streams.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Arc::new(Bridge {
            path,
            dir,
            pending: Mutex::default(),
            listener: Mutex::new(Some(listener)),
            open_timeout,
        }))
    }

    /// The socket path pingora's peers name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connects a new bridged stream to `agent`; returns the caller's end
    /// once the tunnel stream is open, or why it could not be.
    pub async fn connect(&self, agent: Arc<AgentConn>) -> Result<UnixStream, BridgeStatus> {
        let mut token = [0u8; TOKEN_LEN];
        rand::rngs::OsRng.fill_bytes(&mut token);
        self.pending.lock().expect("lock").insert(token, agent);
        // Removes the entry however this future ends (also when dropped).
        let _pending = PendingGuard(self, token);
        let result = async {
            let mut s = UnixStream::connect(&self.path)
                .await
                .map_err(|_| BridgeStatus::TunnelGone)?;
            s.write_all(&token)
                .await
                .map_err(|_| BridgeStatus::TunnelGone)?;
            let mut status = [0u8; 1];
            s.read_exact(&mut status)
                .await
                .map_err(|_| BridgeStatus::TunnelGone)?;
            match BridgeStatus::from_byte(status[0]) {
                Some(BridgeStatus::Open) => Ok(s),
                Some(other) => Err(other),
                None => Err(BridgeStatus::TunnelGone),
            }
        };
        tokio::time::timeout(self.open_timeout + Duration::from_secs(1), result)
            .await
            .unwrap_or(Err(BridgeStatus::TunnelGone))
    }

    async fn serve_one(self: Arc<Self>, mut s: UnixStream) {
        let mut token = [0u8; TOKEN_LEN];
        if tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut token))
            .await
            .is_err()
        {
            return;
        }
        let agent = self.pending.lock().expect("lock").remove(&token);
        let Some(agent) = agent else {
            let _ = s.write_all(&[BridgeStatus::TunnelGone as u8]).await;
            return;
        };
        let mut sender = agent.sender();
        drop(agent);
        let opened = tokio::time::timeout(
            self.open_timeout,
            open_stream(&mut sender, protocol::STREAM_AUTHORITY),
        )
        .await;
        let up = match opened {
            Ok(Ok(up)) => up,
            Ok(Err(OpenError::Refused(status))) if status == http::StatusCode::GATEWAY_TIMEOUT => {
                let _ = s.write_all(&[BridgeStatus::Timeout as u8]).await;
                return;
            }
            Ok(Err(OpenError::Refused(_))) => {
                let _ = s.write_all(&[BridgeStatus::Refused as u8]).await;
                return;
            }
            // The agent connection failed or did not answer: the tunnel is
            // unusable (502), not the local service slow (504).
            Ok(Err(_)) | Err(_) => {
                let _ = s.write_all(&[BridgeStatus::TunnelGone as u8]).await;
                return;
            }
        };
        if s.write_all(&[BridgeStatus::Open as u8]).await.is_err() {
            return;
        }
        let mut tunnel = TokioIo::new(up);
        if let Err(e) =
            tokio::io::copy_bidirectional_with_sizes(&mut s, &mut tunnel, 64 << 10, 64 << 10).await
        {
            tracing::debug!("bridged stream ended: {e}");
        }
    }
}

struct PendingGuard<'a>(&'a Bridge, [u8; TOKEN_LEN]);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().expect("lock").remove(&self.1);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Runs the bridge's accept loop as a pingora background service.
pub struct BridgeService(pub Arc<Bridge>);

#[async_trait]
impl BackgroundService for BridgeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.0.listener.lock().expect("lock").take() else {
            return;
        };
        let listener = match UnixListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("stream bridge: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => {
                        tokio::spawn(self.0.clone().serve_one(s));
                    }
                    Err(e) => {
                        tracing::warn!("stream bridge accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&self.0.path);
        let _ = std::fs::remove_dir(&self.0.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bytes_round_trip() {
        for s in [
            BridgeStatus::Open,
            BridgeStatus::Refused,
            BridgeStatus::TunnelGone,
            BridgeStatus::Timeout,
        ] {
            assert_eq!(BridgeStatus::from_byte(s as u8), Some(s));
        }
        assert_eq!(BridgeStatus::from_byte(9), None);
    }
}
