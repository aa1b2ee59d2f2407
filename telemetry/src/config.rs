//! The `[telemetry]`, `[log]` and `[admin]` sections, the same on both sides.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A field that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's dotted name, e.g. `telemetry.endpoint`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid config field `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

fn bad(field: impl Into<String>, reason: String) -> FieldError {
    FieldError {
        field: field.into(),
        reason,
    }
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (collectors listen on 4317).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (collectors listen on 4318).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Trace export to an OpenTelemetry collector. Off unless `endpoint` is set.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// Collector URL, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `https://otel.example.com:4318` (HTTP; `/v1/traces` is added when
    /// the URL has no path). Unset: no export.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// Headers (gRPC metadata) sent with every export, e.g. an API key.
    /// Values are never logged.
    pub headers: BTreeMap<String, String>,
    /// PEM CA certificates trusted for an `https` endpoint, in addition to
    /// the system's.
    pub ca_file: Option<PathBuf>,
    /// Fraction of traces recorded, 0.0 to 1.0, decided by trace id.
    pub sampling_ratio: f64,
    /// Whether an incoming `traceparent`'s sampled flag decides instead.
    /// Default: no on the gateway (any caller could otherwise have every
    /// request recorded), yes on the agent (its caller is the gateway).
    pub follow_incoming_sampling: Option<bool>,
    /// `service.name`; defaults to `tunnel-gateway` / `tunnel-agent`.
    pub service_name: Option<String>,
    /// Extra resource attributes, e.g. `deployment.environment = "prod"`.
    pub resource: BTreeMap<String, String>,
    /// Most finished spans waiting for export; beyond it spans are dropped
    /// and counted, never waited for.
    pub queue_size: usize,
    /// Most spans in one export.
    pub batch_size: usize,
    /// Time between exports (`"1s"`; a bare number is milliseconds).
    #[serde(
        alias = "export_interval_ms",
        deserialize_with = "protocol::duration::millis",
        serialize_with = "protocol::duration::serialize"
    )]
    pub export_interval: Duration,
    /// Time one export may take before it counts as failed (`"5s"`; a bare
    /// number is milliseconds).
    #[serde(
        alias = "export_timeout_ms",
        deserialize_with = "protocol::duration::millis",
        serialize_with = "protocol::duration::serialize"
    )]
    pub export_timeout: Duration,
}

impl TelemetrySection {
    /// Fields renamed when durations became text (old name, new name):
    /// the old names are still read ([`protocol::layered`]).
    pub const RENAMED: &'static [(&'static str, &'static str)] = &[
        ("export_interval_ms", "export_interval"),
        ("export_timeout_ms", "export_timeout"),
    ];
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            headers: BTreeMap::new(),
            ca_file: None,
            sampling_ratio: 1.0,
            follow_incoming_sampling: None,
            service_name: None,
            resource: BTreeMap::new(),
            queue_size: 4096,
            batch_size: 512,
            export_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for TelemetrySection {
    // Header values are credentials: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetrySection")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("ca_file", &self.ca_file)
            .field("sampling_ratio", &self.sampling_ratio)
            .field("follow_incoming_sampling", &self.follow_incoming_sampling)
            .field("service_name", &self.service_name)
            .field("resource", &self.resource)
            .field("queue_size", &self.queue_size)
            .field("batch_size", &self.batch_size)
            .field("export_interval", &self.export_interval)
            .field("export_timeout", &self.export_timeout)
            .finish()
    }
}

impl TelemetrySection {
    /// Checks every field; the error names it (`telemetry.<field>`).
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(ep) = &self.endpoint {
            let uri: http::Uri = ep
                .parse()
                .map_err(|e| bad("telemetry.endpoint", format!("`{ep}` is not a URL ({e})")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(bad(
                    "telemetry.endpoint",
                    format!("`{ep}`: must be an http:// or https:// URL with a host"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(bad(
                "telemetry.sampling_ratio",
                format!("{} must be between 0.0 and 1.0", self.sampling_ratio),
            ));
        }
        for (k, v) in &self.headers {
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                bad(
                    "telemetry.headers",
                    format!("`{k}` is not a valid header name"),
                )
            })?;
            http::HeaderValue::from_str(v).map_err(|_| {
                bad(
                    format!("telemetry.headers.{k}"),
                    "not a valid header value".into(),
                )
            })?;
        }
        if self
            .service_name
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(bad("telemetry.service_name", "must not be empty".into()));
        }
        if !(1..=1_000_000).contains(&self.queue_size) {
            return Err(bad("telemetry.queue_size", "must be 1 to 1000000".into()));
        }
        if self.batch_size == 0 || self.batch_size > self.queue_size {
            return Err(bad(
                "telemetry.batch_size",
                format!("must be 1 to queue_size ({})", self.queue_size),
            ));
        }
        let export_bounds = Duration::from_millis(1)..=Duration::from_secs(600);
        if !export_bounds.contains(&self.export_interval) {
            return Err(bad(
                "telemetry.export_interval",
                "must be 1ms to 10m".into(),
            ));
        }
        if !export_bounds.contains(&self.export_timeout) {
            return Err(bad("telemetry.export_timeout", "must be 1ms to 10m".into()));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                return Err(bad(
                    "telemetry.ca_file",
                    format!("{}: no such file", ca.display()),
                ));
            }
        }
        Ok(())
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Logs, on stderr.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `human` or `json`.
    pub format: LogFormat,
    /// Filter directives (`info`, `warn,access=info`, ...); `RUST_LOG`
    /// overrides it.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

impl LogSection {
    /// Checks the filter directives; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map(|_| ())
            .map_err(|e| bad("log.level", format!("`{}`: {e}", self.level)))
    }
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Address to listen on (loopback by default; port 0 picks a free one,
    /// reported on stdout); `off` disables the listener.
    pub listen: Option<String>,
    /// Serve HTTPS (TLS 1.3) with this certificate chain (PEM) and
    /// [`AdminSection::tls_key`], for a listener reached over a network.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<std::path::PathBuf>,
}

impl AdminSection {
    /// The address to bind, `None` when turned off; `default` applies when
    /// unset. The error names the field (a TLS certificate without its key
    /// too).
    pub fn address(&self, default: &str) -> Result<Option<std::net::SocketAddr>, FieldError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(bad(
                if self.tls_cert.is_some() {
                    "admin.tls_key"
                } else {
                    "admin.tls_cert"
                },
                "admin.tls_cert and admin.tls_key must be set together".into(),
            ));
        }
        let text = self.listen.as_deref().unwrap_or(default).trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            bad(
                "admin.listen",
                format!("`{text}`: expected ip:port or `off`"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(t: TelemetrySection) -> String {
        t.validate().expect_err("should be refused").field
    }

    #[test]
    fn defaults_are_valid_and_export_is_off() {
        let t = TelemetrySection::default();
        assert!(t.validate().is_ok());
        assert!(t.endpoint.is_none());
        assert!(LogSection::default().validate().is_ok());
        assert_eq!(
            AdminSection::default().address("127.0.0.1:9464").unwrap(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let with = |f: fn(&mut TelemetrySection)| {
            let mut t = TelemetrySection::default();
            f(&mut t);
            t
        };
        assert_eq!(
            field_of(with(|t| t.endpoint = Some("ftp://c:21".into()))),
            "telemetry.endpoint"
        );
        assert_eq!(
            field_of(with(|t| t.endpoint = Some("not a url".into()))),
            "telemetry.endpoint"
        );
        assert_eq!(
            field_of(with(|t| t.sampling_ratio = 1.5)),
            "telemetry.sampling_ratio"
        );
        assert_eq!(
            field_of(with(|t| {
                t.headers.insert("bad name".into(), "v".into());
            })),
            "telemetry.headers"
        );
        assert_eq!(
            field_of(with(|t| {
                t.headers.insert("x-key".into(), "line\nbreak".into());
            })),
            "telemetry.headers.x-key"
        );
        assert_eq!(field_of(with(|t| t.queue_size = 0)), "telemetry.queue_size");
        assert_eq!(
            field_of(with(|t| t.batch_size = t.queue_size + 1)),
            "telemetry.batch_size"
        );
        assert_eq!(
            field_of(with(|t| t.export_interval = Duration::ZERO)),
            "telemetry.export_interval"
        );
        assert_eq!(
            field_of(with(|t| t.export_timeout = Duration::from_secs(601))),
            "telemetry.export_timeout"
        );
        let sub_ms = with(|t| t.export_interval = Duration::from_micros(999));
        assert_eq!(field_of(sub_ms), "telemetry.export_interval");
        let top = with(|t| t.export_timeout = Duration::from_secs(600));
        assert!(top.validate().is_ok());
        assert_eq!(
            field_of(with(|t| t.service_name = Some(" ".into()))),
            "telemetry.service_name"
        );
        assert_eq!(
            field_of(with(|t| t.ca_file = Some("/nonexistent/ca.pem".into()))),
            "telemetry.ca_file"
        );
        let log = LogSection {
            level: "info,[".into(),
            ..LogSection::default()
        };
        assert_eq!(log.validate().unwrap_err().field, "log.level");
        let admin = AdminSection {
            listen: Some("localhost".into()),
            ..AdminSection::default()
        };
        assert_eq!(admin.address("x").unwrap_err().field, "admin.listen");
        let off = AdminSection {
            listen: Some("off".into()),
            ..AdminSection::default()
        };
        assert_eq!(off.address("127.0.0.1:1").unwrap(), None);
        let half = AdminSection {
            tls_key: Some("key.pem".into()),
            ..AdminSection::default()
        };
        assert_eq!(half.address("x").unwrap_err().field, "admin.tls_cert");
    }

    #[test]
    fn export_header_values_never_reach_debug_output() {
        let mut t = TelemetrySection::default();
        t.headers
            .insert("authorization".into(), "Bearer s3cret".into());
        let shown = format!("{t:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
