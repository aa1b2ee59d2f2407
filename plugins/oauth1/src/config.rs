//! The plugin's configuration: JSON text from the route, checked once per
//! load (and once per sandbox, which is why it stays cheap: parsing a few
//! PEM keys is the most expensive thing here).
//!
//! Every error names the field it is about, because the message is all an
//! operator sees when a load is refused.

use alloc::{
    borrow::ToOwned,
    collections::BTreeMap,
    format,
    string::{String, ToString},
    vec,
    vec::Vec,
};

use rsa::RsaPublicKey;
use serde::Deserialize;

use crate::encoding::encode;
use crate::signature::{parse_rsa_public_key, Method};

/// Default `timestamp_window_secs` (the common ±10 minutes).
pub const DEFAULT_WINDOW_SECS: u64 = 600;

/// Largest `timestamp_window_secs`: a day. Nonces are remembered for twice
/// the window, and a longer window makes captured requests useful for
/// longer; nobody's clock is a day off.
pub const MAX_WINDOW_SECS: u64 = 86_400;

/// Prefixes a field's name to the errors of its deserializer, so a type
/// error reads "timestamp_window_secs: invalid type ..." instead of only a
/// line and column. serde_json appends the position to the outer error, so
/// the inner one's position is dropped to avoid saying it twice.
macro_rules! named_field {
    ($fn:ident, $ty:ty, $name:literal) => {
        fn $fn<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            <$ty as Deserialize>::deserialize(d).map_err(|e| {
                let message = e.to_string();
                let message = match message.rfind(" at line ") {
                    Some(i) => &message[..i],
                    None => &message,
                };
                <D::Error as serde::de::Error>::custom(format_args!("{}: {}", $name, message))
            })
        }
    };
}

named_field!(de_methods, Option<Vec<String>>, "signature_methods");
named_field!(de_window, Option<u64>, "timestamp_window_secs");
named_field!(de_allow_unsigned, Option<bool>, "allow_unsigned");
named_field!(de_base_url, Option<String>, "public_base_url");
named_field!(de_realm, Option<String>, "realm");
named_field!(de_consumers, Option<Vec<RawConsumer>>, "consumers");
named_field!(de_key, String, "key");
named_field!(de_rsa_key, Option<String>, "rsa_public_key");
named_field!(de_secret, Option<String>, "secret");
named_field!(
    de_token_secrets,
    Option<BTreeMap<String, String>>,
    "token_secrets"
);

/// The configuration as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default, deserialize_with = "de_methods")]
    signature_methods: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_window")]
    timestamp_window_secs: Option<u64>,
    #[serde(default, deserialize_with = "de_allow_unsigned")]
    allow_unsigned: Option<bool>,
    #[serde(default, deserialize_with = "de_base_url")]
    public_base_url: Option<String>,
    #[serde(default, deserialize_with = "de_realm")]
    realm: Option<String>,
    #[serde(default, deserialize_with = "de_consumers")]
    consumers: Option<Vec<RawConsumer>>,
}

/// One consumer as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumer {
    #[serde(deserialize_with = "de_key")]
    key: String,
    #[serde(default, deserialize_with = "de_rsa_key")]
    rsa_public_key: Option<String>,
    #[serde(default, deserialize_with = "de_secret")]
    secret: Option<String>,
    #[serde(default, deserialize_with = "de_token_secrets")]
    token_secrets: Option<BTreeMap<String, String>>,
}

/// How a consumer proves itself.
pub enum Credential {
    /// RSA-SHA1 with this public key.
    Rsa(RsaPublicKey),
    /// HMAC with this consumer secret and these token secrets (by token).
    Shared {
        /// The consumer secret.
        secret: String,
        /// Token secrets by `oauth_token`.
        token_secrets: BTreeMap<String, String>,
    },
}

/// What signature verification needs; present only when consumers are
/// configured.
pub struct Verifier {
    /// `scheme://host[:port]`, lower-case, default port dropped: the start
    /// of every base string URI.
    pub origin: String,
    /// Consumers by key.
    pub consumers: BTreeMap<String, Credential>,
    /// A consumer secret as long (once encoded) as a real one, so that a
    /// request naming an unknown consumer costs the same HMAC as a known
    /// one. Its value never verifies anything: the result is discarded.
    pub dummy_secret: String,
}

/// The checked configuration.
pub struct Config {
    /// Allowed signature methods.
    pub methods: Vec<Method>,
    /// |now - oauth_timestamp| must be at most this.
    pub window_secs: u64,
    /// Whether requests without any OAuth parameter pass untouched.
    pub allow_unsigned: bool,
    /// The realm of `WWW-Authenticate` (already checked to need no
    /// escaping inside a quoted string).
    pub realm: String,
    /// `Some` when signatures are verified.
    pub verifier: Option<Verifier>,
}

/// The parts of `public_base_url` the plugin uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Origin {
    /// `scheme://host[:port]`, normalized per RFC 5849 §3.4.1.2.
    pub origin: String,
    /// The host alone (the default realm).
    pub host: String,
}

/// Parses `public_base_url`: `http` or `https`, a host, an optional port,
/// nothing else (a single trailing `/` is tolerated as "no path"). Scheme
/// and host are lower-cased and a default port (80 for http, 443 for https)
/// is dropped, as §3.4.1.2 asks of the base string URI.
pub fn parse_origin(url: &str) -> Result<Origin, String> {
    let err = |why: &str| format!("public_base_url {url:?}: {why}");
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| err("expected scheme://host[:port]"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(err("the scheme must be http or https")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(err("must have no path, query or fragment"));
    }
    if authority.contains('@') {
        return Err(err("must have no user information"));
    }
    // An IPv6 literal keeps its brackets; its colons are not a port.
    let (host, port) = if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or_else(|| err("unterminated IPv6 literal"))?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(err("unexpected text after the IPv6 literal")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            !v6.is_empty()
                && v6
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        }
    };
    if !host_ok {
        return Err(err(
            "the host is empty or has characters a host name cannot have",
        ));
    }
    let host = host.to_ascii_lowercase();
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(err("the port must be a number from 1 to 65535")),
        },
    };
    let origin = match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    };
    Ok(Origin { origin, host })
}

impl Config {
    /// Parses and checks the configuration text; empty text means every
    /// default (no consumers: parameters, timestamps and nonces are checked
    /// but signatures are not).
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig = if text.trim().is_empty() {
            serde_json::from_str("{}")
        } else {
            serde_json::from_str(text)
        }
        .map_err(|e| format!("oauth1 config: {e}"))?;
        Self::check(raw).map_err(|e| format!("oauth1 config: {e}"))
    }

    fn check(raw: RawConfig) -> Result<Config, String> {
        let methods = match raw.signature_methods {
            None => vec![Method::RsaSha1, Method::HmacSha1],
            Some(names) => {
                if names.is_empty() {
                    return Err("signature_methods: list at least one method".to_owned());
                }
                let mut methods = Vec::new();
                for name in &names {
                    let m = Method::from_name(name).ok_or_else(|| {
                        format!(
                            "signature_methods: {name:?} is not supported (use RSA-SHA1, HMAC-SHA1 or HMAC-SHA256)"
                        )
                    })?;
                    if !methods.contains(&m) {
                        methods.push(m);
                    }
                }
                methods
            }
        };

        let window_secs = raw.timestamp_window_secs.unwrap_or(DEFAULT_WINDOW_SECS);
        if !(1..=MAX_WINDOW_SECS).contains(&window_secs) {
            return Err(format!(
                "timestamp_window_secs: must be from 1 to {MAX_WINDOW_SECS}, not {window_secs}"
            ));
        }

        let origin = raw
            .public_base_url
            .as_deref()
            .map(parse_origin)
            .transpose()?;

        let realm = match raw.realm {
            Some(realm) => {
                // It goes inside a quoted-string in WWW-Authenticate: refuse
                // what would need escaping rather than escape it.
                let ok = realm.len() <= 256
                    && realm
                        .bytes()
                        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
                if !ok {
                    return Err(
                        "realm: use at most 256 printable ASCII characters, without '\"' or '\\'"
                            .to_owned(),
                    );
                }
                realm
            }
            None => origin
                .as_ref()
                .map_or_else(|| "gateway".to_owned(), |o| o.host.clone()),
        };

        let raw_consumers = raw.consumers.unwrap_or_default();
        let verifier = if raw_consumers.is_empty() {
            None
        } else {
            let origin = origin.ok_or(
                "public_base_url: required when consumers are configured (it is the URL callers sign)",
            )?;
            let mut consumers = BTreeMap::new();
            let mut dummy_len = None;
            for (i, c) in raw_consumers.into_iter().enumerate() {
                let at = format!("consumers[{i}] (key {:?})", c.key);
                if c.key.is_empty() {
                    return Err(format!("consumers[{i}]: key must not be empty"));
                }
                let credential = match (c.rsa_public_key, c.secret) {
                    (Some(pem), None) => {
                        if c.token_secrets.is_some() {
                            return Err(format!(
                                "{at}: token_secrets apply only to consumers with a secret (HMAC)"
                            ));
                        }
                        let key = parse_rsa_public_key(&pem)
                            .map_err(|e| format!("{at}: rsa_public_key: {e}"))?;
                        Credential::Rsa(key)
                    }
                    (None, Some(secret)) => {
                        if secret.is_empty() {
                            return Err(format!("{at}: secret must not be empty"));
                        }
                        dummy_len.get_or_insert(encode(secret.as_bytes()).len());
                        Credential::Shared {
                            secret,
                            token_secrets: c.token_secrets.unwrap_or_default(),
                        }
                    }
                    (Some(_), Some(_)) => {
                        return Err(format!(
                            "{at}: has both rsa_public_key and secret; give exactly one"
                        ))
                    }
                    (None, None) => {
                        return Err(format!(
                            "{at}: needs rsa_public_key (RSA-SHA1) or secret (HMAC)"
                        ))
                    }
                };
                if consumers.insert(c.key, credential).is_some() {
                    return Err(format!("{at}: the key is configured twice"));
                }
            }
            Some(Verifier {
                origin: origin.origin,
                consumers,
                dummy_secret: "0".repeat(dummy_len.unwrap_or(32)),
            })
        };

        Ok(Config {
            methods,
            window_secs,
            allow_unsigned: raw.allow_unsigned.unwrap_or(false),
            realm,
            verifier,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC0YjCwIfYoprq/FQO6lb3asXrx\nLlJFuCvtinTF5p0GxvQGu5O3gYytUvtC2JlYzypSRjVxwxrsuRcP3e641SdASwfr\nmzyvIgP08N4S0IFzEURkV1wp/IpH7kH41EtbmUmrXSwfNZsnQRE5SYSOhh+LcK2w\nyQkdgcMv11l4KoBkcwIDAQAB\n-----END PUBLIC KEY-----\n";

    fn err(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("config accepted: {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn empty_text_is_all_defaults() {
        for text in ["", "  \n", "{}"] {
            let c = Config::parse(text).unwrap();
            assert_eq!(c.methods, [Method::RsaSha1, Method::HmacSha1]);
            assert_eq!(c.window_secs, 600);
            assert!(!c.allow_unsigned);
            assert_eq!(c.realm, "gateway");
            assert!(c.verifier.is_none());
        }
    }

    #[test]
    fn full_config_is_read() {
        let text = serde_json::json!({
            "signature_methods": ["RSA-SHA1", "HMAC-SHA1", "HMAC-SHA256"],
            "timestamp_window_secs": 300,
            "allow_unsigned": true,
            "public_base_url": "HTTPS://Wiki.Example.com:443/",
            "consumers": [
                {"key": "jira", "rsa_public_key": PEM},
                {"key": "k2", "secret": "s e", "token_secrets": {"t": "ts"}}
            ]
        })
        .to_string();
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.methods.len(), 3);
        assert_eq!(c.window_secs, 300);
        assert!(c.allow_unsigned);
        assert_eq!(c.realm, "wiki.example.com");
        let v = c.verifier.unwrap();
        assert_eq!(v.origin, "https://wiki.example.com");
        assert_eq!(v.consumers.len(), 2);
        assert_eq!(
            v.dummy_secret, "00000",
            "as long as encode(\"s e\") = s%20e"
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(r#"{"consumer": []}"#).contains("unknown field `consumer`"));
        assert!(err(r#"{"timestamp_window_secs": "600"}"#)
            .contains("timestamp_window_secs: invalid type"));
        assert!(err(r#"{"timestamp_window_secs": 0}"#).contains("timestamp_window_secs"));
        assert!(err(r#"{"timestamp_window_secs": 86401}"#).contains("timestamp_window_secs"));
        assert!(err(r#"{"allow_unsigned": "no"}"#).contains("allow_unsigned: invalid type"));
        assert!(err(r#"{"signature_methods": ["PLAINTEXT"]}"#)
            .contains("signature_methods: \"PLAINTEXT\""));
        assert!(err(r#"{"signature_methods": []}"#).contains("signature_methods"));
        assert!(err(r#"{"realm": "a\"b"}"#).contains("realm"));
        assert!(err(r#"{"consumers": [{"key": "k", "secret": "s"}]}"#)
            .contains("public_base_url: required"));
        assert!(
            err(r#"{"consumers": [{"key": "k", "secret": "s", "x": 1}]}"#)
                .contains("unknown field `x`")
        );
        assert!(err(r#"{"consumers": [{"secret": "s"}]}"#).contains("missing field `key`"));
        assert!(
            err(r#"{"consumers": [{"key": "k", "secret": 5}]}"#).contains("secret: invalid type")
        );
        assert!(err("{nope").starts_with("oauth1 config: "));
    }

    #[test]
    fn consumer_errors_name_the_consumer() {
        let base = r#""public_base_url": "https://w.example""#;
        let e = err(&format!(r#"{{{base}, "consumers": [{{"key": "k1"}}]}}"#));
        assert!(
            e.contains("\"k1\"") && e.contains("needs rsa_public_key"),
            "{e}"
        );
        let e = err(&format!(
            r#"{{{base}, "consumers": [{{"key": "k1", "secret": "s", "rsa_public_key": "x"}}]}}"#
        ));
        assert!(e.contains("\"k1\"") && e.contains("both"), "{e}");
        let e = err(&format!(
            r#"{{{base}, "consumers": [{{"key": "jira", "rsa_public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}}]}}"#
        ));
        assert!(
            e.contains("\"jira\"") && e.contains("rsa_public_key"),
            "{e}"
        );
        let e = err(&format!(
            r#"{{{base}, "consumers": [{{"key": "jira", "rsa_public_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"}}]}}"#
        ));
        assert!(
            e.contains("\"jira\"") && e.contains("BEGIN PRIVATE KEY"),
            "{e}"
        );
        let e = err(&format!(
            r#"{{{base}, "consumers": [{{"key": "k", "secret": "a"}}, {{"key": "k", "secret": "b"}}]}}"#
        ));
        assert!(e.contains("twice"), "{e}");
        let e = err(&format!(
            r#"{{{base}, "consumers": [{{"key": "k", "secret": ""}}]}}"#
        ));
        assert!(e.contains("secret must not be empty"), "{e}");
        let e = err(&format!(
            r#"{{{base}, "consumers": [{{"key": "k", "rsa_public_key": {pem}, "token_secrets": {{}}}}]}}"#,
            pem = serde_json::to_string(PEM).unwrap()
        ));
        assert!(e.contains("token_secrets"), "{e}");
    }

    #[test]
    fn public_base_url_rules() {
        let o = |u: &str| parse_origin(u).map(|o| o.origin);
        assert_eq!(o("http://Example.COM:80").unwrap(), "http://example.com");
        assert_eq!(o("https://example.com:443").unwrap(), "https://example.com");
        assert_eq!(
            o("http://example.com:443").unwrap(),
            "http://example.com:443"
        );
        assert_eq!(
            o("https://example.com:80").unwrap(),
            "https://example.com:80"
        );
        assert_eq!(
            o("http://example.com:8080/").unwrap(),
            "http://example.com:8080"
        );
        assert_eq!(o("https://[::1]:8443").unwrap(), "https://[::1]:8443");
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://example.com/wiki",
            "https://example.com?x=1",
            "https://example.com#f",
            "https://user@example.com",
            "https://",
            "https://example.com:0",
            "https://example.com:99999",
            "https://example.com:+1",
            "https://exa mple.com",
        ] {
            assert!(
                parse_origin(bad).unwrap_err().contains("public_base_url"),
                "{bad}"
            );
        }
    }
}
