//! The admin listeners of both processes: `/metrics` parsed from the
//! Prometheus text format, `/healthz` and `/readyz`.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};

/// One GET on an admin listener: status and body.
pub async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("connect to admin listener {admin}: {e}"));
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("admin handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", admin.to_string())
        .body(Empty::new())
        .expect("request");
    let resp = tokio::time::timeout(crate::PATIENCE, send.send_request(req))
        .await
        .expect("admin listener answered in time")
        .expect("admin response");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("admin body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// The sum of every sample named `name` whose labels include all of
    /// `labels` (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// Scrapes `/metrics` and parses it (OpenMetrics / Prometheus text).
pub async fn metrics(admin: SocketAddr) -> Metrics {
    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {text}");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| parse_line(l).unwrap_or_else(|| panic!("unparseable metrics line {l:?}")))
        .collect();
    Metrics { samples, text }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..=close], line[close + 1..].trim())
        }
        None => {
            let (n, v) = line.split_once(' ')?;
            (n, v.trim())
        }
    };
    // A timestamp or exemplar may follow the value.
    let value = value.split_whitespace().next()?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            let mut rest = inner;
            while !rest.is_empty() {
                let (k, after) = rest.split_once("=\"")?;
                let end = after.find('"')?;
                labels.push((
                    k.trim_start_matches(',').to_string(),
                    after[..end].to_string(),
                ));
                rest = after[end + 1..].trim_start_matches(',');
            }
            (name.to_string(), labels)
        }
        None => (head.to_string(), Vec::new()),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}
