//! Agent configuration: TOML file plus `AGENT__SECTION__FIELD` environment
//! overrides, checked at start with errors naming the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything `agent run` and `agent key set` read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The gateway to dial.
    pub gateway: GatewaySection,
    /// The tunnel this agent serves and where its key is kept.
    pub tunnel: TunnelSection,
    /// The local service requests are forwarded to.
    pub local: LocalSection,
    /// Dead-peer detection.
    #[serde(default)]
    pub heartbeat: HeartbeatSection,
    /// Reconnection after a lost connection.
    #[serde(default)]
    pub reconnect: ReconnectSection,
    /// Shutdown behaviour.
    #[serde(default)]
    pub drain: DrainSection,
    /// Threads.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// Trace export to an OpenTelemetry collector (off without an endpoint).
    #[serde(default)]
    pub telemetry: telemetry::TelemetrySection,
    /// Log format and level.
    #[serde(default)]
    pub log: telemetry::LogSection,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub admin: telemetry::AdminSection,
}

/// Where the admin listener listens when `admin.listen` is unset.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9465";

impl From<telemetry::FieldError> for ConfigError {
    fn from(e: telemetry::FieldError) -> Self {
        ConfigError::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}

/// Threads of the agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Worker threads; 1 (the default) runs everything on one thread, which
    /// measured fastest on small hosts (no cross-thread wake-ups); 0 means
    /// one per core.
    pub threads: usize,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection { threads: 1 }
    }
}

/// The gateway to dial.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// `wss://host:port/_tunnel/v1`; the host is verified against the certificate.
    #[serde(default)]
    pub url: Option<String>,
    /// Several gateway instances (instead of `url`): the agent keeps
    /// `connections` of them connected at once, each to another one, and
    /// replaces one that drops with one not in use.
    #[serde(default)]
    pub urls: Vec<String>,
    /// How many gateway instances the agent stays connected to at once,
    /// each a different one: another entry of `urls`, or another address
    /// the host name resolves to. Default 2 with `urls`, 1 with `url`.
    /// At most 16.
    #[serde(default)]
    pub connections: Option<usize>,
    /// PEM CA bundle to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Time for TCP connect, TLS, upgrade and handshake together (the
    /// proxy's CONNECT included). At least 1s.
    #[serde(
        default = "default_connect_timeout",
        alias = "connect_timeout_secs",
        deserialize_with = "protocol::duration::secs"
    )]
    pub connect_timeout: Duration,
    /// HTTP CONNECT proxy to reach the gateway through,
    /// `http://[user:password@]host:port`, or `"none"` to ignore the proxy
    /// environment variables. Unset (the default): `https_proxy`,
    /// `HTTPS_PROXY`, `all_proxy`, `ALL_PROXY` unless `no_proxy`/`NO_PROXY`
    /// names the gateway's host, as curl reads them.
    #[serde(default)]
    pub proxy: Option<crate::proxy::ProxyText>,
    /// The protocol version to speak (default: the newest, 2). `1` lets
    /// this agent serve a gateway that is older than it (upgrade the
    /// gateway first and this is never needed; a gateway serves agents of
    /// either version).
    #[serde(default = "default_protocol_version")]
    pub protocol_version: u32,
}

/// Which cipher protects the stored tunnel key.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Cipher {
    /// AES-256-GCM (default).
    #[default]
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// ChaCha20-Poly1305.
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

/// The tunnel this agent serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// Tunnel id printed by `gateway tunnel create`.
    pub id: String,
    /// This agent's name, unique per node; defaults to the host name.
    #[serde(default)]
    pub agent_name: Option<String>,
    /// Where `agent key set` stores the encrypted key.
    pub key_file: PathBuf,
    /// File with the key-encryption key (base64, 32 bytes), created with
    /// mode 0600 by `agent key set` when missing.
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// Environment variable holding the key-encryption key instead.
    #[serde(default)]
    pub kek_env: Option<String>,
    /// AEAD protecting the stored key.
    #[serde(default)]
    pub cipher: Cipher,
}

/// The local service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSection {
    /// `host:port` of the local HTTP service.
    pub address: String,
    /// Allow an address that is not loopback.
    #[serde(default)]
    pub allow_remote: bool,
    /// Time to connect to the local service.
    #[serde(
        default = "default_local_connect",
        alias = "connect_timeout_secs",
        deserialize_with = "protocol::duration::secs"
    )]
    pub connect_timeout: Duration,
}

/// Dead-peer detection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatSection {
    /// Time between HTTP/2 PINGs to the gateway. At least 1s.
    #[serde(alias = "interval_secs", deserialize_with = "protocol::duration::secs")]
    pub interval: Duration,
    /// Time without an answer before the connection is dropped; at least
    /// `interval`.
    #[serde(alias = "timeout_secs", deserialize_with = "protocol::duration::secs")]
    pub timeout: Duration,
}

impl Default for HeartbeatSection {
    fn default() -> Self {
        HeartbeatSection {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Reconnection: exponential backoff with full jitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectSection {
    /// First backoff ceiling (`"500ms"`; a bare number is milliseconds).
    /// At least 1ms.
    #[serde(
        alias = "initial_backoff_ms",
        deserialize_with = "protocol::duration::millis"
    )]
    pub initial_backoff: Duration,
    /// Largest backoff ceiling (a bare number is milliseconds); at least
    /// `initial_backoff`.
    #[serde(
        alias = "max_backoff_ms",
        deserialize_with = "protocol::duration::millis"
    )]
    pub max_backoff: Duration,
    /// A connection that lasted this long resets the backoff.
    #[serde(
        alias = "stable_after_secs",
        deserialize_with = "protocol::duration::secs"
    )]
    pub stable_after: Duration,
}

impl Default for ReconnectSection {
    fn default() -> Self {
        ReconnectSection {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// Shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainSection {
    /// Time in-flight requests get to finish after SIGTERM.
    #[serde(alias = "grace_secs", deserialize_with = "protocol::duration::secs")]
    pub grace: Duration,
}

impl Default for DrainSection {
    fn default() -> Self {
        DrainSection {
            grace: Duration::from_secs(30),
        }
    }
}

fn default_protocol_version() -> u32 {
    protocol::PROTOCOL_VERSION
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_local_connect() -> Duration {
    Duration::from_secs(5)
}

/// Fields renamed when durations became text, by section (old name, new
/// name): [`AgentConfig::load`] still reads the old names, in the file and
/// from the environment, and refuses both names of one field in one of
/// them. Each is also a serde alias of its field.
pub const RENAMED: protocol::layered::Renamed = &[
    ("gateway", &[("connect_timeout_secs", "connect_timeout")]),
    ("local", &[("connect_timeout_secs", "connect_timeout")]),
    (
        "heartbeat",
        &[("interval_secs", "interval"), ("timeout_secs", "timeout")],
    ),
    (
        "reconnect",
        &[
            ("initial_backoff_ms", "initial_backoff"),
            ("max_backoff_ms", "max_backoff"),
            ("stable_after_secs", "stable_after"),
        ],
    ),
    ("drain", &[("grace_secs", "grace")]),
    ("telemetry", telemetry::TelemetrySection::RENAMED),
];

/// A configuration error, naming the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is in the message, not the error's source: printed with
    /// its chain, it would be said twice.
    #[error("cannot load config {path}: {error}")]
    Load {
        path: String,
        error: config::ConfigError,
    },
    #[error("invalid config field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    #[error("invalid {setting}: {reason}")]
    Proxy { setting: String, reason: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn parse_url(field: &str, text: &str) -> Result<GatewayUrl, ConfigError> {
    let uri: http::Uri = text.parse().map_err(|_| invalid(field, "not a URL"))?;
    if uri.scheme_str() != Some("wss") {
        return Err(invalid(field, "must start with wss:// (TLS is required)"));
    }
    let host = uri
        .host()
        .ok_or_else(|| invalid(field, "has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(GatewayUrl {
        host,
        port: uri.port_u16().unwrap_or(443),
        path: uri.path().to_string(),
        text: text.to_string(),
    })
}

/// The parts of `gateway.url` the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// The URL as written (what the WebSocket upgrade asks for).
    pub text: String,
}

/// The most connections to distinct instances an agent keeps.
pub const MAX_CONNECTIONS: usize = 16;

impl AgentConfig {
    /// Loads `path`, applies `AGENT__…` environment overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let load_err = |error| ConfigError::Load {
            path: path.display().to_string(),
            error,
        };
        let cfg: AgentConfig = protocol::layered::load(path, "AGENT", RENAMED).map_err(load_err)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry.validate()?;
        self.log.validate()?;
        self.admin.address(DEFAULT_ADMIN_LISTEN)?;
        self.gateway_urls()?;
        if let Some(n) = self.gateway.connections {
            if n == 0 || n > MAX_CONNECTIONS {
                return Err(invalid(
                    "gateway.connections",
                    format!("must be 1 to {MAX_CONNECTIONS}"),
                ));
            }
        }
        self.proxy()?;
        let versions = protocol::MIN_PROTOCOL_VERSION..=protocol::PROTOCOL_VERSION;
        if !versions.contains(&self.gateway.protocol_version) {
            return Err(invalid(
                "gateway.protocol_version",
                "must be 1 or 2 (the versions this agent speaks)",
            ));
        }
        if !protocol::handshake::valid_name(&self.tunnel.id) {
            return Err(invalid(
                "tunnel.id",
                "must be the id printed by `gateway tunnel create`",
            ));
        }
        if !protocol::handshake::valid_name(&self.agent_name()) {
            return Err(invalid(
                "tunnel.agent_name",
                "must be 1-128 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let kek = keyfile::KekSource {
            section: "tunnel",
            file: self.tunnel.kek_file.as_deref(),
            env: self.tunnel.kek_env.as_deref(),
        };
        if let Some((field, why)) = kek.mistake() {
            return Err(invalid(&field, why));
        }
        self.local_target()?;
        if self.heartbeat.interval < Duration::from_secs(1) {
            return Err(invalid("heartbeat.interval", "must be at least 1s"));
        }
        if self.heartbeat.timeout < self.heartbeat.interval {
            return Err(invalid(
                "heartbeat.timeout",
                "must be at least heartbeat.interval",
            ));
        }
        if self.reconnect.initial_backoff < Duration::from_millis(1) {
            return Err(invalid("reconnect.initial_backoff", "must be at least 1ms"));
        }
        if self.reconnect.max_backoff < self.reconnect.initial_backoff {
            return Err(invalid(
                "reconnect.max_backoff",
                "must be at least reconnect.initial_backoff",
            ));
        }
        if self.gateway.connect_timeout < Duration::from_secs(1) {
            return Err(invalid("gateway.connect_timeout", "must be at least 1s"));
        }
        Ok(())
    }

    /// The proxy to reach the gateway through, if any: `gateway.proxy`, else
    /// the environment ([`crate::proxy::choose`]).
    pub fn proxy(&self) -> Result<Option<crate::proxy::Proxy>, ConfigError> {
        let host = self.gateway_url()?.host;
        crate::proxy::choose(
            self.gateway.proxy.as_ref().map(|p| p.0.as_str()),
            &host,
            |name| std::env::var(name).ok(),
        )
        .map_err(|(setting, reason)| match setting.as_str() {
            "gateway.proxy" => invalid("gateway.proxy", reason),
            _ => ConfigError::Proxy { setting, reason },
        })
    }

    /// The agent's name: configured, else the host name.
    pub fn agent_name(&self) -> String {
        self.tunnel.agent_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "agent".into())
        })
    }

    /// The first gateway URL (`gateway.url`, or the first of
    /// `gateway.urls`).
    pub fn gateway_url(&self) -> Result<GatewayUrl, ConfigError> {
        Ok(self.gateway_urls()?.remove(0))
    }

    /// Every gateway URL, parsed: only `wss://` is accepted, and exactly
    /// one of `gateway.url` and `gateway.urls` is set.
    pub fn gateway_urls(&self) -> Result<Vec<GatewayUrl>, ConfigError> {
        match (&self.gateway.url, self.gateway.urls.as_slice()) {
            (Some(url), []) => Ok(vec![parse_url("gateway.url", url)?]),
            (None, []) => Err(invalid(
                "gateway.url",
                "is required (or gateway.urls, for several instances)",
            )),
            (Some(_), _) => Err(invalid(
                "gateway.urls",
                "set gateway.url or gateway.urls, not both",
            )),
            (None, urls) => urls
                .iter()
                .enumerate()
                .map(|(i, u)| parse_url(&format!("gateway.urls[{i}]"), u))
                .collect(),
        }
    }

    /// How many gateway instances to stay connected to at once.
    pub fn connections(&self) -> usize {
        self.gateway
            .connections
            .unwrap_or(if self.gateway.urls.is_empty() {
                1
            } else {
                self.gateway.urls.len().min(2)
            })
    }

    /// The local service address, checked against `allow_remote` where it
    /// is an IP literal (host names are checked after resolution).
    pub fn local_target(&self) -> Result<(String, u16), ConfigError> {
        let a = &self.local.address;
        let (host, port) = a
            .rsplit_once(':')
            .ok_or_else(|| invalid("local.address", "must be host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| invalid("local.address", "port is not a number"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            if !ip.is_loopback() && !self.local.allow_remote {
                return Err(invalid(
                    "local.address",
                    "is not a loopback address; set local.allow_remote = true to forward to another host",
                ));
            }
        }
        Ok((host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[gateway]
url = "wss://gw.example.com:8443/_tunnel/v1"
[tunnel]
id = "tun_1"
agent_name = "node-1"
key_file = "k"
kek_file = "kek"
[local]
address = "127.0.0.1:8080"
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|error| ConfigError::Load {
                path: "inline".into(),
                error,
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn base_config_is_valid() {
        let c = parse(BASE).unwrap();
        assert_eq!(
            c.gateway_url().unwrap(),
            GatewayUrl {
                host: "gw.example.com".into(),
                port: 8443,
                path: "/_tunnel/v1".into(),
                text: "wss://gw.example.com:8443/_tunnel/v1".into(),
            }
        );
        assert_eq!(c.tunnel.cipher, Cipher::Aes256Gcm);
    }

    #[test]
    fn several_urls_keep_two_connections_unless_told() {
        let one = parse(BASE).unwrap();
        assert_eq!(one.connections(), 1);
        let list = "urls = [\"wss://a:1/x\", \"wss://b:2/x\", \"wss://c:3/x\"]";
        let three =
            parse(&BASE.replace("url = \"wss://gw.example.com:8443/_tunnel/v1\"", list)).unwrap();
        assert_eq!(three.connections(), 2);
        let urls = three.gateway_urls().unwrap();
        assert_eq!(
            urls.iter()
                .map(|u| (u.host.as_str(), u.port))
                .collect::<Vec<_>>(),
            [("a", 1), ("b", 2), ("c", 3)]
        );
        let spread = parse(&BASE.replace("[tunnel]", "connections = 3\n[tunnel]")).unwrap();
        assert_eq!(spread.connections(), 3);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (BASE.replace("wss://", "ws://"), "gateway.url"),
            (
                BASE.replace("127.0.0.1:8080", "10.0.0.5:8080"),
                "local.address",
            ),
            (BASE.replace("127.0.0.1:8080", "127.0.0.1"), "local.address"),
            (BASE.replace("kek_file = \"kek\"", ""), "tunnel.kek_file"),
            (
                format!("{BASE}[heartbeat]\ninterval_secs = 0\n"),
                "heartbeat.interval",
            ),
            (
                format!("{BASE}[heartbeat]\ninterval = \"999ms\"\n"),
                "heartbeat.interval",
            ),
            (
                BASE.replace("url = ", "urls = [\"wss://a:1/x\"]\nurl = "),
                "gateway.urls",
            ),
            (
                BASE.replace(
                    "url = \"wss://gw.example.com:8443/_tunnel/v1\"",
                    "urls = [\"wss://a:1/x\", \"ws://b:1/x\"]",
                ),
                "gateway.urls[1]",
            ),
            (
                BASE.replace("url = \"wss://gw.example.com:8443/_tunnel/v1\"", ""),
                "gateway.url",
            ),
            (
                BASE.replace("[tunnel]", "connections = 0\n[tunnel]"),
                "gateway.connections",
            ),
            (
                BASE.replace("[tunnel]", "connections = 17\n[tunnel]"),
                "gateway.connections",
            ),
        ];
        for (text, field) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let e = parse(&BASE.replace("[local]", "[local]\nbogus = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    /// Loads `text` from a file through [`AgentConfig::load`] (the layered
    /// loader: old names renamed, both names of one field refused).
    fn load_text(text: &str) -> Result<AgentConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("agcfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.toml");
        std::fs::write(&path, text).unwrap();
        let r = AgentConfig::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn durations_are_text_or_a_number_in_the_old_unit_under_either_name() {
        let new = format!(
            "{BASE}[heartbeat]\ninterval = \"2s\"\ntimeout = \"1m30s\"\n\
             [reconnect]\ninitial_backoff = \"250ms\"\nmax_backoff = \"1m\"\nstable_after = \"45s\"\n\
             [drain]\ngrace = \"1500ms\"\n"
        );
        let old = format!(
            "{BASE}[heartbeat]\ninterval_secs = 2\ntimeout_secs = 90\n\
             [reconnect]\ninitial_backoff_ms = 250\nmax_backoff_ms = 60000\nstable_after_secs = 45\n\
             [drain]\ngrace = \"1500ms\"\n"
        );
        // What an environment override hands over: digits as text.
        let digits = format!(
            "{BASE}[heartbeat]\ninterval = \"2\"\ntimeout_secs = \"90\"\n\
             [reconnect]\ninitial_backoff = \"250\"\nmax_backoff_ms = \"60000\"\nstable_after = 45\n\
             [drain]\ngrace = \"1s 500ms\"\n"
        );
        for text in [new, old, digits] {
            for c in [parse(&text).unwrap(), load_text(&text).unwrap()] {
                assert_eq!(c.heartbeat.interval, Duration::from_secs(2));
                assert_eq!(c.heartbeat.timeout, Duration::from_secs(90));
                assert_eq!(c.reconnect.initial_backoff, Duration::from_millis(250));
                assert_eq!(c.reconnect.max_backoff, Duration::from_secs(60));
                assert_eq!(c.reconnect.stable_after, Duration::from_secs(45));
                assert_eq!(c.drain.grace, Duration::from_millis(1500));
            }
        }
        // The two `connect_timeout`s, one per section.
        let text = BASE
            .replace("[tunnel]", "connect_timeout_secs = 3\n[tunnel]")
            .replace("[local]", "[local]\nconnect_timeout = \"250ms\"");
        let c = load_text(&text).unwrap();
        assert_eq!(c.gateway.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.local.connect_timeout, Duration::from_millis(250));
        let c = parse(BASE).unwrap();
        assert_eq!(c.gateway.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.local.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.reconnect.initial_backoff, Duration::from_millis(500));
    }

    #[test]
    fn durations_refuse_both_names_bad_text_and_values_out_of_bounds() {
        let both = format!("{BASE}[drain]\ngrace = \"5s\"\ngrace_secs = 5\n");
        let e = load_text(&both).unwrap_err().to_string();
        assert!(
            e.contains("`drain.grace_secs` and `drain.grace` are both set"),
            "{e}"
        );
        let e = load_text(&format!("{BASE}[reconnect]\ninitial_backoff = \"soon\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reconnect.initial_backoff: \"soon\" is not a duration ("),
            "{e}"
        );
        assert!(e.contains("or a number of milliseconds)"), "{e}");
        for (text, field) in [
            (
                format!("{BASE}[heartbeat]\ninterval = \"500ms\"\n"),
                "heartbeat.interval",
            ),
            (
                format!("{BASE}[heartbeat]\ntimeout = \"9s\"\n"),
                "heartbeat.timeout",
            ),
            (
                format!("{BASE}[reconnect]\ninitial_backoff = \"900us\"\n"),
                "reconnect.initial_backoff",
            ),
            (
                format!("{BASE}[reconnect]\nmax_backoff_ms = 400\n"),
                "reconnect.max_backoff",
            ),
            (
                BASE.replace("[tunnel]", "connect_timeout = 0\n[tunnel]"),
                "gateway.connect_timeout",
            ),
        ] {
            let e = load_text(&text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        }
    }

    #[test]
    fn the_proxy_setting_is_checked_and_never_shown_with_its_credentials() {
        let with =
            |proxy: &str| BASE.replace("[tunnel]", &format!("proxy = \"{proxy}\"\n[tunnel]"));
        let cfg = parse(&with("http://u:hunter2@proxy.corp:3128")).unwrap();
        let p = cfg.proxy().unwrap().unwrap();
        assert_eq!(
            (p.to_string(), p.source.as_str()),
            ("http://proxy.corp:3128".into(), "gateway.proxy")
        );
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert!(parse(&with("none")).unwrap().proxy().unwrap().is_none());
        let e = parse(&with("socks5://u:hunter2@p:1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateway.proxy") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn remote_needs_explicit_consent() {
        let text = BASE
            .replace("127.0.0.1:8080", "10.0.0.5:8080")
            .replace("[local]", "[local]\nallow_remote = true");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn cipher_is_selectable() {
        let text = BASE.replace(
            "kek_file = \"kek\"",
            "kek_file = \"kek\"\ncipher = \"chacha20-poly1305\"",
        );
        assert_eq!(
            parse(&text).unwrap().tunnel.cipher,
            Cipher::ChaCha20Poly1305
        );
        let bad = BASE.replace(
            "kek_file = \"kek\"",
            "kek_file = \"kek\"\ncipher = \"rot13\"",
        );
        assert!(parse(&bad).is_err());
    }
}
