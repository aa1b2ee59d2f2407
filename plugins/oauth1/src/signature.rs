//! The signature base string (RFC 5849 §3.4.1) and the three signature
//! methods this plugin verifies: HMAC-SHA1 (§3.4.2), RSA-SHA1 (§3.4.3) and
//! HMAC-SHA256 (not in the RFC, but the same construction with SHA-256, as
//! several providers use it). PLAINTEXT (§3.4.4) is not supported: it sends
//! the secrets themselves, and verifying it at the edge would mean comparing
//! secrets in logs' reach for no gain.

use alloc::{format, string::String, vec::Vec};

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use hmac::{Hmac, Mac};
use rsa::{
    pkcs1::DecodeRsaPublicKey, pkcs8::DecodePublicKey, traits::PublicKeyParts, Pkcs1v15Sign,
    RsaPublicKey,
};
use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::encoding::{encode, encode_into, Param};

/// A signature method this plugin can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `HMAC-SHA1`, RFC 5849 §3.4.2.
    HmacSha1,
    /// `HMAC-SHA256`: §3.4.2 with SHA-256.
    HmacSha256,
    /// `RSA-SHA1`, RFC 5849 §3.4.3 (PKCS#1 v1.5 over SHA-1).
    RsaSha1,
}

impl Method {
    /// Every method, for messages.
    pub const ALL: [Method; 3] = [Method::RsaSha1, Method::HmacSha1, Method::HmacSha256];

    /// The name used in `oauth_signature_method` and in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Method::HmacSha1 => "HMAC-SHA1",
            Method::HmacSha256 => "HMAC-SHA256",
            Method::RsaSha1 => "RSA-SHA1",
        }
    }

    /// The method of that name. Names are matched exactly: the RFC spells
    /// them in upper case and every client sends them that way.
    pub fn from_name(name: &str) -> Option<Method> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The base string URI (§3.4.1.2): the configured public origin (already
/// lower-cased, default port dropped) followed by the request's path exactly
/// as it was sent, without query or fragment; an empty path is `/`.
///
/// The path is not re-normalized: RFC 5849 signs the request URI as sent,
/// client libraries sign the URL they send, and the service behind the
/// gateway (which sees the same bytes, see the repository README) verifies
/// against the same. Normalizing here would only create requests that the
/// gateway and the service judge differently.
pub fn base_string_uri(origin: &str, path_with_query: &str) -> String {
    let path = path_with_query.split(['?', '#']).next().unwrap_or_default();
    let path = if path.is_empty() { "/" } else { path };
    format!("{origin}{path}")
}

/// The normalized request parameters (§3.4.1.3.2): every name and value
/// encoded, pairs sorted by name then value in byte order, joined with `=`
/// and `&`.
pub fn normalized_parameters<'a>(params: impl IntoIterator<Item = &'a Param>) -> String {
    let mut encoded: Vec<(String, String)> = params
        .into_iter()
        .map(|p| (encode(&p.name), encode(&p.value)))
        .collect();
    encoded.sort_unstable();
    let mut out = String::new();
    for (i, (name, value)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// The signature base string (§3.4.1.1): method, base string URI and
/// normalized parameters, each encoded, joined with `&`.
pub fn base_string(method: &str, uri: &str, normalized: &str) -> String {
    let mut out = String::new();
    encode_into(&mut out, method.to_ascii_uppercase().as_bytes());
    out.push('&');
    encode_into(&mut out, uri.as_bytes());
    out.push('&');
    encode_into(&mut out, normalized.as_bytes());
    out
}

/// The HMAC key (§3.4.2): `encode(consumer secret) & encode(token secret)`;
/// the `&` is there even when the token secret is empty.
pub fn hmac_key(consumer_secret: &str, token_secret: &str) -> String {
    let mut key = encode(consumer_secret.as_bytes());
    key.push('&');
    encode_into(&mut key, token_secret.as_bytes());
    key
}

/// The HMAC of `base` under `key` with the method's hash; `None` for RSA.
pub fn hmac_sign(method: Method, key: &[u8], base: &[u8]) -> Option<Vec<u8>> {
    // `new_from_slice` accepts any key length for HMAC; the error arm exists
    // only because the trait is shared with fixed-key MACs.
    match method {
        Method::HmacSha1 => {
            let mut mac = Hmac::<Sha1>::new_from_slice(key).ok()?;
            mac.update(base);
            Some(mac.finalize().into_bytes().to_vec())
        }
        Method::HmacSha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
            mac.update(base);
            Some(mac.finalize().into_bytes().to_vec())
        }
        Method::RsaSha1 => None,
    }
}

/// Whether `signature` is the HMAC of `base` under `key`. `verify_slice`
/// compares in constant time (through `subtle`), so the time taken says
/// nothing about how many leading bytes of a forged signature were right.
pub fn hmac_verify(method: Method, key: &[u8], base: &[u8], signature: &[u8]) -> bool {
    match method {
        Method::HmacSha1 => Hmac::<Sha1>::new_from_slice(key).is_ok_and(|mut mac| {
            mac.update(base);
            mac.verify_slice(signature).is_ok()
        }),
        Method::HmacSha256 => Hmac::<Sha256>::new_from_slice(key).is_ok_and(|mut mac| {
            mac.update(base);
            mac.verify_slice(signature).is_ok()
        }),
        Method::RsaSha1 => false,
    }
}

/// Whether `signature` is a PKCS#1 v1.5 SHA-1 signature of `base` by the
/// holder of `key`'s private half.
pub fn rsa_verify(key: &RsaPublicKey, base: &[u8], signature: &[u8]) -> bool {
    key.verify(Pkcs1v15Sign::new::<Sha1>(), &Sha1::digest(base), signature)
        .is_ok()
}

/// Base64 as `oauth_signature` carries it: the standard alphabet, padding
/// optional (some clients strip it), no stray bits.
const SIGNATURE_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes an `oauth_signature` value (already percent-decoded).
pub fn decode_signature(value: &str) -> Option<Vec<u8>> {
    SIGNATURE_BASE64.decode(value).ok()
}

/// Encodes a signature as `oauth_signature` carries it (for tests and
/// examples).
pub fn encode_signature(signature: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(signature)
}

/// Smallest RSA modulus accepted in the configuration. 512-bit keys are
/// factored in hours; 1024 bits is still what many application links were
/// set up with (and what the published vector uses).
const MIN_RSA_BITS: usize = 1024;

/// Reads an RSA public key from the configuration. Accepted forms:
/// - PEM `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo),
/// - PEM `-----BEGIN RSA PUBLIC KEY-----` (PKCS#1),
/// - the bare base64 of a SubjectPublicKeyInfo, which is how Atlassian's
///   application-link screens show a consumer's public key.
///
/// The PEM armour is taken apart here rather than by a PEM library so that
/// keys pasted on one line or with `\r\n` line ends (common when they travel
/// through JSON and web forms) are read as well: only the base64 between
/// the armour lines matters.
pub fn parse_rsa_public_key(text: &str) -> Result<RsaPublicKey, String> {
    const SPKI: &str = "PUBLIC KEY";
    const PKCS1: &str = "RSA PUBLIC KEY";
    let text = text.trim();
    let (label, body) = match text.strip_prefix("-----BEGIN ") {
        Some(rest) => {
            let (label, rest) = rest
                .split_once("-----")
                .ok_or("the PEM BEGIN line is not closed with -----")?;
            let end = format!("-----END {label}-----");
            let body = rest
                .trim_end()
                .strip_suffix(end.as_str())
                .ok_or_else(|| format!("the PEM block does not end with {end}"))?;
            (label, body)
        }
        None => (SPKI, text),
    };
    if label != SPKI && label != PKCS1 {
        return Err(format!(
            "expected a public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY), found BEGIN {label}"
        ));
    }
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the key is not valid base64: {e}"))?;
    let key = if label == SPKI {
        RsaPublicKey::from_public_key_der(&der)
            .map_err(|e| format!("not an RSA SubjectPublicKeyInfo: {e}"))?
    } else {
        RsaPublicKey::from_pkcs1_der(&der)
            .map_err(|e| format!("not a PKCS#1 RSA public key: {e}"))?
    };
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    Ok(key)
}
