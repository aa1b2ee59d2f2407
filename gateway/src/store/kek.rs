//! The store's use of the key-encryption key (KEK): how one tunnel key is
//! sealed (AES-256-GCM, bound to its tunnel, organization and key
//! generation by associated data) and where a rekey keeps its files. The
//! KEK itself (loading, creating, the file's permissions), the AEAD and the
//! private files are the `keyfile` crate.

use std::path::{Path, PathBuf};

pub use keyfile::Kek;
use keyfile::{Cipher, IfMissing, KekError, KekSource};
use zeroize::Zeroizing;

use super::StoreError;
use crate::config::StoreSection;

/// The AEAD of every sealed tunnel key (rows do not name one).
const CIPHER: Cipher = Cipher::Aes256Gcm;

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

impl From<KekError> for StoreError {
    fn from(e: KekError) -> Self {
        StoreError::Kek(e.to_string())
    }
}

/// Reads the KEK named by the config. A missing `kek_file` is created
/// with fresh random bytes and mode 0600 only when `may_create` (the
/// store holds no tunnel yet): a new KEK would make every stored tunnel
/// key unreadable, so a wrong path must fail instead.
pub fn load(cfg: &StoreSection, may_create: bool) -> Result<Kek, StoreError> {
    let source = KekSource {
        section: "store",
        file: cfg.kek_file.as_deref(),
        env: cfg.kek_env.as_deref(),
    };
    let if_missing = if may_create {
        IfMissing::Create
    } else {
        IfMissing::Fail
    };
    Kek::load(source, if_missing).map_err(|e| match e {
        KekError::NotFound { path } => StoreError::Kek(format!(
            "{} is missing but the store already holds tunnels: restore it \
             (a new key would leave every tunnel key unreadable)",
            path.display()
        )),
        e => e.into(),
    })
}

/// Seals a tunnel key of generation `generation`: (nonce, ciphertext).
pub fn seal(
    kek: &Kek,
    key: &[u8],
    id: &str,
    org: &str,
    generation: i64,
) -> Result<([u8; 12], Vec<u8>), StoreError> {
    kek.seal(CIPHER, key, &aad(id, org, generation))
        .map_err(|e| StoreError::Kek(e.to_string()))
}

/// Opens a sealed tunnel key; `None` when it does not decrypt under `kek`
/// for this tunnel and generation.
pub fn open(
    kek: &Kek,
    nonce: &[u8],
    ct: &[u8],
    id: &str,
    org: &str,
    generation: i64,
) -> Option<Zeroizing<[u8; 32]>> {
    kek.open_key(CIPHER, nonce, ct, &aad(id, org, generation))
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
        let (n, ct) = seal(&kek, &key, "tun_a", "acme", 3).unwrap();
        assert_eq!(*open(&kek, &n, &ct, "tun_a", "acme", 3).unwrap(), key);
        assert!(open(&kek, &n, &ct, "tun_b", "acme", 3).is_none());
        assert!(open(&kek, &n, &ct, "tun_a", "other", 3).is_none());
        assert!(open(&kek, &n, &ct, "tun_a", "acme", 2).is_none());
        assert!(open(&Kek::generate(), &n, &ct, "tun_a", "acme", 3).is_none());
    }

    /// Rows sealed by the gateway before the `keyfile` crate (KEK
    /// `[0x11; 32]`, tunnel key `[0x22; 32]`) still open, for the first
    /// generation and a rotated one.
    #[test]
    fn rows_sealed_before_keyfile_still_open() {
        let dir = std::env::temp_dir().join(format!("gwkek-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kek");
        {
            use base64::Engine;
            let text = base64::engine::general_purpose::STANDARD.encode([0x11u8; 32]);
            keyfile::write_private_new(&file, text.as_bytes()).unwrap();
        }
        let kek = Kek::read(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let rows = [
            (
                0,
                "f318ca82a1e99c4f14fc4b54",
                "97d8fcd96a5419966b9d28c75194a2f850f8bd2d9df53f872970f51f60cfd5ae\
                 01ca3c6059b4e561fbcd90c79161f647",
            ),
            (
                3,
                "398ff4fc5730aaf5ce6dc09f",
                "cb9d4ab391782a40c044840146c7de13ed94791d4bf29f106217ab823dece865\
                 fd24acab3585b5d826bf9eab365407a3",
            ),
        ];
        for (generation, nonce, ct) in rows {
            let (nonce, ct) = (hex::decode(nonce).unwrap(), hex::decode(ct).unwrap());
            let key = open(&kek, &nonce, &ct, "tun_fixture", "acme", generation);
            assert_eq!(*key.expect("opens"), [0x22; 32], "generation {generation}");
            assert!(open(&kek, &nonce, &ct, "tun_fixture", "acme", generation + 1).is_none());
        }
    }
}
