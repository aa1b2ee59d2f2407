//! Secret values as a type: never printed, wiped on drop.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length in bytes of a tunnel key.
pub const KEY_LEN: usize = 32;

/// A tunnel's shared secret. `Debug` prints `MASKED`; the bytes are zeroed
/// when the value is dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TunnelKey([u8; KEY_LEN]);

impl TunnelKey {
    /// Draws a new key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut k = [0u8; KEY_LEN];
        // OsRng panics if the OS cannot give randomness: there is no safe fallback.
        rand::rngs::OsRng.fill_bytes(&mut k);
        TunnelKey(k)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        TunnelKey(bytes)
    }

    /// Parses the text form shown to the operator (base64url, no padding).
    /// Surrounding whitespace is ignored so a pasted line with a newline works.
    pub fn parse(text: &str) -> Result<Self, KeyParseError> {
        let mut raw = URL_SAFE_NO_PAD
            .decode(text.trim().as_bytes())
            .map_err(|_| KeyParseError)?;
        if raw.len() != KEY_LEN {
            raw.zeroize();
            return Err(KeyParseError);
        }
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(&raw);
        raw.zeroize();
        Ok(TunnelKey(k))
    }

    /// The text form (base64url, no padding). Call it only to show the key
    /// once to the operator.
    pub fn reveal_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The raw bytes, for MAC and encryption.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for TunnelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelKey(MASKED)")
    }
}

/// The key text is not 32 bytes of base64url. Deliberately says nothing
/// about the input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a tunnel key is 43 characters of base64url (32 bytes)")]
pub struct KeyParseError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let k = TunnelKey::generate();
        let text = k.reveal_text();
        assert_eq!(text.len(), 43);
        let back = TunnelKey::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(back.expose(), k.expose());
    }

    #[test]
    fn bad_text_is_refused() {
        assert_eq!(TunnelKey::parse("short").unwrap_err(), KeyParseError);
        assert!(TunnelKey::parse(&"A".repeat(44)).is_err());
        assert!(TunnelKey::parse("!!!").is_err());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let k = TunnelKey::from_bytes([0x41; 32]);
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "TunnelKey(MASKED)");
        assert!(!dbg.contains(&k.reveal_text()));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            TunnelKey::generate().expose(),
            TunnelKey::generate().expose()
        );
    }
}
