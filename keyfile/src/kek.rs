//! The key-encryption key: where it comes from and what is sealed under it.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::engine::general_purpose::STANDARD;
use base64::{DecodeSliceError, Engine};
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::private_file::{read_checked, write_private_new, ReadError, WritableByOthers};

/// Bytes of a key-encryption key.
pub const KEK_LEN: usize = 32;

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 12;

/// The key-encryption key: 32 bytes, wiped when dropped. `Debug` never
/// shows it.
pub struct Kek(Zeroizing<[u8; KEK_LEN]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(MASKED)")
    }
}

/// Where a KEK comes from: the `kek_env` and `kek_file` of one
/// configuration section. The variable wins when both are set.
#[derive(Debug, Clone, Copy)]
pub struct KekSource<'a> {
    /// The configuration section (`store`, `tunnel`), named in the
    /// message when neither is set.
    pub section: &'static str,
    /// `kek_file`.
    pub file: Option<&'a Path>,
    /// `kek_env`: the name of the variable.
    pub env: Option<&'a str>,
}

impl KekSource<'_> {
    /// The mistake a configuration can make in naming its KEK, as the
    /// field to name and why: neither `kek_file` nor `kek_env`, or both
    /// (a configuration must say which one it means).
    pub fn mistake(&self) -> Option<(String, &'static str)> {
        match (self.file, self.env) {
            (None, None) => Some((
                format!("{}.kek_file", self.section),
                "set kek_file or kek_env",
            )),
            (Some(_), Some(_)) => Some((
                format!("{}.kek_env", self.section),
                "set only one of kek_file and kek_env",
            )),
            _ => None,
        }
    }
}

/// What [`Kek::load`] does when the KEK file does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Create it with fresh random bytes (nothing is sealed under a KEK
    /// yet, so a new one loses nothing).
    Create,
    /// Fail with [`KekError::NotFound`]: a new KEK would leave everything
    /// sealed under the lost one unreadable.
    Fail,
}

/// Why no KEK. Messages name the file or the variable, never the key, its
/// text or any part of it.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("set {section}.kek_file or {section}.kek_env")]
    NoSource { section: &'static str },
    #[error("environment variable {var} is not set")]
    EnvNotSet { var: String },
    /// `origin` is the file's path or `environment variable NAME`.
    #[error("{origin}: {reason}")]
    Malformed {
        origin: String,
        reason: &'static str,
    },
    #[error("{} is missing", path.display())]
    NotFound { path: PathBuf },
    #[error(transparent)]
    NotPrivate(#[from] WritableByOthers),
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Sealing failed: only a plaintext over the AEAD's size limit can.
#[derive(Debug, thiserror::Error)]
#[error("encryption failed")]
pub struct SealError;

/// The AEAD a value is sealed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Aes256Gcm,
    ChaCha20Poly1305,
}

const NOT_BASE64: &str = "not base64 (expected the base64 of 32 random bytes)";
const NOT_32_BYTES: &str = "must be 32 bytes (the base64 of 32 random bytes)";

impl Kek {
    /// A fresh random KEK.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; KEK_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut *k);
        Kek(k)
    }

    /// Parses the base64 text of a KEK (surrounding whitespace allowed) and
    /// wipes `text`, whether it parsed or not. The decoded bytes go through
    /// a fixed buffer that is wiped too. The reason of a failure quotes
    /// nothing of the text.
    pub(crate) fn parse_and_wipe(text: &mut [u8]) -> Result<Self, &'static str> {
        let mut raw = Zeroizing::new([0u8; 2 * KEK_LEN]);
        let decoded = STANDARD.decode_slice(text.trim_ascii(), &mut raw[..]);
        text.zeroize();
        let k = match decoded {
            Ok(KEK_LEN) => {
                let mut k = Zeroizing::new([0u8; KEK_LEN]);
                k.copy_from_slice(&raw[..KEK_LEN]);
                Kek(k)
            }
            Ok(_) | Err(DecodeSliceError::OutputSliceTooSmall) => return Err(NOT_32_BYTES),
            Err(DecodeSliceError::DecodeError(_)) => return Err(NOT_BASE64),
        };
        Ok(k)
    }

    /// The KEK of `source`: from the variable if one is named, otherwise
    /// from the file, created (0600, with fresh random bytes) when missing
    /// if `if_missing` allows it.
    pub fn load(source: KekSource<'_>, if_missing: IfMissing) -> Result<Self, KekError> {
        if let Some(var) = source.env {
            return Self::from_env(var);
        }
        let path = source.file.ok_or(KekError::NoSource {
            section: source.section,
        })?;
        match Self::read(path) {
            Err(KekError::NotFound { .. }) if if_missing == IfMissing::Create => Self::create(path),
            r => r,
        }
    }

    /// The KEK in the environment variable `var`. The copy of its value
    /// read here is wiped; the process environment keeps its own (the
    /// operating system's), as for any variable.
    pub fn from_env(var: &str) -> Result<Self, KekError> {
        use std::os::unix::ffi::OsStringExt;
        let value = std::env::var_os(var).ok_or_else(|| KekError::EnvNotSet { var: var.into() })?;
        let mut text = Zeroizing::new(value.into_vec());
        Self::parse_and_wipe(&mut text).map_err(|reason| KekError::Malformed {
            origin: format!("environment variable {var}"),
            reason,
        })
    }

    /// The KEK in the file `path`, which group and others must not be able
    /// to write. A missing file is [`KekError::NotFound`].
    pub fn read(path: &Path) -> Result<Self, KekError> {
        let mut text = read_checked(path).map_err(|e| match e {
            ReadError::NotPrivate(w) => KekError::NotPrivate(w),
            ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => KekError::NotFound {
                path: path.to_owned(),
            },
            ReadError::Io(source) => KekError::Read {
                path: path.to_owned(),
                source,
            },
        })?;
        Self::parse_and_wipe(&mut text).map_err(|reason| KekError::Malformed {
            origin: path.display().to_string(),
            reason,
        })
    }

    /// A fresh KEK written to the new file `path`. When another process
    /// created the file meanwhile, its KEK is the one used.
    fn create(path: &Path) -> Result<Self, KekError> {
        let k = Self::generate();
        match k.write_new(path) {
            Ok(()) => Ok(k),
            Err(KekError::Create { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Self::read(path)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes this KEK (its base64, no newline) to a new file `path`: mode
    /// 0600, whole or not at all, never over an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), KekError> {
        let text = Zeroizing::new(STANDARD.encode(self.0.as_slice()));
        write_private_new(path, text.as_bytes()).map_err(|source| KekError::Create {
            path: path.to_owned(),
            source,
        })
    }

    /// Seals `plaintext` with a fresh random nonce, bound to `aad`:
    /// (nonce, ciphertext with its 16-byte tag). Nothing else is added.
    pub fn seal(
        &self,
        cipher: Cipher,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad,
        };
        let key = self.0.as_slice();
        let ct = match cipher {
            Cipher::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(key)
                .map_err(|_| SealError)?
                .encrypt(aes_gcm::Nonce::from_slice(&nonce), payload),
            Cipher::ChaCha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
                .map_err(|_| SealError)?
                .encrypt(chacha20poly1305::Nonce::from_slice(&nonce), payload),
        }
        .map_err(|_| SealError)?;
        Ok((nonce, ct))
    }

    /// Opens what [`Kek::seal`] sealed; `None` when it does not decrypt
    /// under this KEK with this cipher and `aad` (or the nonce is not 12
    /// bytes). The plaintext is wiped when dropped.
    pub fn open(
        &self,
        cipher: Cipher,
        nonce: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        if nonce.len() != NONCE_LEN {
            return None;
        }
        let payload = Payload {
            msg: ciphertext,
            aad,
        };
        let key = self.0.as_slice();
        let plain = match cipher {
            Cipher::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(key)
                .ok()?
                .decrypt(aes_gcm::Nonce::from_slice(nonce), payload),
            Cipher::ChaCha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
                .ok()?
                .decrypt(chacha20poly1305::Nonce::from_slice(nonce), payload),
        }
        .ok()?;
        Some(Zeroizing::new(plain))
    }

    /// [`Kek::open`] of a sealed 32-byte key; `None` as well when the
    /// plaintext is not 32 bytes.
    pub fn open_key(
        &self,
        cipher: Cipher,
        nonce: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Option<Zeroizing<[u8; 32]>> {
        let plain = self.open(cipher, nonce, ciphertext, aad)?;
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != out.len() {
            return None;
        }
        out.copy_from_slice(&plain);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const CIPHERS: [Cipher; 2] = [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305];

    fn kek_of(bytes: [u8; 32]) -> Kek {
        Kek::parse_and_wipe(&mut STANDARD.encode(bytes).into_bytes()).unwrap()
    }

    fn source<'a>(file: Option<&'a Path>, env: Option<&'a str>) -> KekSource<'a> {
        KekSource {
            section: "store",
            file,
            env,
        }
    }

    /// A variable name of the test's own: the environment is process-wide.
    fn var_name(test: &str) -> String {
        format!("KEYFILE_TEST_{test}_{}", rand::random::<u32>())
    }

    /// The representations of `key` that must never appear in a message.
    fn forms(key: &[u8]) -> Vec<String> {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        vec![
            STANDARD.encode(key),
            STANDARD.encode(key).trim_end_matches('=').to_string(),
            hex.clone(),
            hex.to_uppercase(),
            format!("{key:?}"),
        ]
    }

    fn assert_quotes_nothing(e: &KekError, secrets: &[&[u8]]) {
        for text in [e.to_string(), format!("{e:?}")] {
            for secret in secrets {
                for form in forms(secret) {
                    assert!(!text.contains(&form), "{text} quotes {form}");
                }
            }
        }
    }

    #[test]
    fn a_configuration_names_exactly_one_kek_source() {
        let file = Path::new("/etc/gateway/kek");
        let source = |file, env| KekSource {
            section: "store",
            file,
            env,
        };
        assert_eq!(
            source(None, None).mistake(),
            Some(("store.kek_file".into(), "set kek_file or kek_env"))
        );
        assert_eq!(
            source(Some(file), Some("GATEWAY_KEK")).mistake(),
            Some((
                "store.kek_env".into(),
                "set only one of kek_file and kek_env"
            ))
        );
        assert_eq!(source(Some(file), None).mistake(), None);
        assert_eq!(source(None, Some("GATEWAY_KEK")).mistake(), None);
    }

    #[test]
    fn a_sealed_value_round_trips_with_both_ciphers() {
        let kek = Kek::generate();
        for cipher in CIPHERS {
            for plain in [&b""[..], b"x", &[7u8; 32], &[1u8; 1000]] {
                let (nonce, ct) = kek.seal(cipher, plain, b"aad").unwrap();
                assert_eq!(
                    ct.len(),
                    plain.len() + 16,
                    "the ciphertext and its tag only"
                );
                assert_eq!(&**kek.open(cipher, &nonce, &ct, b"aad").unwrap(), plain);
            }
            let (nonce, ct) = kek.seal(cipher, &[9u8; 32], b"aad").unwrap();
            assert_eq!(
                *kek.open_key(cipher, &nonce, &ct, b"aad").unwrap(),
                [9u8; 32]
            );
            let (nonce, ct) = kek.seal(cipher, &[9u8; 31], b"aad").unwrap();
            assert!(kek.open_key(cipher, &nonce, &ct, b"aad").is_none());
        }
    }

    #[test]
    fn the_same_value_sealed_twice_differs() {
        let kek = Kek::generate();
        let a = kek.seal(Cipher::Aes256Gcm, &[1; 32], b"").unwrap();
        let b = kek.seal(Cipher::Aes256Gcm, &[1; 32], b"").unwrap();
        assert_ne!(a.0, b.0, "a fresh nonce each time");
        assert_ne!(a.1, b.1);
    }

    #[test]
    fn a_tampered_sealed_value_is_refused() {
        let kek = Kek::generate();
        for cipher in CIPHERS {
            let (nonce, ct) = kek.seal(cipher, &[5u8; 32], b"tunnel-a").unwrap();
            for i in 0..ct.len() {
                let mut bad = ct.clone();
                bad[i] ^= 0x01;
                assert!(
                    kek.open(cipher, &nonce, &bad, b"tunnel-a").is_none(),
                    "byte {i}"
                );
            }
            for i in 0..NONCE_LEN {
                let mut bad = nonce;
                bad[i] ^= 0x80;
                assert!(
                    kek.open(cipher, &bad, &ct, b"tunnel-a").is_none(),
                    "nonce {i}"
                );
            }
            assert!(kek
                .open(cipher, &nonce, &ct[..ct.len() - 1], b"tunnel-a")
                .is_none());
            assert!(kek.open(cipher, &nonce[..11], &ct, b"tunnel-a").is_none());
            assert!(
                kek.open(cipher, &nonce, &ct, b"tunnel-b").is_none(),
                "other aad"
            );
            assert!(kek.open(cipher, &nonce, &ct, b"").is_none());
        }
        let (nonce, ct) = kek.seal(Cipher::Aes256Gcm, &[5u8; 32], b"").unwrap();
        assert!(
            kek.open(Cipher::ChaCha20Poly1305, &nonce, &ct, b"")
                .is_none(),
            "other cipher"
        );
    }

    #[test]
    fn a_wrong_kek_is_refused() {
        let right = Kek::generate();
        let wrong = Kek::generate();
        for cipher in CIPHERS {
            let (nonce, ct) = right.seal(cipher, &[3u8; 32], b"a").unwrap();
            assert!(wrong.open(cipher, &nonce, &ct, b"a").is_none());
            assert!(wrong.open_key(cipher, &nonce, &ct, b"a").is_none());
        }
    }

    #[test]
    fn what_was_sealed_before_this_crate_still_opens() {
        // AES-256-GCM under [0x11; 32] of [0x22; 32], sealed by the
        // gateway's code before this crate, associated data `tunnel-key/v1`
        // then the length-prefixed id `tun_fixture` and org `acme`.
        let kek = kek_of([0x11; 32]);
        let aad = [
            &b"tunnel-key/v1"[..],
            &11u32.to_be_bytes(),
            b"tun_fixture",
            &4u32.to_be_bytes(),
            b"acme",
        ]
        .concat();
        let nonce = from_hex("f318ca82a1e99c4f14fc4b54");
        let ct = from_hex(
            "97d8fcd96a5419966b9d28c75194a2f850f8bd2d9df53f872970f51f60cfd5ae\
             01ca3c6059b4e561fbcd90c79161f647",
        );
        assert_eq!(
            *kek.open_key(Cipher::Aes256Gcm, &nonce, &ct, &aad).unwrap(),
            [0x22; 32]
        );
    }

    fn from_hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_text_of_a_kek_is_wiped_whether_it_parses_or_not() {
        let good = STANDARD.encode([0x5a; 32]);
        let cases = [
            format!("  {good}\n"),
            "not base64!".to_string(),
            STANDARD.encode([0x5a; 31]),
            STANDARD.encode([0x5a; 33]),
            STANDARD.encode([0x5a; 200]),
            String::new(),
        ];
        for (i, case) in cases.into_iter().enumerate() {
            let mut text = case.clone().into_bytes();
            let len = text.len();
            let parsed = Kek::parse_and_wipe(&mut text);
            assert_eq!(parsed.is_ok(), i == 0, "{case}");
            assert_eq!(text.len(), len);
            assert!(text.iter().all(|b| *b == 0), "{case} left in memory");
        }
    }

    #[test]
    fn the_kek_comes_from_the_environment_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kek");
        let var = var_name("ENV");
        let e = Kek::load(source(Some(&file), Some(&var)), IfMissing::Create).unwrap_err();
        assert!(matches!(e, KekError::EnvNotSet { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("environment variable {var} is not set")
        );
        assert!(
            !file.exists(),
            "no file is written when a variable is named"
        );
        std::env::set_var(&var, format!("{}\n", STANDARD.encode([4u8; 32])));
        let k = Kek::load(source(Some(&file), Some(&var)), IfMissing::Fail).unwrap();
        let (n, ct) = kek_of([4u8; 32])
            .seal(Cipher::Aes256Gcm, b"v", b"")
            .unwrap();
        assert_eq!(&**k.open(Cipher::Aes256Gcm, &n, &ct, b"").unwrap(), b"v");
        std::env::set_var(&var, "not base64!");
        let e = Kek::from_env(&var).unwrap_err().to_string();
        assert!(e.contains(&var) && e.contains("not base64"), "{e}");
        // Set but not UTF-8: malformed, not "not set".
        use std::os::unix::ffi::OsStrExt;
        std::env::set_var(&var, std::ffi::OsStr::from_bytes(b"\xff\xfe"));
        let e = Kek::from_env(&var).unwrap_err().to_string();
        assert!(e.contains(&var) && e.contains("not base64"), "{e}");
        std::env::remove_var(&var);
    }

    #[test]
    fn a_missing_file_is_created_0600_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kek");
        let e = Kek::load(source(Some(&file), None), IfMissing::Fail).unwrap_err();
        assert!(matches!(e, KekError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        assert!(!file.exists());
        let made = Kek::load(source(Some(&file), None), IfMissing::Create).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Base64 of 32 bytes, no newline: the layout of existing KEK files.
        assert_eq!(std::fs::read(&file).unwrap().len(), 44);
        // The file now holds that KEK, and it is not replaced.
        let again = Kek::load(source(Some(&file), None), IfMissing::Create).unwrap();
        let (n, ct) = made.seal(Cipher::ChaCha20Poly1305, b"v", b"").unwrap();
        assert!(again.open(Cipher::ChaCha20Poly1305, &n, &ct, b"").is_some());
        let e = made.write_new(&file).unwrap_err();
        assert!(e.to_string().starts_with("cannot create"), "{e}");
        let e = Kek::load(source(None, None), IfMissing::Create).unwrap_err();
        assert_eq!(e.to_string(), "set store.kek_file or store.kek_env");
    }

    #[test]
    fn a_kek_file_writable_by_group_or_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kek");
        kek_of([8u8; 32]).write_new(&file).unwrap();
        for mode in [0o664, 0o606, 0o620, 0o666, 0o602] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Kek::load(source(Some(&file), None), IfMissing::Create).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, KekError::NotPrivate(_)), "{text}");
            assert!(
                text.contains(&format!(
                    "{} is writable by group or others (mode {mode:04o})",
                    file.display()
                )),
                "{text}"
            );
            assert_quotes_nothing(&e, &[&[8u8; 32]]);
        }
        // Reading by group or others is the operator's choice.
        for mode in [0o600, 0o640, 0o644, 0o400] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            Kek::read(&file).unwrap();
        }
    }

    #[test]
    fn errors_never_quote_the_key_or_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let key = [0xc3u8; 33];
        let cases: Vec<Vec<u8>> = vec![
            STANDARD.encode(&key[..31]).into_bytes(),
            STANDARD.encode(key).into_bytes(),
            "c3".repeat(32).into_bytes(),
            b"w8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PD!!".to_vec(),
        ];
        for (i, text) in cases.iter().enumerate() {
            let file = dir.path().join(format!("kek{i}"));
            std::fs::write(&file, text).unwrap();
            let e = Kek::read(&file).unwrap_err();
            assert!(matches!(e, KekError::Malformed { .. }), "{e}");
            assert!(
                e.to_string().starts_with(&file.display().to_string()),
                "{e}"
            );
            assert_quotes_nothing(&e, &[&key, &key[..32], &key[..31]]);
            assert!(!e.to_string().contains(std::str::from_utf8(text).unwrap()));

            let var = var_name("LEAK");
            std::env::set_var(&var, std::str::from_utf8(text).unwrap());
            let e = Kek::from_env(&var).unwrap_err();
            std::env::remove_var(&var);
            assert!(e.to_string().contains(&var), "{e}");
            assert_quotes_nothing(&e, &[&key, &key[..32], &key[..31]]);
            assert!(!e.to_string().contains(std::str::from_utf8(text).unwrap()));
        }
        let k = kek_of([0xc3; 32]);
        assert_eq!(format!("{k:?}"), "Kek(MASKED)");
    }
}
