//! A real OpenTelemetry collector for the telemetry stories: an OTLP trace
//! receiver over gRPC (the generated tonic `TraceService`) and over
//! HTTP/protobuf (`POST /v1/traces`), which keeps every span it decodes,
//! plus a [`blackhole`] that plays a collector that hangs.
//!
//! Both receivers run on loopback, stop when their handle is dropped, and
//! cut their open connections at once (an exporter sees the collector go).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatusCode;
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::body::{self, Body};

/// The largest export either receiver accepts (HTTP body or gRPC message).
pub const MAX_EXPORT_BYTES: usize = 16 * 1024 * 1024;

/// The media type of OTLP/HTTP protobuf requests and answers.
const PROTOBUF: &str = "application/x-protobuf";

/// One span as the collector received it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource attribute `service.name` ("" when absent).
    pub service: String,
    /// Every resource attribute, values stringified like [`Self::attributes`].
    pub resource: BTreeMap<String, String>,
    /// The span name.
    pub name: String,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits, or "" for a root span.
    pub parent_span_id: String,
    /// "server", "client", "internal", "producer", "consumer" or
    /// "unspecified" ("unknown" for a value outside the OTLP enum).
    pub kind: &'static str,
    /// Span attributes, values stringified: strings as is, ints in decimal,
    /// bools `true`/`false`, doubles as Rust prints them, bytes in hex,
    /// arrays and maps as JSON.
    pub attributes: BTreeMap<String, String>,
    /// "unset", "ok" or "error" ("unknown" outside the OTLP enum).
    pub status_code: &'static str,
    /// The status message ("" when none).
    pub status_message: String,
    /// Start time, nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End time, nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// Which receiver delivered it: "grpc" or "http".
    pub protocol: &'static str,
}

impl ReceivedSpan {
    /// Whether it has no parent.
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }

    /// The attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

impl fmt::Display for ReceivedSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parent = if self.is_root() {
            "-"
        } else {
            &self.parent_span_id
        };
        write!(
            f,
            "[{}] {} {:?} {} trace={} span={} parent={} status={}",
            self.protocol,
            self.service,
            self.name,
            self.kind,
            self.trace_id,
            self.span_id,
            parent,
            self.status_code,
        )?;
        if !self.status_message.is_empty() {
            write!(f, "({:?})", self.status_message)?;
        }
        write!(f, " {:?}", self.attributes)
    }
}

/// A readable dump of `spans`, one per line.
pub fn describe(spans: &[ReceivedSpan]) -> String {
    if spans.is_empty() {
        return "  (no spans)".to_string();
    }
    spans
        .iter()
        .map(|s| format!("  {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What both receivers write and the test reads.
#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    headers: Mutex<Vec<Vec<(String, String)>>>,
    /// Woken (all waiters) after every export is recorded.
    arrived: Notify,
}

impl Shared {
    fn record(
        &self,
        protocol: &'static str,
        headers: &HeaderMap,
        request: ExportTraceServiceRequest,
    ) {
        let headers = headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_string(), value)
            })
            .collect();
        let spans = decode(protocol, request);
        self.headers.lock().expect("headers lock").push(headers);
        self.spans.lock().expect("spans lock").extend(spans);
        self.arrived.notify_waiters();
    }
}

/// A running OTLP trace collector; stops both receivers when dropped.
pub struct Collector {
    grpc: SocketAddr,
    http: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Collector {
    /// Starts both receivers on 127.0.0.1 port 0: OTLP/gRPC (the generated
    /// tonic `TraceServiceServer`, HTTP/2 with prior knowledge) and
    /// OTLP/HTTP protobuf (HTTP/1.1 `POST /v1/traces` with
    /// `content-type: application/x-protobuf`, answered 200 with an encoded
    /// `ExportTraceServiceResponse`; 404 for other paths, 405 for other
    /// methods, 415 for other content types or any content encoding, 413 for
    /// bodies over [`MAX_EXPORT_BYTES`], 400 for undecodable bodies).
    pub async fn start() -> Collector {
        let shared = Arc::new(Shared::default());

        let grpc_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/gRPC receiver");
        let grpc = grpc_listener.local_addr().expect("OTLP/gRPC address");
        let service = TraceServiceServer::new(GrpcReceiver(shared.clone()))
            .max_decoding_message_size(MAX_EXPORT_BYTES);
        let grpc_task = serve(grpc_listener, move |tcp| {
            let service = service.clone();
            async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let mut service = service.clone();
                    tonic::codegen::Service::call(&mut service, req)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            }
        });

        let http_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/HTTP receiver");
        let http = http_listener.local_addr().expect("OTLP/HTTP address");
        let state = shared.clone();
        let http_task = serve(http_listener, move |tcp| {
            let state = state.clone();
            async move {
                let service = service_fn(move |req| handle_http(req, state.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            }
        });

        Collector {
            grpc,
            http,
            shared,
            tasks: vec![grpc_task, http_task],
        }
    }

    /// The OTLP/gRPC endpoint: `http://127.0.0.1:PORT`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The OTLP/HTTP endpoint without a path (`http://127.0.0.1:PORT`):
    /// clients add `/v1/traces`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Where the gRPC receiver listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// Where the HTTP receiver listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().expect("spans lock").clone()
    }

    /// Waits until `pred` holds on all spans received so far and returns
    /// them; woken by each export, so it never sleeps a fixed time.
    ///
    /// Panics after `timeout` with `what` and a dump of every span received.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before looking, so an export landing in between
            // still wakes this wait.
            let mut arrived = pin!(self.shared.arrived.notified());
            arrived.as_mut().enable();
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let spans = self.spans();
                if pred(&spans) {
                    return spans;
                }
                panic!(
                    "OTLP collector: {what}: not seen within {timeout:?}; {} span(s) received \
                     in {} export(s):\n{}",
                    spans.len(),
                    self.export_headers().len(),
                    describe(&spans)
                );
            }
        }
    }

    /// The request headers (gRPC metadata included) of every export
    /// recorded, in arrival order, names in lower case.
    pub fn export_headers(&self) -> Vec<Vec<(String, String)>> {
        self.shared.headers.lock().expect("headers lock").clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Accepts connections on `listener`, each served by `conn` in a task of a
/// set owned by the accept task: aborting it closes every connection too.
fn serve<F, Fut>(listener: TcpListener, conn: F) -> JoinHandle<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((tcp, _)) = accepted {
                        let _ = tcp.set_nodelay(true);
                        connections.spawn(conn(tcp));
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

/// The gRPC `TraceService`.
struct GrpcReceiver(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let (metadata, _, request) = request.into_parts();
        self.0.record("grpc", &metadata.into_headers(), request);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The OTLP/HTTP protobuf receiver.
async fn handle_http(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() != "/v1/traces" {
        return Ok(plain(StatusCode::NOT_FOUND, "only /v1/traces here"));
    }
    if req.method() != Method::POST {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        response
            .headers_mut()
            .insert(ALLOW, http::HeaderValue::from_static("POST"));
        return Ok(response);
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(PROTOBUF) {
        let message = format!("content-type {content_type:?}: only {PROTOBUF} is supported");
        return Ok(plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, &message));
    }
    if let Some(encoding) = req.headers().get(CONTENT_ENCODING) {
        if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") {
            let message = format!("content-encoding {encoding:?}: not supported");
            return Ok(plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, &message));
        }
    }
    let (parts, incoming) = req.into_parts();
    let bytes = match Limited::new(incoming, MAX_EXPORT_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE, "export too large"));
        }
        Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, &format!("body: {e}"))),
    };
    let request = match ExportTraceServiceRequest::decode(bytes) {
        Ok(request) => request,
        Err(e) => {
            let message = format!("not an ExportTraceServiceRequest: {e}");
            return Ok(plain(StatusCode::BAD_REQUEST, &message));
        }
    };
    shared.record("http", &parts.headers, request);
    let encoded = ExportTraceServiceResponse::default().encode_to_vec();
    let mut response = Response::new(body::full(encoded));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(PROTOBUF));
    Ok(response)
}

/// A plain-text answer with `status`.
fn plain(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(body::full(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response
}

/// Flattens an export into spans, each carrying its resource.
fn decode(protocol: &'static str, request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    service: service.clone(),
                    resource: resource.clone(),
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    kind: kind_name(span.kind),
                    attributes: attributes(&span.attributes),
                    status_code: status_name(status.code),
                    status_message: status.message,
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    protocol,
                });
            }
        }
    }
    out
}

fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Unspecified) => "unspecified",
        Ok(SpanKind::Internal) => "internal",
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        Err(_) => "unknown",
    }
}

fn status_name(code: i32) -> &'static str {
    match SpanStatusCode::try_from(code) {
        Ok(SpanStatusCode::Unset) => "unset",
        Ok(SpanStatusCode::Ok) => "ok",
        Ok(SpanStatusCode::Error) => "error",
        Err(_) => "unknown",
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), stringify(kv.value.as_ref())))
        .collect()
}

/// A value as text: see [`ReceivedSpan::attributes`].
fn stringify(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex::encode(b),
        Some(other @ (any_value::Value::ArrayValue(_) | any_value::Value::KvlistValue(_))) => {
            to_json(Some(other)).to_string()
        }
        Some(any_value::Value::StringValueStrindex(i)) => format!("strindex:{i}"),
        None => String::new(),
    }
}

fn to_json(value: Option<&any_value::Value>) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Some(any_value::Value::StringValue(s)) => J::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => J::Bool(*b),
        Some(any_value::Value::IntValue(i)) => J::from(*i),
        Some(any_value::Value::DoubleValue(d)) => J::from(*d),
        Some(any_value::Value::BytesValue(b)) => J::String(hex::encode(b)),
        Some(any_value::Value::ArrayValue(a)) => {
            J::Array(a.values.iter().map(|v| to_json(v.value.as_ref())).collect())
        }
        Some(any_value::Value::KvlistValue(kvs)) => J::Object(
            kvs.values
                .iter()
                .map(|kv| {
                    let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
                    (kv.key.clone(), to_json(value))
                })
                .collect(),
        ),
        Some(any_value::Value::StringValueStrindex(i)) => J::String(format!("strindex:{i}")),
        None => J::Null,
    }
}

/// A collector that hangs: accepts connections and holds them open without
/// ever reading or answering; stops (closing them all) when dropped.
pub struct Blackhole {
    connections: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Blackhole {
    /// How many connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A TCP listener on 127.0.0.1:0 that accepts connections and never
/// answers: a collector that hangs. Returns its address and the guard that
/// stops it.
pub async fn blackhole() -> (SocketAddr, Blackhole) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind blackhole");
    let addr = listener.local_addr().expect("blackhole address");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let accept = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (
        addr,
        Blackhole {
            connections,
            accept,
        },
    )
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const PATIENCE: Duration = Duration::from_secs(10);

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn text(s: &str) -> any_value::Value {
        any_value::Value::StringValue(s.to_string())
    }

    /// One export of one span from `service`.
    fn export(service: &str, span: Span) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", text(service)),
                        kv("service.instance.id", any_value::Value::IntValue(7)),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// A server span with a parent and an error status.
    fn grpc_span() -> Span {
        Span {
            trace_id: (1..=16).collect(),
            span_id: vec![0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8],
            parent_span_id: vec![0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8],
            name: "GET /items".to_string(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_001_500,
            attributes: vec![
                kv("http.request.method", text("GET")),
                kv("http.response.status_code", any_value::Value::IntValue(502)),
                kv("tunnel.cached", any_value::Value::BoolValue(false)),
                kv("ratio", any_value::Value::DoubleValue(0.5)),
                kv("raw", any_value::Value::BytesValue(vec![0xde, 0xad])),
                kv(
                    "list",
                    any_value::Value::ArrayValue(
                        opentelemetry_proto::tonic::common::v1::ArrayValue {
                            values: vec![
                                AnyValue {
                                    value: Some(text("a")),
                                },
                                AnyValue {
                                    value: Some(any_value::Value::IntValue(2)),
                                },
                            ],
                        },
                    ),
                ),
            ],
            status: Some(Status {
                message: "upstream failed".to_string(),
                code: SpanStatusCode::Error as i32,
            }),
            ..Default::default()
        }
    }

    /// A root client span with an ok status.
    fn http_span() -> Span {
        Span {
            trace_id: vec![0xff; 16],
            span_id: vec![0x0c; 8],
            parent_span_id: Vec::new(),
            name: "agent connect".to_string(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: 42,
            end_time_unix_nano: 43,
            attributes: vec![kv("tunnel.id", text("t-1"))],
            status: Some(Status {
                message: String::new(),
                code: SpanStatusCode::Ok as i32,
            }),
            ..Default::default()
        }
    }

    /// One HTTP/1.1 POST: status and body.
    async fn post(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        payload: Vec<u8>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut request = Request::post(path).header("host", addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body::full(payload)).expect("request");
        let response = send.send_request(request).await.expect("response");
        let (parts, incoming) = response.into_parts();
        let bytes = incoming.collect().await.expect("body").to_bytes();
        (parts.status, parts.headers, bytes)
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn receives_spans_over_grpc_and_http() {
        let collector = Collector::start().await;

        // gRPC, through the generated tonic client, with an export header.
        let mut client = TraceServiceClient::connect(collector.grpc_endpoint())
            .await
            .expect("gRPC connect");
        let mut request = tonic::Request::new(export("gateway", grpc_span()));
        request
            .metadata_mut()
            .insert("x-api-key", "grpc-secret".parse().expect("metadata"));
        client.export(request).await.expect("gRPC export");

        let spans = collector
            .wait_for("the gRPC span", PATIENCE, |s| s.len() == 1)
            .await;
        let s = &spans[0];
        assert_eq!(s.protocol, "grpc");
        assert_eq!(s.service, "gateway");
        assert_eq!(
            s.resource.get("service.name").map(String::as_str),
            Some("gateway")
        );
        assert_eq!(
            s.resource.get("service.instance.id").map(String::as_str),
            Some("7")
        );
        assert_eq!(s.resource.len(), 2);
        assert_eq!(s.name, "GET /items");
        assert_eq!(s.trace_id, "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(s.span_id, "a1a2a3a4a5a6a7a8");
        assert_eq!(s.parent_span_id, "b1b2b3b4b5b6b7b8");
        assert!(!s.is_root());
        assert_eq!(s.kind, "server");
        assert_eq!(s.attr("http.request.method"), Some("GET"));
        assert_eq!(s.attr("http.response.status_code"), Some("502"));
        assert_eq!(s.attr("tunnel.cached"), Some("false"));
        assert_eq!(s.attr("ratio"), Some("0.5"));
        assert_eq!(s.attr("raw"), Some("dead"));
        assert_eq!(s.attr("list"), Some(r#"["a",2]"#));
        assert_eq!(s.attributes.len(), 6);
        assert_eq!(s.status_code, "error");
        assert_eq!(s.status_message, "upstream failed");
        assert_eq!(s.start_unix_nanos, 1_700_000_000_000_000_000);
        assert_eq!(s.end_unix_nanos, 1_700_000_000_000_001_500);

        // HTTP/protobuf, through hyper, with an export header.
        let payload = export("agent", http_span()).encode_to_vec();
        let (status, headers, answer) = post(
            collector.http_addr(),
            "/v1/traces",
            &[("content-type", PROTOBUF), ("x-api-key", "http-secret")],
            payload.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get(CONTENT_TYPE).expect("content-type"), PROTOBUF);
        ExportTraceServiceResponse::decode(answer).expect("an encoded response");

        let spans = collector
            .wait_for("the HTTP span", PATIENCE, |s| {
                s.iter().any(|s| s.protocol == "http")
            })
            .await;
        assert_eq!(spans.len(), 2);
        let s = &spans[1];
        assert_eq!(s.protocol, "http");
        assert_eq!(s.service, "agent");
        assert_eq!(s.resource.len(), 2);
        assert_eq!(s.name, "agent connect");
        assert_eq!(s.trace_id, "ffffffffffffffffffffffffffffffff");
        assert_eq!(s.span_id, "0c0c0c0c0c0c0c0c");
        assert_eq!(s.parent_span_id, "");
        assert!(s.is_root());
        assert_eq!(s.kind, "client");
        assert_eq!(s.attributes.len(), 1);
        assert_eq!(s.attr("tunnel.id"), Some("t-1"));
        assert_eq!(s.status_code, "ok");
        assert_eq!(s.status_message, "");
        assert_eq!(s.start_unix_nanos, 42);
        assert_eq!(s.end_unix_nanos, 43);

        // The export headers of both, in order.
        let exports = collector.export_headers();
        assert_eq!(exports.len(), 2);
        assert_eq!(header(&exports[0], "x-api-key"), Some("grpc-secret"));
        assert_eq!(
            header(&exports[0], "content-type"),
            Some("application/grpc")
        );
        assert_eq!(header(&exports[1], "x-api-key"), Some("http-secret"));
        assert_eq!(header(&exports[1], "content-type"), Some(PROTOBUF));

        // What the HTTP receiver refuses records nothing.
        let addr = collector.http_addr();
        let protobuf = [("content-type", PROTOBUF)];
        let (status, ..) = post(addr, "/v1/metrics", &protobuf, payload.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let json = [("content-type", "application/json")];
        let (status, ..) = post(addr, "/v1/traces", &json, payload.clone()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, ..) = post(addr, "/v1/traces", &protobuf, vec![0xff, 0xff, 0xff]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(collector.spans().len(), 2);
        assert_eq!(collector.export_headers().len(), 2);

        // A wait that cannot succeed panics with the dump.
        let waited = tokio::spawn(async move {
            collector
                .wait_for("a span that never comes", Duration::from_millis(50), |s| {
                    s.len() > 2
                })
                .await
        })
        .await;
        let panic = waited.expect_err("the wait times out").into_panic();
        let message = panic.downcast_ref::<String>().expect("a formatted panic");
        assert!(message.contains("a span that never comes"), "{message}");
        assert!(message.contains("span=a1a2a3a4a5a6a7a8"), "{message}");
        assert!(message.contains("parent=b1b2b3b4b5b6b7b8"), "{message}");
        assert!(
            message.contains("agent \"agent connect\" client"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn blackhole_holds_connections_until_dropped() {
        let (addr, hole) = blackhole().await;
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"POST /v1/traces HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 16];
        let silent = tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await;
        assert!(silent.is_err(), "the blackhole answered: {silent:?}");
        assert_eq!(hole.connections(), 1);
        drop(hole);
        let closed = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
            .await
            .expect("closed once dropped");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }
}
