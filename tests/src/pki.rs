//! A throw-away public key infrastructure: one CA, certificates it signs,
//! all written as PEM files that the gateway and the agent read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate and its private key, as PEM files on disk.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM PKCS#8 private key.
    pub key: PathBuf,
}

impl CertFiles {
    /// Loads the chain and key for a rustls server config.
    pub fn load(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let certs = pem_blocks(&self.cert, "CERTIFICATE")
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let key = pem_blocks(&self.key, "PRIVATE KEY")
            .into_iter()
            .next()
            .expect("a PKCS#8 key in the key file");
        (certs, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
    }
}

/// A certificate authority and the gateway certificate it signed.
pub struct Pki {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    ca_key: KeyPair,
    ca_cert: rcgen::Certificate,
    /// The CA certificate (PEM): what agents trust.
    pub ca_file: PathBuf,
    /// The gateway's certificate for `localhost` and `127.0.0.1`.
    pub gateway: CertFiles,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

impl Pki {
    /// A fresh CA and gateway certificate in a temp dir removed on drop.
    pub fn generate() -> Arc<Pki> {
        let temp = tempfile::Builder::new()
            .prefix("tunnel-pki-")
            .tempdir()
            .expect("temp dir for certificates");
        let dir = temp.path().to_path_buf();
        Arc::new(Self::build(dir, Some(temp)))
    }

    /// A fresh CA and gateway certificate written into `dir`, kept afterwards.
    pub fn generate_in(dir: &Path) -> Arc<Pki> {
        std::fs::create_dir_all(dir).expect("create certificate dir");
        Arc::new(Self::build(dir.to_path_buf(), None))
    }

    fn build(dir: PathBuf, temp: Option<tempfile::TempDir>) -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "tunnel test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params.self_signed(&ca_key).expect("self-signed CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
        let mut pki = Pki {
            gateway: CertFiles {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            dir,
            _temp: temp,
            ca_key,
            ca_cert,
            ca_file,
        };
        pki.gateway = pki.issue("gateway", &["localhost", "127.0.0.1"]);
        pki
    }

    /// The folder holding every PEM file of this PKI.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Signs a certificate for `names` (DNS names or IP addresses) and writes
    /// it as `<file_stem>-cert.pem` / `<file_stem>-key.pem`.
    pub fn issue(&self, file_stem: &str, names: &[&str]) -> CertFiles {
        let key = KeyPair::generate().expect("leaf key");
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or(file_stem),
        );
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign leaf");
        let files = CertFiles {
            cert: self.dir.join(format!("{file_stem}-cert.pem")),
            key: self.dir.join(format!("{file_stem}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A certificate valid in every way except its name: it is for
    /// `wrong.example`, not `localhost`.
    pub fn wrong_hostname(&self) -> CertFiles {
        self.issue("wrong-host", &["wrong.example"])
    }

    /// The CA certificate in DER, for a rustls root store.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_cert.der().clone()
    }

    /// A rustls root store trusting only this CA.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der())
            .expect("CA is a valid trust anchor");
        roots
    }
}

/// The base64 bodies of every `-----BEGIN <label>-----` block in a PEM file.
fn pem_blocks(path: &Path, label: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path).expect("read PEM file");
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let stop = after.find(&end).expect("PEM block is closed");
        let b64: String = after[..stop].split_whitespace().collect();
        blocks.push(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("PEM body is base64"),
        );
        rest = &after[stop + end.len()..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;

    #[test]
    fn gateway_certificate_verifies_against_the_ca_for_localhost() {
        let pki = Pki::generate();
        let (chain, _key) = pki.gateway.load();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(pki.root_store()),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for name in ["localhost", "127.0.0.1"] {
            let server = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &server, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let wrong = pki.wrong_hostname().load().0;
        let server = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        assert!(verifier
            .verify_server_cert(&wrong[0], &[], &server, &[], now)
            .is_err());
        let other = Pki::generate().gateway.load().0;
        assert!(verifier
            .verify_server_cert(&other[0], &[], &server, &[], now)
            .is_err());
    }
}
