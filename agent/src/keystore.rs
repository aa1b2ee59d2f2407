//! The tunnel key at rest: encrypted with an AEAD (AES-256-GCM by default,
//! ChaCha20-Poly1305 selectable) under a local key-encryption key, with the
//! tunnel id as associated data so a key file copied to another tunnel's
//! config does not decrypt. This file is the agent's key file format; the
//! KEK, the AEAD and the private (0600, atomic) writes are the `keyfile`
//! crate.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use keyfile::{IfMissing, Kek, KekSource};
use protocol::TunnelKey;
use serde::{Deserialize, Serialize};

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

/// The KEK of `cfg`; a missing `kek_file` is created when `create` (a key
/// is being stored, so nothing is sealed under a lost KEK).
fn load_kek(cfg: &TunnelSection, create: bool) -> Result<Kek, KeyStoreError> {
    let source = KekSource {
        section: "tunnel",
        file: cfg.kek_file.as_deref(),
        env: cfg.kek_env.as_deref(),
    };
    let if_missing = if create {
        IfMissing::Create
    } else {
        IfMissing::Fail
    };
    Kek::load(source, if_missing).map_err(|e| KeyStoreError::Kek(e.to_string()))
}

fn aad(tunnel_id: &str) -> Vec<u8> {
    [b"agent-tunnel-key/v1:".as_slice(), tunnel_id.as_bytes()].concat()
}

fn aead(c: Cipher) -> keyfile::Cipher {
    match c {
        Cipher::Aes256Gcm => keyfile::Cipher::Aes256Gcm,
        Cipher::ChaCha20Poly1305 => keyfile::Cipher::ChaCha20Poly1305,
    }
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
    let kek = load_kek(cfg, true)?;
    let (nonce, ct) = kek
        .seal(aead(cfg.cipher), key.expose(), &aad(&cfg.id))
        .map_err(|e| KeyStoreError::Kek(e.to_string()))?;
    let file = KeyFile {
        version: 1,
        cipher: cipher_name(cfg.cipher).into(),
        nonce: STANDARD.encode(nonce),
        ciphertext: STANDARD.encode(ct),
    };
    let text = serde_json::to_vec_pretty(&file).expect("serializable");
    keyfile::write_private(&cfg.key_file, &text).map_err(|e| KeyStoreError::File {
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
    let kek = load_kek(cfg, false)?;
    let plain = kek
        .open_key(aead(cipher), &nonce, &ct, &aad(&cfg.id))
        .ok_or(KeyStoreError::Decrypt(path))?;
    Ok(TunnelKey::from_bytes(*plain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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

    /// Key files written by the agent before the `keyfile` crate (KEK
    /// `[0x33; 32]`, tunnel `tun_fixture`, key `[0x44; 32]`) still open.
    #[test]
    fn key_files_written_before_keyfile_still_open() {
        let files = [
            (
                Cipher::Aes256Gcm,
                "{\n  \"version\": 1,\n  \"cipher\": \"aes-256-gcm\",\n  \"nonce\": \"Mp5sqo5zH54r/z4C\",\n  \
                 \"ciphertext\": \"C5fgFUzyfAO2GSkbcJx8EayQcbxLItevEerqsyPXYHRNvfXprRgo3bflRZFA1VjG\"\n}",
            ),
            (
                Cipher::ChaCha20Poly1305,
                "{\n  \"version\": 1,\n  \"cipher\": \"chacha20-poly1305\",\n  \"nonce\": \"vs8Yqnevq6fHD7RA\",\n  \
                 \"ciphertext\": \"FXJ87F6veHTeDMmIBDYXe6a9aIN8PEFPwWBHcQjE2Qk/Y9sXXj0XzI9xzTVIuaRF\"\n}",
            ),
        ];
        for (cipher, text) in files {
            let d = tmp();
            std::fs::write(d.join("kek"), STANDARD.encode([0x33u8; 32])).unwrap();
            std::fs::write(d.join("key"), text).unwrap();
            // The configured cipher is for writing; the file names its own.
            let other = match cipher {
                Cipher::Aes256Gcm => Cipher::ChaCha20Poly1305,
                Cipher::ChaCha20Poly1305 => Cipher::Aes256Gcm,
            };
            let s = section(&d, other, "tun_fixture");
            assert_eq!(load_key(&s).unwrap().expose(), &[0x44u8; 32]);
            // Written again, the layout is the same: a version 1 JSON file.
            store_key(&section(&d, cipher, "tun_fixture"), &load_key(&s).unwrap()).unwrap();
            let again: serde_json::Value =
                serde_json::from_slice(&std::fs::read(d.join("key")).unwrap()).unwrap();
            assert_eq!(again["version"], 1);
            assert_eq!(again["cipher"], cipher_name(cipher));
            assert_eq!(load_key(&s).unwrap().expose(), &[0x44u8; 32]);
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn a_missing_kek_file_is_not_replaced_when_loading() {
        let d = tmp();
        let s = section(&d, Cipher::Aes256Gcm, "tun_a");
        store_key(&s, &TunnelKey::generate()).unwrap();
        std::fs::remove_file(d.join("kek")).unwrap();
        let e = load_key(&s).unwrap_err().to_string();
        assert!(
            e.contains("key-encryption key")
                && e.contains(&d.join("kek").display().to_string())
                && e.contains("missing"),
            "{e}"
        );
        assert!(!d.join("kek").exists(), "loading never creates a KEK");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
