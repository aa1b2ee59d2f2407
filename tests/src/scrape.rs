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
    /// Parses a page of the text exposition format.
    pub fn parse(text: String) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| parse_line(l).unwrap_or_else(|| panic!("unparseable metrics line {l:?}")))
            .collect();
        Metrics { samples, text }
    }

    /// The sum of every sample named `name` whose labels include all of
    /// `labels` (0 when there is none: a labelled family shows no series
    /// until its first one, so 0 cannot tell "none yet" from a misspelt
    /// name; assert a 0 with [`Metrics::gauge`] or next to a non-zero
    /// sibling).
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

    /// The value of an unlabelled gauge (or counter), which the page
    /// always carries.
    ///
    /// # Panics
    ///
    /// When the page has no such sample: a misspelt or unregistered name
    /// must fail, not read as 0.
    pub fn gauge(&self, name: &str) -> f64 {
        let mut found = self.samples.iter().filter(|s| s.name == name);
        let sample = found.next().unwrap_or_else(|| {
            panic!(
                "no sample {name} on the page (misspelt, or not registered):\n{}",
                self.text
            )
        });
        assert!(
            sample.labels.is_empty() && found.next().is_none(),
            "{name} is a labelled family, not one value: use sum"
        );
        sample.value
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
    Metrics::parse(text)
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

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP x_requests Requests.\n# TYPE x_requests counter\n\
        x_requests_total{route=\"a\"} 2\nx_requests_total{route=\"b\"} 3\n\
        # HELP x_up Connected.\n# TYPE x_up gauge\nx_up 0\n# EOF\n";

    #[test]
    fn sums_add_matching_series_and_gauges_must_exist() {
        let m = Metrics::parse(PAGE.to_string());
        assert_eq!(m.sum("x_requests_total", &[]), 5.0);
        assert_eq!(m.sum("x_requests_total", &[("route", "b")]), 3.0);
        assert_eq!(m.gauge("x_up"), 0.0);
        let typo = std::panic::catch_unwind(|| m.gauge("x_upp"));
        assert!(typo.is_err(), "a misspelt gauge read as a number");
        let family = std::panic::catch_unwind(|| m.gauge("x_requests_total"));
        assert!(family.is_err(), "a labelled family read as one value");
    }
}
