//! The key-encryption key (KEK) that tunnel keys are stored under, and the
//! sealing of one tunnel key (AES-256-GCM, bound to its tunnel, organization
//! and key generation by associated data).

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use protocol::private_file::read_private;
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

use super::StoreError;
use crate::config::StoreSection;

/// The key-encryption key. `Debug` never shows it.
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(MASKED)")
    }
}

/// Where a rekey writes the new KEK before it replaces `kek_file`, and
/// where a store opened after an interrupted rekey also looks.
pub fn pending_path(kek_file: &Path) -> PathBuf {
    with_suffix(kek_file, ".new")
}

/// Where a rekey keeps the replaced KEK for the operator to remove.
pub fn retired_path(kek_file: &Path) -> PathBuf {
    with_suffix(kek_file, ".old")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

impl Kek {
    pub(super) fn parse(text: &str) -> Result<Self, StoreError> {
        let mut raw = STANDARD
            .decode(text.trim())
            .map_err(|_| StoreError::Kek("not base64".into()))?;
        if raw.len() != 32 {
            raw.zeroize();
            return Err(StoreError::Kek("must be 32 bytes".into()));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&raw);
        raw.zeroize();
        Ok(Kek(k))
    }

    /// A fresh random KEK.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *k);
        Kek(k)
    }

    /// Reads the KEK named by the config. A missing `kek_file` is created
    /// with fresh random bytes and mode 0600 only when `may_create` (the
    /// store holds no tunnel yet): a new KEK would make every stored tunnel
    /// key unreadable, so a wrong path must fail instead.
    pub fn load(cfg: &StoreSection, may_create: bool) -> Result<Self, StoreError> {
        if let Some(var) = &cfg.kek_env {
            let text =
                Zeroizing::new(std::env::var(var).map_err(|_| {
                    StoreError::Kek(format!("environment variable {var} is not set"))
                })?);
            return Self::parse(&text);
        }
        let path = cfg
            .kek_file
            .as_ref()
            .ok_or_else(|| StoreError::Kek("set store.kek_file or store.kek_env".into()))?;
        match Self::read(path) {
            Ok(k) => Ok(k),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
                let k = Self::generate();
                k.write_new(path)?;
                Ok(k)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Kek(format!(
                "{} is missing but the store already holds tunnels: restore it \
                 (a new key would leave every tunnel key unreadable)",
                path.display()
            ))),
            Err(e) => Err(StoreError::Kek(format!("{}: {e}", path.display()))),
        }
    }

    /// Reads a KEK file that group and others cannot write.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let text = read_private(path)?;
        Self::parse(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Writes this KEK to a new file (mode 0600, never over an existing one).
    pub fn write_new(&self, path: &Path) -> Result<(), StoreError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = Zeroizing::new(STANDARD.encode(*self.0));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Kek(format!("cannot create {}: {e}", path.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| StoreError::Kek(format!("cannot write {}: {e}", path.display())))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&*self.0).expect("32-byte key")
    }

    /// Seals a tunnel key of generation `generation`: (nonce, ciphertext).
    pub fn seal(
        &self,
        key: &[u8],
        id: &str,
        org: &str,
        generation: i64,
    ) -> Result<([u8; 12], Vec<u8>), StoreError> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key,
                    aad: &aad(id, org, generation),
                },
            )
            .map_err(|_| StoreError::Kek("encryption failed".into()))?;
        Ok((nonce, ct))
    }

    /// Opens a sealed tunnel key; `None` when it does not decrypt under
    /// this KEK for this tunnel and generation.
    pub fn open(
        &self,
        nonce: &[u8],
        ct: &[u8],
        id: &str,
        org: &str,
        generation: i64,
    ) -> Option<Zeroizing<[u8; 32]>> {
        if nonce.len() != 12 {
            return None;
        }
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ct,
                        aad: &aad(id, org, generation),
                    },
                )
                .ok()?,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return None;
        }
        out.copy_from_slice(&plain);
        Some(out)
    }
}

/// Associated data of a sealed key: the first generation keeps the
/// original `v1` layout so stores from before rotation still open; later
/// generations bind the generation too, so an old key's row cannot be
/// passed off as the current one.
fn aad(id: &str, org: &str, generation: i64) -> Vec<u8> {
    let mut a = if generation == 0 {
        b"tunnel-key/v1".to_vec()
    } else {
        let mut a = b"tunnel-key/v2".to_vec();
        a.extend_from_slice(&generation.to_be_bytes());
        a
    };
    for part in [id, org] {
        a.extend_from_slice(&(part.len() as u32).to_be_bytes());
        a.extend_from_slice(part.as_bytes());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_opens_only_for_its_tunnel_org_and_generation() {
        let kek = Kek::generate();
        let key = [9u8; 32];
        let (n, ct) = kek.seal(&key, "tun_a", "acme", 3).unwrap();
        assert_eq!(*kek.open(&n, &ct, "tun_a", "acme", 3).unwrap(), key);
        assert!(kek.open(&n, &ct, "tun_b", "acme", 3).is_none());
        assert!(kek.open(&n, &ct, "tun_a", "other", 3).is_none());
        assert!(kek.open(&n, &ct, "tun_a", "acme", 2).is_none());
        assert!(Kek::generate().open(&n, &ct, "tun_a", "acme", 3).is_none());
    }

    #[test]
    fn kek_debug_is_masked() {
        let k = Kek::parse(&STANDARD.encode([1u8; 32])).unwrap();
        assert_eq!(format!("{k:?}"), "Kek(MASKED)");
    }
}
