//! The tracer provider: sampler, resource, and a bounded, counted export
//! pipeline towards an OTLP collector.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingResult, SdkTracerProvider,
    ShouldSample, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use super::{resource_attributes, ExportCounters, OtlpProtocol, TelemetrySection};

/// Builds the provider. Without an endpoint nothing is exported and new
/// traces are not sampled, but span contexts still exist, so trace ids
/// still reach logs and the next hop's `traceparent`. With gRPC, the
/// returned runtime drives the exporter's connection.
pub(super) fn provider(
    t: &TelemetrySection,
    default_service: &str,
    follow_incoming_default: bool,
    counters: &ExportCounters,
) -> anyhow::Result<(SdkTracerProvider, Option<tokio::runtime::Runtime>)> {
    t.validate()?;
    let resource = Resource::builder()
        .with_service_name(
            t.service_name
                .clone()
                .unwrap_or_else(|| default_service.to_string()),
        )
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attributes(resource_attributes(t))
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = &t.endpoint else {
        let off = Sampler::ParentBased(Box::new(Sampler::AlwaysOff));
        return Ok((builder.with_sampler(off).build(), None));
    };
    let sampler = EdgeSampler {
        ratio: Sampler::TraceIdRatioBased(t.sampling_ratio),
        follow_remote: t
            .follow_incoming_sampling
            .unwrap_or(follow_incoming_default),
    };
    let scheme = endpoint
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.scheme_str().map(str::to_ascii_lowercase));
    let https = scheme.as_deref() == Some("https");
    if !https && !t.headers.is_empty() {
        tracing::warn!(
            "telemetry.headers are sent in clear text: the collector endpoint is not https"
        );
    }
    let timeout = t.export_timeout;
    let ca = match &t.ca_file {
        Some(p) => {
            Some(std::fs::read(p).with_context(|| format!("telemetry.ca_file {}", p.display()))?)
        }
        None => None,
    };
    let (exporter, runtime) = match t.protocol {
        OtlpProtocol::Grpc => {
            // tonic's channel lives on this runtime; the batch thread only
            // waits on it.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-export")
                .enable_all()
                .build()?;
            let _enter = rt.enter();
            let mut headers = http::HeaderMap::new();
            for (k, v) in &t.headers {
                headers.insert(
                    http::HeaderName::from_bytes(k.as_bytes())?,
                    http::HeaderValue::from_str(v)?,
                );
            }
            // Our own channel, so that connecting is bounded too (a
            // collector dropping SYNs would otherwise hold an export for
            // the OS connect timeout).
            let mut channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
                .context("telemetry.endpoint")?
                .connect_timeout(timeout)
                .timeout(timeout);
            if https {
                use tonic::transport::{Certificate, ClientTlsConfig};
                let mut tls = ClientTlsConfig::new().with_native_roots();
                if let Some(pem) = &ca {
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                channel = channel.tls_config(tls).context("telemetry: TLS settings")?;
            }
            let b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_channel(channel.connect_lazy())
                .with_timeout(timeout)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers),
                );
            (
                b.build().context("telemetry: building the gRPC exporter")?,
                Some(rt),
            )
        }
        OtlpProtocol::HttpProtobuf => {
            // reqwest's TLS takes the process's rustls provider: ring, the
            // only one built in. Already installed is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            // No redirects: export headers must not follow them elsewhere.
            let mut client = reqwest::blocking::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .redirect(reqwest::redirect::Policy::none());
            if let Some(pem) = &ca {
                for cert in reqwest::Certificate::from_pem_bundle(pem)
                    .context("telemetry.ca_file: malformed PEM")?
                {
                    client = client.add_root_certificate(cert);
                }
            }
            let client = client
                .build()
                .context("telemetry: building the HTTP client")?;
            let url = http_traces_url(endpoint);
            let headers: HashMap<String, String> = t.headers.clone().into_iter().collect();
            let e = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(timeout)
                .with_headers(headers)
                .with_http_client(client)
                .build()
                .context("telemetry: building the HTTP exporter")?;
            (e, None)
        }
    };
    let pending = Arc::new(AtomicUsize::new(0));
    let exporter = Counting {
        inner: exporter,
        pending: pending.clone(),
        counters: counters.clone(),
        failing: AtomicBool::new(false),
    };
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(t.queue_size)
                .with_max_export_batch_size(t.batch_size)
                .with_scheduled_delay(t.export_interval)
                .build(),
        )
        .build();
    let processor = Bounded {
        inner: batch,
        pending,
        limit: t.queue_size,
        counters: counters.clone(),
    };
    Ok((
        builder
            .with_sampler(sampler)
            .with_span_processor(processor)
            .build(),
        runtime,
    ))
}

/// The gateway's sampler: a parent in this process is followed; a remote
/// parent (the caller's `traceparent`) only when `follow_remote`, since
/// otherwise any caller could have every request recorded (or none);
/// everything else is sampled by trace id at the configured ratio.
#[derive(Debug, Clone)]
struct EdgeSampler {
    ratio: Sampler,
    follow_remote: bool,
}

impl ShouldSample for EdgeSampler {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        span_kind: &opentelemetry::trace::SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        use opentelemetry::trace::TraceContextExt;
        use opentelemetry_sdk::trace::SamplingDecision;
        if let Some(cx) = parent_context.filter(|cx| cx.has_active_span()) {
            let parent = cx.span().span_context().clone();
            if parent.is_valid() && (!parent.is_remote() || self.follow_remote) {
                return SamplingResult {
                    decision: if parent.is_sampled() {
                        SamplingDecision::RecordAndSample
                    } else {
                        SamplingDecision::Drop
                    },
                    attributes: Vec::new(),
                    trace_state: parent.trace_state().clone(),
                };
            }
        }
        self.ratio
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// The OTLP/HTTP traces URL: `endpoint` as given when it has a path, else
/// with the standard `/v1/traces`.
fn http_traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = endpoint
        .parse::<http::Uri>()
        .ok()
        .is_some_and(|u| !matches!(u.path(), "" | "/"));
    if has_path {
        endpoint.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// Admits a finished span only while fewer than `limit` wait for export,
/// and counts the ones turned away; the batch processor's own queue can
/// then never overflow uncounted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    limit: usize,
    counters: ExportCounters,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.counters.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it exports and what fails.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    counters: ExportCounters,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.pending.fetch_sub(n, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.counters.exported.inc_by(n as u64);
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("span export to the collector works again");
                }
            }
            Err(e) => {
                self.counters.failed.inc_by(n as u64);
                // One warning per outage, not one per batch.
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        "cannot export spans to the collector ({e}); requests are not \
                         affected, lost spans are counted in otel_spans_failed_total"
                    );
                }
            }
        };
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_url_gets_the_traces_path_only_when_it_has_none() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("https://c/otlp/v1/traces"),
            "https://c/otlp/v1/traces"
        );
    }
}
