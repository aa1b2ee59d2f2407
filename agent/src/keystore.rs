//! The tunnel key at rest: encrypted with an AEAD (AES-256-GCM by default,
//! ChaCha20-Poly1305 selectable) under a local key-encryption key, with the
//! tunnel id as associated data so a key file copied to another tunnel's
//! config does not decrypt.

use protocol::private_file::read_private;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use protocol::TunnelKey;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::config::{Cipher, TunnelSection};

/// A key-store failure.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("key-encryption key: {0}")]
    Kek(String),
    #[error("key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("key file {0} does not decrypt: wrong key-encryption key, another tunnel's file, or tampering")]
    Decrypt(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    cipher: String,
    nonce: String,
    ciphertext: String,
}

struct Kek(Zeroizing<[u8; 32]>);

/// Writes a 0600 file. With `create_new` the file must not exist; otherwise
/// it is replaced atomically (temp file + rename), so a crash never leaves
/// a truncated key file.
fn write_private(path: &Path, data: &[u8], create_new: bool) -> std::io::Result<()> {
    let target = if create_new {
        path.to_path_buf()
    } else {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp-{}", std::process::id()));
        path.with_file_name(name)
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)?;
    f.write_all(data)?;
    f.sync_all()?;
    if !create_new {
        std::fs::rename(&target, path)?;
    }
    Ok(())
}

impl Kek {
    fn parse(text: &str) -> Result<Self, KeyStoreError> {
        let mut raw = STANDARD
            .decode(text.trim())
            .map_err(|_| KeyStoreError::Kek("not base64".into()))?;
        if raw.len() != 32 {
            raw.zeroize();
            return Err(KeyStoreError::Kek("must be 32 bytes".into()));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&raw);
        raw.zeroize();
        Ok(Kek(k))
    }

    fn load(cfg: &TunnelSection, create: bool) -> Result<Self, KeyStoreError> {
        if let Some(var) = &cfg.kek_env {
            let text = std::env::var(var).map_err(|_| {
                KeyStoreError::Kek(format!("environment variable {var} is not set"))
            })?;
            return Self::parse(&text);
        }
        let path = cfg
            .kek_file
            .as_ref()
            .ok_or_else(|| KeyStoreError::Kek("set tunnel.kek_file or tunnel.kek_env".into()))?;
        match read_private(path) {
            Ok(t) => {
                Self::parse(&t).map_err(|e| KeyStoreError::Kek(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut k = Zeroizing::new([0u8; 32]);
                rand::rngs::OsRng.fill_bytes(&mut *k);
                let text = Zeroizing::new(STANDARD.encode(*k));
                write_private(path, text.as_bytes(), true).map_err(|e| {
                    KeyStoreError::Kek(format!("cannot create {}: {e}", path.display()))
                })?;
                Ok(Kek(k))
            }
            Err(e) => Err(KeyStoreError::Kek(format!("{}: {e}", path.display()))),
        }
    }
}

fn aad(tunnel_id: &str) -> Vec<u8> {
    [b"agent-tunnel-key/v1:".as_slice(), tunnel_id.as_bytes()].concat()
}

fn seal(cipher: Cipher, kek: &Kek, nonce: &[u8; 12], msg: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let payload = Payload { msg, aad };
    match cipher {
        Cipher::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(&*kek.0)
            .ok()?
            .encrypt(aes_gcm::Nonce::from_slice(nonce), payload)
            .ok(),
        Cipher::ChaCha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(&*kek.0)
            .ok()?
            .encrypt(chacha20poly1305::Nonce::from_slice(nonce), payload)
            .ok(),
    }
}

fn open(
    cipher: Cipher,
    kek: &Kek,
    nonce: &[u8; 12],
    ct: &[u8],
    aad: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let payload = Payload { msg: ct, aad };
    let plain = match cipher {
        Cipher::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(&*kek.0)
            .ok()?
            .decrypt(aes_gcm::Nonce::from_slice(nonce), payload)
            .ok(),
        Cipher::ChaCha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(&*kek.0)
            .ok()?
            .decrypt(chacha20poly1305::Nonce::from_slice(nonce), payload)
            .ok(),
    }?;
    Some(Zeroizing::new(plain))
}

fn cipher_name(c: Cipher) -> &'static str {
    match c {
        Cipher::Aes256Gcm => "aes-256-gcm",
        Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
    }
}

/// Encrypts `key` and writes it to `cfg.key_file` (mode 0600), creating
/// the KEK file if needed.
pub fn store_key(cfg: &TunnelSection, key: &TunnelKey) -> Result<(), KeyStoreError> {
    let kek = Kek::load(cfg, true)?;
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = seal(cfg.cipher, &kek, &nonce, key.expose(), &aad(&cfg.id))
        .ok_or_else(|| KeyStoreError::Kek("encryption failed".into()))?;
    let file = KeyFile {
        version: 1,
        cipher: cipher_name(cfg.cipher).into(),
        nonce: STANDARD.encode(nonce),
        ciphertext: STANDARD.encode(ct),
    };
    let text = serde_json::to_vec_pretty(&file).expect("serializable");
    write_private(&cfg.key_file, &text, false).map_err(|e| KeyStoreError::File {
        path: cfg.key_file.display().to_string(),
        reason: e.to_string(),
    })
}

/// Reads and decrypts the tunnel key.
pub fn load_key(cfg: &TunnelSection) -> Result<TunnelKey, KeyStoreError> {
    let path = cfg.key_file.display().to_string();
    let file_err = |reason: String| KeyStoreError::File {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read(&cfg.key_file).map_err(|e| {
        file_err(if e.kind() == std::io::ErrorKind::NotFound {
            "missing: run `agent key set --config …` with the tunnel key on standard input".into()
        } else {
            e.to_string()
        })
    })?;
    let file: KeyFile =
        serde_json::from_slice(&text).map_err(|e| file_err(format!("malformed: {e}")))?;
    let cipher = match file.cipher.as_str() {
        "aes-256-gcm" => Cipher::Aes256Gcm,
        "chacha20-poly1305" => Cipher::ChaCha20Poly1305,
        other => return Err(file_err(format!("unknown cipher `{other}`"))),
    };
    let nonce: [u8; 12] = STANDARD
        .decode(&file.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| file_err("bad nonce".into()))?;
    let ct = STANDARD
        .decode(&file.ciphertext)
        .map_err(|_| file_err("bad ciphertext".into()))?;
    let kek = Kek::load(cfg, false)?;
    let plain = open(cipher, &kek, &nonce, &ct, &aad(&cfg.id))
        .ok_or(KeyStoreError::Decrypt(path.clone()))?;
    let bytes: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| KeyStoreError::Decrypt(path.clone()))?;
    Ok(TunnelKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(dir: &Path, cipher: Cipher, id: &str) -> TunnelSection {
        TunnelSection {
            id: id.into(),
            agent_name: Some("n".into()),
            key_file: dir.join("key"),
            kek_file: Some(dir.join("kek")),
            kek_env: None,
            cipher,
        }
    }

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("agentks-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn both_ciphers_round_trip_and_never_store_plaintext() {
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            let d = tmp();
            let s = section(&d, cipher, "tun_a");
            let key = TunnelKey::generate();
            store_key(&s, &key).unwrap();
            assert_eq!(load_key(&s).unwrap().expose(), key.expose());
            let on_disk = std::fs::read_to_string(d.join("key")).unwrap();
            assert!(!on_disk.contains(&key.reveal_text()));
            assert!(on_disk.contains(cipher_name(cipher)));
            use std::os::unix::fs::PermissionsExt;
            for f in ["key", "kek"] {
                let mode = std::fs::metadata(d.join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn setting_the_key_again_replaces_it() {
        let d = tmp();
        let s = section(&d, Cipher::Aes256Gcm, "tun_a");
        store_key(&s, &TunnelKey::generate()).unwrap();
        let second = TunnelKey::generate();
        store_key(&s, &second).unwrap();
        assert_eq!(load_key(&s).unwrap().expose(), second.expose());
        let leftovers = std::fs::read_dir(&d).unwrap().count();
        assert_eq!(leftovers, 2, "only the key file and the kek file remain");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn another_tunnel_or_kek_does_not_decrypt() {
        let d = tmp();
        let s = section(&d, Cipher::Aes256Gcm, "tun_a");
        store_key(&s, &TunnelKey::generate()).unwrap();
        let other = section(&d, Cipher::Aes256Gcm, "tun_b");
        assert!(matches!(load_key(&other), Err(KeyStoreError::Decrypt(_))));
        std::fs::write(d.join("kek"), STANDARD.encode([9u8; 32])).unwrap();
        assert!(matches!(load_key(&s), Err(KeyStoreError::Decrypt(_))));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn kek_from_environment() {
        let d = tmp();
        let var = format!("AGENT_TEST_KEK_{}", rand::random::<u32>());
        let s = TunnelSection {
            kek_file: None,
            kek_env: Some(var.clone()),
            ..section(&d, Cipher::ChaCha20Poly1305, "tun_env")
        };
        let err = store_key(&s, &TunnelKey::generate())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&var), "{err}");
        std::env::set_var(&var, STANDARD.encode([3u8; 32]));
        let key = TunnelKey::generate();
        store_key(&s, &key).unwrap();
        assert_eq!(load_key(&s).unwrap().expose(), key.expose());
        std::env::set_var(&var, STANDARD.encode([4u8; 32]));
        assert!(matches!(load_key(&s), Err(KeyStoreError::Decrypt(_))));
        std::env::remove_var(&var);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_kek_file_writable_by_group_or_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp();
        let s = section(&d, Cipher::Aes256Gcm, "tun_a");
        store_key(&s, &TunnelKey::generate()).unwrap();
        let kek = d.join("kek");
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o606)).unwrap();
        for e in [
            load_key(&s).err().unwrap().to_string(),
            store_key(&s, &TunnelKey::generate())
                .unwrap_err()
                .to_string(),
        ] {
            assert!(e.contains("writable by group or others"), "{e}");
            assert!(
                e.contains("0606") && e.contains(&kek.display().to_string()),
                "{e}"
            );
        }
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
        load_key(&s).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_key_file_says_what_to_do() {
        let d = tmp();
        let e = load_key(&section(&d, Cipher::Aes256Gcm, "t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("agent key set"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
