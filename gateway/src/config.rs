//! Gateway configuration: TOML file plus `GATEWAY__SECTION__FIELD`
//! environment overrides, checked at start with errors naming the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `gateway serve` and the admin commands read.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Process-level settings (threads, shutdown).
    #[serde(default)]
    pub server: ServerSection,
    /// The callers' listener.
    pub public: PublicSection,
    /// The agents' listener.
    pub agents: AgentsSection,
    /// Where tunnels and caller tokens are stored.
    pub store: StoreSection,
    /// How callers' credentials are checked.
    #[serde(default)]
    pub callers: CallersSection,
    /// Wildcard routing.
    #[serde(default)]
    pub routing: RoutingSection,
    /// Explicit routes: host (and path prefix) to tunnel.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The policy plugin host: where plugins live and how each call is bounded.
    #[serde(default)]
    pub plugins: PluginsSection,
    /// Trace export to an OpenTelemetry collector (off without an endpoint).
    #[serde(default)]
    pub telemetry: telemetry::TelemetrySection,
    /// Log format and level.
    #[serde(default)]
    pub log: telemetry::LogSection,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub admin: telemetry::AdminSection,
    /// Several instances on one PostgreSQL store: presence and the relay
    /// between instances (off when absent).
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    /// The file this configuration was loaded from (set by
    /// [`GatewayConfig::load`], never read from the file): what a live
    /// reload reads again.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Several gateway instances on one store (`store.url`): each records
/// which tunnels it holds agents for, and a request arriving at an
/// instance without an agent of its tunnel is relayed, one hop, to one
/// that has, over TLS 1.3 with both sides' certificates checked.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Where this instance takes requests relayed by the others.
    pub relay_listen: String,
    /// The address the others reach `relay_listen` at; default
    /// `relay_listen` itself, which must then be a specific address.
    #[serde(default)]
    pub relay_advertise: Option<String>,
    /// This instance's certificate (PEM, with its chain) and key: shown to
    /// the instance it relays to, and to those relaying to it.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The CA every instance's certificate must chain to (PEM).
    pub tls_ca: PathBuf,
    /// The DNS name every instance's certificate carries, checked on the
    /// instance relayed to. Default `gateway-relay`.
    #[serde(default = "default_relay_name")]
    pub server_name: String,
    /// How long an instance's word that it holds a tunnel's agents lasts
    /// unless renewed (renewed every third of it): an instance that dies
    /// is forgotten within this. At least 3s; default 6s.
    #[serde(
        default = "default_lease",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub lease: Duration,
}

fn default_relay_name() -> String {
    "gateway-relay".into()
}

fn default_lease() -> Duration {
    Duration::from_secs(6)
}

impl ClusterSection {
    /// The relay listener's address to bind.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_listen("cluster.relay_listen", &self.relay_listen)
    }

    /// The address the others are told to relay to; `bound` is what the
    /// listener got (port 0 picks one).
    pub fn advertised(&self, bound: SocketAddr) -> Result<SocketAddr, ConfigError> {
        match &self.relay_advertise {
            Some(a) => parse_listen("cluster.relay_advertise", a),
            None if bound.ip().is_unspecified() => Err(invalid(
                "cluster.relay_advertise",
                "relay_listen is an unspecified address: say where the others reach it",
            )),
            None => Ok(bound),
        }
    }

    fn validate(&self, store: &StoreSection) -> Result<(), ConfigError> {
        if store.url.is_none() {
            return Err(invalid(
                "cluster",
                "several instances need a shared store: set store.url (PostgreSQL)",
            ));
        }
        self.listen_addr()?;
        if let Some(a) = &self.relay_advertise {
            let a = parse_listen("cluster.relay_advertise", a)?;
            if a.ip().is_unspecified() || a.port() == 0 {
                return Err(invalid(
                    "cluster.relay_advertise",
                    "must be an address and port the other instances can reach",
                ));
            }
        }
        if self.lease < Duration::from_secs(3) {
            return Err(invalid("cluster.lease", "must be at least 3s"));
        }
        if rustls::pki_types::ServerName::try_from(self.server_name.as_str()).is_err() {
            return Err(invalid("cluster.server_name", "must be a DNS name"));
        }
        Ok(())
    }
}

/// Where the admin listener listens when `admin.listen` is unset.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

impl From<telemetry::FieldError> for ConfigError {
    fn from(e: telemetry::FieldError) -> Self {
        ConfigError::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}

/// The `[plugins]` section and a route's plugin list are the plugin
/// host's (crate `policy-host`).
pub use policy_host::config::{PluginRef, PluginsSection};

/// Process-level settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Worker threads of the public proxy, and again of the tunnel side
    /// (the agent connections' TLS, WebSocket and HTTP/2). Defaults to half the
    /// cores (at least 1): the two sides together then use every core
    /// without oversubscribing it, which measured fastest.
    pub threads: usize,
    /// Time in-flight requests get to finish after SIGTERM, in whole
    /// seconds (`"10s"`; a bare number is seconds).
    #[serde(
        alias = "grace_period_secs",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub grace_period: Duration,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            threads: default_threads(),
            grace_period: Duration::from_secs(10),
        }
    }
}

/// The callers' listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublicSection {
    /// Address to listen on; port 0 picks a free port (reported on stdout).
    pub listen: String,
    /// PEM certificate chain: HTTPS (with HTTP/2 by ALPN) when set with `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Largest request header block in bytes; larger gets 431.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: usize,
    /// Default largest request body in bytes; larger gets 413. Routes may override.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Time to wait for the local service to answer (and between body
    /// reads); longer gets 504. At least 1s.
    #[serde(
        default = "default_upstream_timeout",
        alias = "upstream_timeout_secs",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub upstream_timeout: Duration,
    /// Time an idle keep-alive connection is kept: a caller's, waiting
    /// for its next request (then closed without a word), and one into a
    /// tunnel, waiting for reuse. 1s to 1h.
    #[serde(
        default = "default_keepalive",
        alias = "keepalive_secs",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub keepalive: Duration,
    /// Most caller connections open at once, TLS handshakes included; past
    /// it a new connection is closed as soon as it is accepted.
    #[serde(default = "default_max_public_connections")]
    pub max_connections: usize,
    /// Most caller connections open at once from one source (an IPv4
    /// address, or an IPv6 /64); past it a new connection from that source
    /// is closed as soon as it is accepted. At most `max_connections`.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Time a caller has to send a whole request head: a new connection
    /// from its accept (TLS handshake included), a keep-alive connection
    /// from the first byte of its next request. Late gets 408 and the
    /// connection closes. 1s to 1h.
    #[serde(
        default = "default_header_read_timeout",
        alias = "header_read_timeout_secs",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub header_read_timeout: Duration,
    /// Time a caller may leave a request body (or an upgraded
    /// connection) without sending a byte; then the connection closes.
    /// 1s to 1h.
    #[serde(
        default = "default_public_io_timeout",
        alias = "read_timeout_secs",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub read_timeout: Duration,
    /// Time one write to a caller may wait for the caller to read; then
    /// the connection closes (a caller that reads a response very slowly
    /// holds it no longer). 1s to 1h.
    #[serde(
        default = "default_public_io_timeout",
        alias = "write_timeout_secs",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub write_timeout: Duration,
}

impl PublicSection {
    /// The connection caps and deadlines of the callers' listener.
    fn validate_budgets(&self) -> Result<(), ConfigError> {
        for (field, d) in [
            ("public.keepalive", self.keepalive),
            ("public.header_read_timeout", self.header_read_timeout),
            ("public.read_timeout", self.read_timeout),
            ("public.write_timeout", self.write_timeout),
        ] {
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
                return Err(invalid(field, "must be between 1s and 1h"));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("public.max_connections", "must be at least 1"));
        }
        if self.max_connections_per_source == 0
            || self.max_connections_per_source > self.max_connections
        {
            return Err(invalid(
                "public.max_connections_per_source",
                "must be between 1 and public.max_connections",
            ));
        }
        Ok(())
    }
}

/// The agents' listener: TLS 1.3 only, WebSocket on [`protocol::AGENT_PATH`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsSection {
    /// Address to listen on; port 0 picks a free port (reported on stdout).
    pub listen: String,
    /// PEM certificate chain presented to agents.
    pub tls_cert: PathBuf,
    /// PEM private key for `tls_cert`.
    pub tls_key: PathBuf,
    /// Time an agent has to finish TLS, upgrade and handshake. At least 1s.
    #[serde(
        default = "default_handshake_timeout",
        alias = "handshake_timeout_secs",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub handshake_timeout: Duration,
    /// Time between HTTP/2 PINGs to each agent. At least 1s.
    #[serde(
        default = "default_hb_interval",
        alias = "heartbeat_interval_secs",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub heartbeat_interval: Duration,
    /// Time without a PING answer before an agent is dropped; at least
    /// `heartbeat_interval`.
    #[serde(
        default = "default_hb_timeout",
        alias = "heartbeat_timeout_secs",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub heartbeat_timeout: Duration,
    /// Most authenticated agent connections at once.
    #[serde(default = "default_max_agents")]
    pub max_connections: usize,
    /// Most connections still in TLS, upgrade or handshake at once.
    #[serde(default = "default_max_pending")]
    pub max_pending_handshakes: usize,
    /// Most of those pending handshakes from one source (an IPv4 address,
    /// or an IPv6 /64): one host cannot take the whole budget above and keep
    /// every other organization's agents out. Past it, the connection is
    /// closed at once.
    #[serde(default = "default_max_pending_per_source")]
    pub max_pending_handshakes_per_source: usize,
    /// Time a new connection has to complete TLS. Much shorter than
    /// `handshake_timeout` (which still bounds the whole handshake), so
    /// a connection that says nothing holds a pending slot only briefly.
    /// At least 1s.
    #[serde(
        default = "default_tls_timeout",
        alias = "tls_timeout_secs",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub tls_timeout: Duration,
    /// Most authenticated agent connections of one tunnel: the holder of one
    /// tunnel's key cannot take all of `max_connections`. The agent over the
    /// cap is told so and retries with backoff.
    #[serde(default = "default_max_agents_per_tunnel")]
    pub max_agents_per_tunnel: usize,
}

impl AgentsSection {
    /// Checks the agent listener's limits, naming the bad field.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_pending_handshakes_per_source == 0 {
            return Err(invalid(
                "agents.max_pending_handshakes_per_source",
                "must be at least 1",
            ));
        }
        if self.tls_timeout < Duration::from_secs(1) {
            return Err(invalid("agents.tls_timeout", "must be at least 1s"));
        }
        // A handshake timeout under 1s is reported by its own check.
        if self.handshake_timeout >= Duration::from_secs(1)
            && self.tls_timeout > self.handshake_timeout
        {
            return Err(invalid(
                "agents.tls_timeout",
                "must be at most agents.handshake_timeout",
            ));
        }
        if self.max_agents_per_tunnel == 0 {
            return Err(invalid(
                "agents.max_agents_per_tunnel",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Tunnel and caller storage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// SQLite database file, created if missing. With `url`, no database
    /// is made here: the path only names this instance's runtime file
    /// (`<path>.admin`, how the CLI finds the running gateway).
    pub path: PathBuf,
    /// A PostgreSQL database (`postgres://user:password@host/db` or
    /// `postgres:///db?host=/run/postgresql`) shared by several gateway
    /// instances, instead of the SQLite file. The password is never shown.
    #[serde(default)]
    pub url: Option<StoreUrl>,
    /// File holding the 32-byte key-encryption key (base64). Created with
    /// mode 0600 by the admin commands when missing.
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// Name of an environment variable holding the key-encryption key (base64).
    #[serde(default)]
    pub kek_env: Option<String>,
    /// Time a cached tunnel or caller is trusted before it is read from
    /// the store again (how long a revoked caller token may still pass).
    /// At least 1s.
    #[serde(
        default = "default_refresh",
        alias = "refresh_secs",
        deserialize_with = "protocol::duration::secs",
        serialize_with = "protocol::duration::serialize"
    )]
    pub refresh: Duration,
}

/// `store.url`: shown (`Debug`, `Display`, serialized) with its password
/// replaced by `MASKED`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(String);

impl StoreUrl {
    pub fn new(url: impl Into<String>) -> Self {
        StoreUrl(url.into())
    }

    /// The URL itself, password included: for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn masked(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("MASKED"));
                }
                // A password may also be a query parameter.
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k.eq_ignore_ascii_case("password") {
                            "MASKED".to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                if !pairs.is_empty() {
                    u.query_pairs_mut().clear().extend_pairs(pairs);
                }
                u.to_string()
            }
            Err(_) => "(not a URL)".into(),
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({})", self.masked())
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for StoreUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

impl StoreSection {
    /// What the store is, for messages: the SQLite file, or the URL
    /// without its password.
    pub fn describe(&self) -> String {
        match &self.url {
            Some(u) => u.to_string(),
            None => self.path.display().to_string(),
        }
    }
}

/// Caller authentication.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallersSection {
    /// Failed caller credentials (401) one source address may have per
    /// minute (IPv6: per /64); past it its requests get 429 with
    /// `Retry-After` until the minute is over. Default 60.
    #[serde(default = "default_failures_per_minute")]
    pub max_failures_per_minute: u32,
}

impl Default for CallersSection {
    fn default() -> Self {
        CallersSection {
            max_failures_per_minute: default_failures_per_minute(),
        }
    }
}

fn default_failures_per_minute() -> u32 {
    60
}

/// Wildcard routing.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// When set, `<tunnel-name>.<base_domain>` reaches that tunnel without a route.
    #[serde(default)]
    pub base_domain: Option<String>,
    /// The plugin chain of wildcard requests, in order.
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
    /// Lets wildcard requests through with no plugins. The gateway then
    /// still requires the caller's organization to own the tunnel.
    #[serde(default)]
    pub allow_without_plugins: bool,
    /// Lets callers of any organization reach any wildcard-routed tunnel
    /// (the plugin chain then decides alone). Off by default: the gateway
    /// itself refuses a caller whose organization does not own the tunnel,
    /// with the same 404 as for a tunnel that does not exist.
    #[serde(default)]
    pub cross_org: bool,
}

/// One route: requests for `host` whose path starts with `path_prefix` go
/// to `tunnel`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name used in logs.
    pub name: String,
    /// Host to match (case-insensitive, port ignored).
    pub host: String,
    /// Path prefix to match, on whole segments and ignoring case (`/api`
    /// matches `/api`, `/api/x` and `/API/x`, not `/apix`); the longest
    /// matching prefix wins.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Name of the tunnel serving this route.
    pub tunnel: String,
    /// Largest request body for this route; defaults to `public.max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// The plugin chain, in order: the first deny wins, header edits
    /// accumulate.
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
    /// Lets this route run with no plugins. The gateway still requires
    /// the caller's organization to own the tunnel (unless `cross_org`).
    #[serde(default)]
    pub allow_without_plugins: bool,
    /// Shows plugins up to this many bytes of a form-encoded
    /// (`application/x-www-form-urlencoded`) body with a `Content-Length`
    /// within it, e.g. for OAuth 1.0a parameters in the body. 0 (the
    /// default) shows plugins no body. At most 65536.
    #[serde(default)]
    pub form_body_bytes: usize,
    /// Lets `;params` through in path segments (`/a;jsessionid=1/b`), for
    /// services that use them. Off by default: a service on a Servlet
    /// container strips them, so `/upload/..;/admin` would be `/admin`
    /// there. Routing and plugins judge the path without the parameters;
    /// a `..` or `.` segment stays refused either way.
    #[serde(default)]
    pub allow_path_params: bool,
    /// Lets `%2F` through inside path segments (`/projects/group%2Fname`,
    /// as GitLab's API names projects). Off by default: a service that
    /// decodes before resolving could read it as a separator. The parts it
    /// separates are still judged (no `.`, `..` or empty part).
    #[serde(default)]
    pub allow_encoded_slash: bool,
    /// Lets callers of other organizations use this route's tunnel (the
    /// plugin chain then decides alone). Off by default: the gateway
    /// itself refuses (403) a caller whose organization does not own the
    /// tunnel, whatever the chain says.
    #[serde(default)]
    pub cross_org: bool,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
fn default_max_header() -> usize {
    64 << 10
}
fn default_max_body() -> u64 {
    1 << 30
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(60)
}
fn default_max_public_connections() -> usize {
    10_000
}
fn default_max_connections_per_source() -> usize {
    256
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_public_io_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_hb_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_hb_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_agents() -> usize {
    10_000
}
fn default_max_pending() -> usize {
    256
}
fn default_max_pending_per_source() -> usize {
    8
}
fn default_tls_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_max_agents_per_tunnel() -> usize {
    16
}
fn default_refresh() -> Duration {
    Duration::from_secs(5)
}
fn default_prefix() -> String {
    "/".into()
}

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
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Fields renamed when durations became text, by section (old name, new
/// name): [`GatewayConfig::load`] still reads the old names, in the file
/// and from the environment, and refuses both names of one field in one
/// of them. Each is also a serde alias of its field.
pub const RENAMED: protocol::layered::Renamed = &[
    ("server", &[("grace_period_secs", "grace_period")]),
    (
        "public",
        &[
            ("upstream_timeout_secs", "upstream_timeout"),
            ("keepalive_secs", "keepalive"),
            ("header_read_timeout_secs", "header_read_timeout"),
            ("read_timeout_secs", "read_timeout"),
            ("write_timeout_secs", "write_timeout"),
        ],
    ),
    (
        "agents",
        &[
            ("handshake_timeout_secs", "handshake_timeout"),
            ("heartbeat_interval_secs", "heartbeat_interval"),
            ("heartbeat_timeout_secs", "heartbeat_timeout"),
            ("tls_timeout_secs", "tls_timeout"),
        ],
    ),
    ("store", &[("refresh_secs", "refresh")]),
    ("plugins", PluginsSection::RENAMED),
    ("telemetry", telemetry::TelemetrySection::RENAMED),
];

impl GatewayConfig {
    /// Loads `path`, applies `GATEWAY__…` environment overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let load_err = |error| ConfigError::Load {
            path: path.display().to_string(),
            error,
        };
        let cfg: GatewayConfig =
            protocol::layered::load(path, "GATEWAY", RENAMED).map_err(load_err)?;
        cfg.validate()?;
        Ok(GatewayConfig {
            source: Some(path.to_path_buf()),
            ..cfg
        })
    }

    /// Checks what serde cannot: addresses, paired fields, ranges, routes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry.validate()?;
        self.log.validate()?;
        self.admin.address(DEFAULT_ADMIN_LISTEN)?;
        parse_listen("public.listen", &self.public.listen)?;
        parse_listen("agents.listen", &self.agents.listen)?;
        self.agents.validate()?;
        if let Some(c) = &self.cluster {
            c.validate(&self.store)?;
        }
        if self.public.tls_cert.is_some() != self.public.tls_key.is_some() {
            return Err(invalid(
                "public.tls_cert",
                "tls_cert and tls_key must be set together",
            ));
        }
        if self.server.threads == 0 {
            return Err(invalid("server.threads", "must be at least 1"));
        }
        if self.public.max_header_bytes < 1024 {
            return Err(invalid("public.max_header_bytes", "must be at least 1024"));
        }
        self.public.validate_budgets()?;
        if !protocol::duration::whole_secs(self.server.grace_period) {
            return Err(invalid(
                "server.grace_period",
                format!(
                    "{}: must be whole seconds (pingora counts the shutdown in seconds)",
                    protocol::duration::show(self.server.grace_period)
                ),
            ));
        }
        if self.public.upstream_timeout < Duration::from_secs(1) {
            return Err(invalid("public.upstream_timeout", "must be at least 1s"));
        }
        if self.agents.max_connections == 0 {
            return Err(invalid("agents.max_connections", "must be at least 1"));
        }
        if self.agents.max_pending_handshakes == 0 {
            return Err(invalid(
                "agents.max_pending_handshakes",
                "must be at least 1",
            ));
        }
        if self.callers.max_failures_per_minute == 0 {
            return Err(invalid(
                "callers.max_failures_per_minute",
                "must be at least 1",
            ));
        }
        if self.store.refresh < Duration::from_secs(1) {
            return Err(invalid("store.refresh", "must be at least 1s"));
        }
        if self.agents.handshake_timeout < Duration::from_secs(1) {
            return Err(invalid("agents.handshake_timeout", "must be at least 1s"));
        }
        if self.agents.heartbeat_interval < Duration::from_secs(1) {
            return Err(invalid("agents.heartbeat_interval", "must be at least 1s"));
        }
        if self.agents.heartbeat_timeout < self.agents.heartbeat_interval {
            return Err(invalid(
                "agents.heartbeat_timeout",
                "must be at least agents.heartbeat_interval",
            ));
        }
        let kek = keyfile::KekSource {
            section: "store",
            file: self.store.kek_file.as_deref(),
            env: self.store.kek_env.as_deref(),
        };
        if let Some((field, why)) = kek.mistake() {
            return Err(invalid(&field, why));
        }
        if let Some(d) = &self.routing.base_domain {
            if d.is_empty() || d.starts_with('.') || d.contains(char::is_whitespace) {
                return Err(invalid(
                    "routing.base_domain",
                    "must be a domain like tunnels.example.com",
                ));
            }
        }
        check_chain(
            "routing",
            &self.routing.plugins,
            self.routing.allow_without_plugins || self.routing.base_domain.is_none(),
            self.plugins.dir.is_some(),
        )?;
        let p = &self.plugins;
        if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&p.call_timeout) {
            return Err(invalid(
                "plugins.call_timeout",
                "must be between 1ms and 60s",
            ));
        }
        if p.max_memory_bytes < (1 << 20) {
            return Err(invalid(
                "plugins.max_memory_bytes",
                "must be at least 1 MiB",
            ));
        }
        if p.max_sandboxes == 0 {
            return Err(invalid("plugins.max_sandboxes", "must be at least 1"));
        }
        if p.max_replay_keys == 0 {
            return Err(invalid("plugins.max_replay_keys", "must be at least 1"));
        }
        if !(p.replay_share_per_org > 0.0 && p.replay_share_per_org <= 1.0) {
            return Err(invalid(
                "plugins.replay_share_per_org",
                "must be above 0 and at most 1",
            ));
        }
        for (name, digest) in &p.sha256 {
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    format!("plugins.sha256.{name}"),
                    "must be a SHA-256 digest: 64 hex digits",
                ));
            }
        }
        if p.max_requests_per_sandbox == 0 {
            return Err(invalid(
                "plugins.max_requests_per_sandbox",
                "must be at least 1 (1 gives every request a fresh sandbox)",
            ));
        }
        for (i, r) in self.routes.iter().enumerate() {
            let f = |name: &str| format!("routes[{i}].{name}");
            check_chain(
                &format!("routes[{i}]"),
                &r.plugins,
                r.allow_without_plugins,
                self.plugins.dir.is_some(),
            )?;
            if r.form_body_bytes > 65536 {
                return Err(invalid(f("form_body_bytes"), "must be at most 65536"));
            }
            if r.name.is_empty() {
                return Err(invalid(f("name"), "must not be empty"));
            }
            if r.host.is_empty() || r.host.contains(char::is_whitespace) || r.host.contains('/') {
                return Err(invalid(f("host"), "must be a host name"));
            }
            if !r.path_prefix.starts_with('/') {
                return Err(invalid(f("path_prefix"), "must start with '/'"));
            }
            match crate::judgement::judge_path(&r.path_prefix, Default::default()) {
                Ok(j) if j.path == r.path_prefix => {}
                Ok(j) => {
                    return Err(invalid(
                        f("path_prefix"),
                        format!("write it in its normal form, `{}`", j.path),
                    ))
                }
                Err(e) => return Err(invalid(f("path_prefix"), e.to_string())),
            }
            if crate::judgement::judge_host(&r.host).map(|h| h.port.is_none()) != Ok(true) {
                return Err(invalid(f("host"), "must be a host name without port"));
            }
            if r.tunnel.is_empty() {
                return Err(invalid(f("tunnel"), "must name a tunnel"));
            }
        }
        Ok(())
    }
}

/// A plugin name is a file stem in the plugin folder.
pub fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A chain must be explicit: plugins, or `allow_without_plugins = true`.
fn check_chain(
    at: &str,
    chain: &[PluginRef],
    allow_empty: bool,
    have_dir: bool,
) -> Result<(), ConfigError> {
    if chain.is_empty() && !allow_empty {
        return Err(invalid(
            format!("{at}.plugins"),
            "no plugins: list the plugins that judge these requests, or set \
             allow_without_plugins = true to let every caller of the tunnel's \
             organization through",
        ));
    }
    if !chain.is_empty() && !have_dir {
        return Err(invalid(
            "plugins.dir",
            format!("{at} lists plugins: set plugins.dir to the folder of .wasm files"),
        ));
    }
    for (j, p) in chain.iter().enumerate() {
        if !valid_plugin_name(&p.name) {
            return Err(invalid(
                format!("{at}.plugins[{j}].name"),
                format!(
                    "`{}` is not a plugin name (letters, digits, '-', '_', '.'; the file is <name>.wasm)",
                    p.name
                ),
            ));
        }
    }
    Ok(())
}

/// Parses a listen address, naming the field on error.
pub fn parse_listen(field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            field,
            format!("`{value}` is not an address like 127.0.0.1:8080"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> &'static str {
        r#"
[public]
listen = "127.0.0.1:0"
[agents]
listen = "127.0.0.1:0"
tls_cert = "c.pem"
tls_key = "k.pem"
[store]
path = "db"
kek_file = "kek"
[[routes]]
name = "wiki"
host = "wiki.test"
tunnel = "wiki"
allow_without_plugins = true
"#
    }

    fn load_str(text: &str) -> Result<GatewayConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("gwcfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("g.toml");
        std::fs::write(&p, text).unwrap();
        let r = GatewayConfig::load(&p);
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load_str(base()).unwrap();
        assert_eq!(c.routes[0].path_prefix, "/");
        assert_eq!(c.public.max_header_bytes, 64 << 10);
        assert_eq!(c.server.threads, default_threads());
        assert!(c.server.threads >= 1);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = base().replace(
            "listen = \"127.0.0.1:0\"\n[agents]",
            "listen = \"nope\"\n[agents]",
        );
        let e = load_str(&bad).unwrap_err().to_string();
        assert!(e.contains("public.listen"), "{e}");

        let bad = base().replace("kek_file = \"kek\"", "");
        let e = load_str(&bad).unwrap_err().to_string();
        assert!(e.contains("store.kek_file"), "{e}");

        let bad = base().replace("[store]", "[store]\nbogus = 1");
        let e = load_str(&bad).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");

        let bad = format!("{}path_prefix = \"x\"\n", base());
        let e = load_str(&bad).unwrap_err().to_string();
        assert!(e.contains("routes[0].path_prefix"), "{e}");

        let bad = format!("{}[plugins]\nmax_requests_per_sandbox = 0\n", base());
        let e = load_str(&bad).unwrap_err().to_string();
        assert!(e.contains("plugins.max_requests_per_sandbox"), "{e}");
        let ok = format!("{}[plugins]\nmax_requests_per_sandbox = 1\n", base());
        assert_eq!(load_str(&ok).unwrap().plugins.max_requests_per_sandbox, 1);
        assert_eq!(
            load_str(base()).unwrap().plugins.max_requests_per_sandbox,
            10_000
        );
    }

    /// `[cluster]`: needs the shared store, and each field is checked.
    #[test]
    fn cluster_settings_are_checked_and_name_the_field() {
        let cluster = "[cluster]\nrelay_listen = \"127.0.0.1:0\"\ntls_cert = \"i.pem\"\n\
                       tls_key = \"i.key\"\ntls_ca = \"ca.pem\"\n";
        let shared = base().replace("[store]", "[store]\nurl = \"postgres://u@h/db\"");
        let ok = load_str(&format!("{shared}{cluster}")).unwrap();
        let c = ok.cluster.unwrap();
        assert_eq!(c.lease, Duration::from_secs(6));
        assert_eq!(c.server_name, "gateway-relay");
        let bound: SocketAddr = "0.0.0.0:7443".parse().unwrap();
        let e = c.advertised(bound).unwrap_err().to_string();
        assert!(e.contains("cluster.relay_advertise"), "{e}");
        for (text, field) in [
            (format!("{}{cluster}", base()), "store.url"),
            (
                format!("{shared}{}", cluster.replace("127.0.0.1:0", "nope")),
                "cluster.relay_listen",
            ),
            (
                format!("{shared}{cluster}relay_advertise = \"0.0.0.0:7443\"\n"),
                "cluster.relay_advertise",
            ),
            (
                format!("{shared}{cluster}lease = \"2s\"\n"),
                "cluster.lease",
            ),
            (
                format!("{shared}{cluster}server_name = \"not a name\"\n"),
                "cluster.server_name",
            ),
            (
                format!("{shared}{}", cluster.replace("tls_ca = \"ca.pem\"\n", "")),
                "tls_ca",
            ),
        ] {
            let e = load_str(&text).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn public_budgets_have_strict_defaults_and_name_the_bad_field() {
        let p = load_str(base()).unwrap().public;
        assert_eq!(p.max_connections, 10_000);
        assert_eq!(p.max_connections_per_source, 256);
        assert_eq!(p.header_read_timeout, Duration::from_secs(10));
        assert_eq!(p.keepalive, Duration::from_secs(60));
        assert_eq!(p.read_timeout, Duration::from_secs(60));
        assert_eq!(p.write_timeout, Duration::from_secs(60));
        for (field, value) in [
            ("max_connections", "0"),
            ("max_connections_per_source", "0"),
            ("max_connections_per_source", "10001"),
            ("header_read_timeout", "\"0s\""),
            ("keepalive", "\"999ms\""),
            ("read_timeout", "\"1h 1s\""),
            ("write_timeout", "0"),
        ] {
            let bad = base().replace("[agents]", &format!("{field} = {value}\n[agents]"));
            let e = load_str(&bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("public.{field}")),
                "{field}={value}: {e}"
            );
        }
    }

    /// `base()` with `line` added to `[section]` (appended when `base()`
    /// has no such section).
    fn with(section: &str, line: &str) -> String {
        let header = format!("[{section}]\n");
        if base().contains(&header) {
            base().replacen(&header, &format!("{header}{line}\n"), 1)
        } else {
            format!("{}\n{header}{line}\n", base())
        }
    }

    #[test]
    fn durations_are_written_as_text_or_as_a_number_in_the_old_unit() {
        let c = load_str(&with("public", "upstream_timeout = \"1m30s\"")).unwrap();
        assert_eq!(c.public.upstream_timeout, Duration::from_secs(90));
        let c = load_str(&with("plugins", "call_timeout = \"75ms\"")).unwrap();
        assert_eq!(c.plugins.call_timeout, Duration::from_millis(75));
        // A bare number is in the old unit, under either name.
        for line in ["upstream_timeout = 60", "upstream_timeout_secs = 60"] {
            let c = load_str(&with("public", line)).unwrap();
            assert_eq!(c.public.upstream_timeout, Duration::from_secs(60), "{line}");
        }
        for line in ["call_timeout = 50", "call_timeout_ms = 50"] {
            let c = load_str(&with("plugins", line)).unwrap();
            assert_eq!(c.plugins.call_timeout, Duration::from_millis(50), "{line}");
        }
        // Digits as text, as an environment override hands them over.
        let c = load_str(&with("public", "upstream_timeout_secs = \"60\"")).unwrap();
        assert_eq!(c.public.upstream_timeout, Duration::from_secs(60));
        let c = load_str(&with("telemetry", "export_interval = \"250\"")).unwrap();
        assert_eq!(c.telemetry.export_interval, Duration::from_millis(250));
        // A timeout that is a Duration all the way takes fractions.
        let c = load_str(&with("public", "header_read_timeout = \"1500ms\"")).unwrap();
        assert_eq!(c.public.header_read_timeout, Duration::from_millis(1500));
        // Written back as text.
        let v = serde_json::to_value(load_str(&with("public", "upstream_timeout = 90")).unwrap())
            .unwrap();
        assert_eq!(v["public"]["upstream_timeout"], "1m 30s");
        assert_eq!(v["plugins"]["call_timeout"], "50ms");
        assert!(v["public"].get("upstream_timeout_secs").is_none(), "{v}");
    }

    #[test]
    fn every_old_name_is_read_as_its_new_name_in_its_unit() {
        for (section, fields) in RENAMED {
            for (old, new) in fields.iter() {
                let c = load_str(&with(section, &format!("{old} = 7"))).ok();
                // Read without the loader (serde's alias), so bounds do not
                // apply and the alias itself is what is tested.
                let text = with(section, &format!("{old} = 7"));
                let c2: GatewayConfig = config::Config::builder()
                    .add_source(config::File::from_str(&text, config::FileFormat::Toml))
                    .build()
                    .and_then(|c| c.try_deserialize())
                    .unwrap_or_else(|e| panic!("{section}.{old}: {e}"));
                let v = serde_json::to_value(&c2).unwrap();
                let unit = if old.ends_with("_ms") { "7ms" } else { "7s" };
                assert_eq!(v[section][new], unit, "{section}.{old} -> {new}");
                if let Some(c) = c {
                    assert_eq!(serde_json::to_value(&c).unwrap()[section][new], unit);
                }
            }
        }
    }

    #[test]
    fn old_and_new_name_of_one_field_are_refused_naming_both() {
        let text = with(
            "public",
            "upstream_timeout = \"60s\"\nupstream_timeout_secs = 60",
        );
        let e = load_str(&text).unwrap_err().to_string();
        assert!(
            e.contains("`public.upstream_timeout_secs` and `public.upstream_timeout` are both set"),
            "{e}"
        );
        assert!(e.contains("keep only `upstream_timeout`"), "{e}");
    }

    #[test]
    fn a_bad_duration_names_the_field_and_what_is_accepted() {
        let e = load_str(&with("public", "upstream_timeout = \"60 secondz\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("public.upstream_timeout: \"60 secondz\" is not a duration ("),
            "{e}"
        );
        assert!(
            e.contains("write e.g. \"60s\", \"1m30s\", \"500ms\", or a number of seconds)"),
            "{e}"
        );
        let e = load_str(&with("plugins", "call_timeout_ms = 1.5"))
            .unwrap_err()
            .to_string();
        // Named by its current name, whichever the file used.
        assert!(
            e.contains("plugins.call_timeout: 1.5 is not a duration"),
            "{e}"
        );
        assert!(e.contains("a number of milliseconds"), "{e}");
    }

    #[test]
    fn duration_bounds_are_kept_and_name_the_new_field() {
        for (section, line, field) in [
            (
                "public",
                "upstream_timeout = \"999ms\"",
                "public.upstream_timeout",
            ),
            (
                "public",
                "upstream_timeout_secs = 0",
                "public.upstream_timeout",
            ),
            ("public", "keepalive = \"1h 1ms\"", "public.keepalive"),
            ("store", "refresh = \"0s\"", "store.refresh"),
            (
                "agents",
                "handshake_timeout = \"500ms\"",
                "agents.handshake_timeout",
            ),
            (
                "agents",
                "heartbeat_interval = 0",
                "agents.heartbeat_interval",
            ),
            (
                "agents",
                "heartbeat_timeout = \"5s\"",
                "agents.heartbeat_timeout",
            ),
            ("agents", "tls_timeout = \"10s 1ms\"", "agents.tls_timeout"),
            ("plugins", "call_timeout = 0", "plugins.call_timeout"),
            (
                "plugins",
                "call_timeout = \"1m 1ms\"",
                "plugins.call_timeout",
            ),
            (
                "telemetry",
                "export_timeout = \"11m\"",
                "telemetry.export_timeout",
            ),
            ("server", "grace_period = \"1500ms\"", "server.grace_period"),
        ] {
            let e = load_str(&with(section, line)).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{line}: {e}");
        }
        let e = load_str(&with("server", "grace_period = \"2.5s\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be whole seconds"), "{e}");
        for (section, line) in [
            ("public", "upstream_timeout = \"1s\""),
            ("public", "keepalive = \"1h\""),
            ("public", "upstream_timeout = \"1500ms\""),
            ("agents", "tls_timeout = \"10s\""),
            ("plugins", "call_timeout = \"1m\""),
            ("plugins", "reload_interval = 0"),
            ("server", "grace_period = 0"),
        ] {
            load_str(&with(section, line)).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }

    #[test]
    fn a_route_without_plugins_must_say_so() {
        let bad = base().replace("allow_without_plugins = true", "");
        let e = load_str(&bad).unwrap_err().to_string();
        assert!(e.contains("routes[0].plugins"), "{e}");
        assert!(e.contains("allow_without_plugins"), "{e}");
    }

    #[test]
    fn plugin_chains_need_a_folder_and_valid_names() {
        let chain = base().replace(
            "allow_without_plugins = true",
            "[[routes.plugins]]\nname = \"org-check\"",
        );
        let e = load_str(&chain).unwrap_err().to_string();
        assert!(e.contains("plugins.dir"), "{e}");

        let ok = format!("{chain}\n[plugins]\ndir = \"p\"\n");
        let c = load_str(&ok).unwrap();
        assert_eq!(c.routes[0].plugins[0].name, "org-check");
        assert_eq!(c.routes[0].plugins[0].config_text(), "");

        let bad = ok.replace("\"org-check\"", "\"../etc/x\"");
        let e = load_str(&bad).unwrap_err().to_string();
        assert!(e.contains("routes[0].plugins[0].name"), "{e}");
    }

    #[test]
    fn plugin_config_is_text_or_a_table_as_json() {
        let text = format!(
            "{}[[routes.plugins]]\nname = \"a\"\nconfig = \"raw text\"\n[[routes.plugins]]\nname = \"b\"\nconfig = {{ window = 600, methods = [\"RSA-SHA1\"] }}\n[plugins]\ndir = \"p\"\n",
            base()
        );
        let c = load_str(&text).unwrap();
        assert_eq!(c.routes[0].plugins[0].config_text(), "raw text");
        let v: serde_json::Value =
            serde_json::from_str(&c.routes[0].plugins[1].config_text()).unwrap();
        assert_eq!(v["window"], 600);
        assert_eq!(v["methods"][0], "RSA-SHA1");
    }

    #[test]
    fn agent_listener_budgets_have_strict_defaults_and_are_checked() {
        let c = load_str(base()).unwrap();
        assert_eq!(c.agents.max_pending_handshakes_per_source, 8);
        assert_eq!(c.agents.tls_timeout, Duration::from_secs(3));
        assert_eq!(c.agents.max_agents_per_tunnel, 16);
        for (setting, field) in [
            (
                "max_pending_handshakes_per_source = 0",
                "agents.max_pending_handshakes_per_source",
            ),
            ("tls_timeout = \"0s\"", "agents.tls_timeout"),
            ("tls_timeout = \"11s\"", "agents.tls_timeout"),
            ("max_agents_per_tunnel = 0", "agents.max_agents_per_tunnel"),
        ] {
            let bad = base().replace("[agents]", &format!("[agents]\n{setting}"));
            let e = load_str(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{setting}: {e}");
        }
    }
}
