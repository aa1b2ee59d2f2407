//! TLS material from PEM files, as both ends load it (the gateway's
//! certificates and key, the agent's CA file), through rustls' own
//! `PemObject` rather than the unmaintained `rustls-pemfile`.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file could not be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: malformed PEM {what}: {detail}")]
    Malformed {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: no {what} found")]
    Missing { path: String, what: &'static str },
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn malformed(path: &Path, what: &'static str, e: pem::Error) -> PemError {
    match e {
        pem::Error::NoItemsFound => PemError::Missing {
            path: path.display().to_string(),
            what,
        },
        other => PemError::Malformed {
            path: path.display().to_string(),
            what,
            detail: describe(&other).to_string(),
        },
    }
}

/// What is wrong, in words of our own: the parser's own messages may
/// quote the offending line, which for a key written on one line is the
/// key itself, and an error message must never carry key material.
fn describe(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::Io(_) => "the file could not be read",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "not a PEM file",
    }
}

/// Every certificate in a PEM file, in order; at least one.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let data = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(malformed(path, "certificate", pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let data = zeroize::Zeroizing::new(read(path)?);
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| malformed(path, "private key", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A PEM section; its DER is not parsed at this layer (rustls does,
    // when the certificate is used).
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n";

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pem-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn missing_malformed_and_absent_items_name_the_file() {
        let e = certs(Path::new("/nonexistent/ca.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read /nonexistent/ca.pem"), "{e}");

        let empty = file("empty.pem", "no pem here\n");
        let e = certs(&empty).unwrap_err().to_string();
        assert_eq!(e, format!("{}: no certificate found", empty.display()));
        let e = private_key(&empty).unwrap_err().to_string();
        assert_eq!(e, format!("{}: no private key found", empty.display()));

        let cut = file("cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let e = certs(&cut).unwrap_err().to_string();
        assert!(e.contains("malformed PEM certificate"), "{e}");
        assert!(e.contains("cut.pem"), "{e}");
    }

    #[test]
    fn a_malformed_key_is_not_quoted_in_the_error() {
        // A key joined onto one line (as a secrets manager may write it).
        let secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
        let one_line = file(
            "one-line.pem",
            &format!("-----BEGIN PRIVATE KEY----- {secret} -----END PRIVATE KEY-----\n"),
        );
        let e = private_key(&one_line).unwrap_err().to_string();
        assert!(e.contains("malformed PEM private key"), "{e}");
        for part in [secret, "77, 73, 73, 69"] {
            assert!(!e.contains(part), "the key is in the error: {e}");
        }
        let cut = file(
            "cut-key.pem",
            &format!("-----BEGIN PRIVATE KEY-----\n{secret}\n"),
        );
        let e = private_key(&cut).unwrap_err().to_string();
        assert!(e.contains("no END line") && !e.contains(secret), "{e}");
    }

    #[test]
    fn certificates_are_read_in_order() {
        let two = file("two.pem", &format!("{CERT}junk between\n{CERT}"));
        let read = certs(&two).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].as_ref(), [0, 1, 2, 3]);
    }
}
