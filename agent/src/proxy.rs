//! The way out through an HTTP forward proxy.
//!
//! Which proxy: `gateway.proxy` in the config when set (`"none"` means
//! direct), else the first non-empty of `https_proxy`, `HTTPS_PROXY`,
//! `all_proxy`, `ALL_PROXY` (curl's order; the agent speaks `wss://`, an
//! HTTPS scheme) unless `no_proxy`/`NO_PROXY` names the gateway's host by
//! curl's rules ([`no_proxy_matches`]).
//!
//! How: one `CONNECT host:port` request ([`Proxy::connect`]); after a 2xx
//! answer the TCP connection is a byte pipe to the gateway, and TLS (host
//! name checked against the gateway's name, not the proxy's) and the key
//! proof run inside it, end to end. The proxy sees the target address and
//! ciphertext, nothing else.
//!
//! Credentials (`http://user:password@proxy:3128`, percent-encoded as in any
//! URL) are sent as `Proxy-Authorization: Basic`; the proxy is only ever
//! shown as `http://host:port` ([`Proxy`]'s `Display` and `Debug`,
//! [`ProxyText`]'s `Debug`).

use std::fmt;
use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

/// The largest proxy response head read; a CONNECT answer is a status line
/// and a few headers, so anything bigger is not a proxy we can work with.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Header lines accepted in the proxy's answer (parsing needs a fixed array).
const MAX_HEADERS: usize = 64;

/// `gateway.proxy` as written: kept as text for the config loader, shown
/// without its credentials.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ProxyText(pub String);

impl fmt::Debug for ProxyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

/// `text` with any `user:password@` replaced by `***@`.
pub fn redact(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), text),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => text.to_string(),
    }
}

/// A proxy to dial through.
#[derive(Clone)]
pub struct Proxy {
    host: String,
    port: u16,
    /// `base64(user:password)`, the `Proxy-Authorization: Basic` value.
    auth: Option<Zeroizing<String>>,
    /// Where the setting came from: `gateway.proxy` or an environment variable.
    pub source: String,
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", authority(&self.host, self.port))
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.to_string())
            .field("auth", &self.auth.as_ref().map(|_| "MASKED"))
            .field("source", &self.source)
            .finish()
    }
}

/// curl's default proxy port when the URL names none.
const DEFAULT_PORT: u16 = 1080;

/// `host:port`, IPv6 literals in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Proxy {
    /// Parses `http://[user[:password]@]host[:port][/]`; a value without a
    /// scheme is taken as `http://` (as curl does). Other schemes are
    /// refused. The reason never repeats the input (it may hold a password).
    pub fn parse(text: &str, source: &str) -> Result<Proxy, String> {
        let text = text.trim();
        let full = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        let (scheme, _) = full.split_once("://").expect("has a scheme");
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(format!(
                "proxy scheme `{scheme}` is not supported: only http:// (a CONNECT proxy)"
            ));
        }
        let uri: http::Uri = full
            .parse()
            .map_err(|_| "not a URL of the form http://[user:password@]host:port".to_string())?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("a proxy URL has no path or query: http://host:port".into());
        }
        let authority = uri.authority().ok_or("the proxy URL has no host")?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err("the proxy URL has no host".into());
        }
        let port = authority.port_u16().unwrap_or(DEFAULT_PORT);
        let auth = match authority.as_str().rsplit_once('@') {
            None => None,
            Some((userinfo, _)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decode = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .map(|c| Zeroizing::new(c.into_owned()))
                        .map_err(|_| "proxy credentials are not UTF-8 once percent-decoded")
                };
                let (user, password) = (decode(user)?, decode(password)?);
                let plain = Zeroizing::new(format!("{}:{}", *user, *password));
                Some(Zeroizing::new(STANDARD.encode(plain.as_bytes())))
            }
        };
        Ok(Proxy {
            host,
            port,
            auth,
            source: source.to_string(),
        })
    }

    /// Whether the proxy URL carries credentials.
    pub fn has_credentials(&self) -> bool {
        self.auth.is_some()
    }

    /// Connects to the proxy and asks it for a tunnel to `host:port`;
    /// returns the connection once the proxy answered 2xx, with nothing of
    /// the tunnel read yet. The caller bounds the time.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
        let proxy = self.to_string();
        let target = authority(host, port);
        let mut tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ProxyError::Connect {
                proxy: proxy.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let io = |source| ProxyError::Io {
            proxy: proxy.clone(),
            source,
        };
        // Sized up front so that adding the credentials never reallocates
        // (a reallocation would leave an unzeroed copy behind).
        let auth_len = self.auth.as_ref().map_or(0, |a| a.len());
        let mut head = Zeroizing::new(String::with_capacity(2 * target.len() + auth_len + 160));
        head.push_str(&format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: tunnel-agent/{}\r\n",
            env!("CARGO_PKG_VERSION")
        ));
        if let Some(auth) = &self.auth {
            head.push_str("Proxy-Authorization: Basic ");
            head.push_str(auth);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes()).await.map_err(io)?;

        let mut buf = Vec::with_capacity(1024);
        loop {
            let mut chunk = [0u8; 1024];
            let room = MAX_RESPONSE_HEAD - buf.len();
            if room == 0 {
                return Err(ProxyError::Malformed {
                    proxy,
                    reason: format!("response head larger than {MAX_RESPONSE_HEAD} bytes"),
                });
            }
            let want = room.min(chunk.len());
            let n = tcp.read(&mut chunk[..want]).await.map_err(io)?;
            if n == 0 {
                return Err(ProxyError::Malformed {
                    proxy,
                    reason: "closed the connection before answering CONNECT".into(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            let len = match resp.parse(&buf) {
                Ok(httparse::Status::Partial) => continue,
                Ok(httparse::Status::Complete(len)) => len,
                Err(e) => {
                    return Err(ProxyError::Malformed {
                        proxy,
                        reason: format!("unparsable answer to CONNECT: {e}"),
                    })
                }
            };
            let code = resp.code.unwrap_or(0);
            let status_line = format!(
                "HTTP/1.{} {code} {}",
                resp.version.unwrap_or(1),
                printable(resp.reason.unwrap_or(""))
            );
            if !(200..300).contains(&code) {
                return Err(ProxyError::Refused {
                    proxy,
                    target,
                    code,
                    status_line: status_line.trim_end().to_string(),
                    had_credentials: self.auth.is_some(),
                });
            }
            // The gateway speaks only after our ClientHello: a byte beyond
            // the head is not from it.
            if len != buf.len() {
                return Err(ProxyError::Malformed {
                    proxy,
                    reason: "sent data after its 2xx answer, before the tunnel was used".into(),
                });
            }
            return Ok(tcp);
        }
    }
}

/// The proxy's reason phrase made safe to log: printable ASCII, at most 100 characters.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(100)
        .collect()
}

/// Why the way through the proxy did not open. The proxy is always shown
/// without credentials.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot connect to the proxy {proxy}: {source}")]
    Connect {
        proxy: String,
        source: std::io::Error,
    },
    #[error("proxy {proxy}: {source}")]
    Io {
        proxy: String,
        source: std::io::Error,
    },
    #[error("proxy {proxy}: {reason}")]
    Malformed { proxy: String, reason: String },
    #[error("proxy {proxy} refused CONNECT {target}: `{status_line}`{}", refusal_hint(*.code, *.had_credentials))]
    Refused {
        proxy: String,
        target: String,
        code: u16,
        status_line: String,
        had_credentials: bool,
    },
    #[error("proxy setting: {0}")]
    Config(String),
}

fn refusal_hint(code: u16, had_credentials: bool) -> &'static str {
    match (code, had_credentials) {
        (407, false) => " (proxy requires authentication: put user:password in the proxy URL)",
        (407, true) => " (proxy refused the credentials)",
        _ => "",
    }
}

impl ProxyError {
    /// A short label for metrics: `proxy_auth` for a 407, else `proxy`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Refused { code: 407, .. } => "proxy_auth",
            _ => "proxy",
        }
    }
}

/// The environment variables read for the proxy, in curl's order for an
/// HTTPS URL.
pub const PROXY_VARS: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
/// The environment variables read for the exceptions, in curl's order.
pub const NO_PROXY_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// The value of `gateway.proxy` that turns proxies off, environment included.
pub const NONE: &str = "none";

/// Chooses the proxy for `gateway_host`: `configured` (`gateway.proxy`)
/// when set, else the environment read through `env`. `Ok(None)`: dial
/// directly. The error names the setting at fault and never its value.
pub fn choose(
    configured: Option<&str>,
    gateway_host: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, (String, String)> {
    if let Some(text) = configured {
        if text.trim().eq_ignore_ascii_case(NONE) {
            return Ok(None);
        }
        return Proxy::parse(text, "gateway.proxy")
            .map(Some)
            .map_err(|e| ("gateway.proxy".to_string(), e));
    }
    let nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let Some((var, text)) = PROXY_VARS
        .iter()
        .find_map(|v| nonempty(v).map(|t| (v.to_string(), t)))
    else {
        return Ok(None);
    };
    if let Some(list) = NO_PROXY_VARS.iter().find_map(|v| nonempty(v)) {
        if no_proxy_matches(&list, gateway_host) {
            return Ok(None);
        }
    }
    Proxy::parse(&text, &var)
        .map(Some)
        .map_err(|e| (format!("environment variable {var}"), e))
}

/// Whether a `NO_PROXY` list names `host`, by curl's documented rules: a
/// list that is just `*` matches every host; otherwise entries are separated
/// by commas (or white space); a name matches itself and every name below
/// it (`example.com` and `.example.com` both match `example.com` and
/// `www.example.com`, not `notexample.com`), case-insensitively and
/// ignoring a trailing dot; an IP address entry matches that address, and
/// one with a prefix length (`10.0.0.0/8`, `fd00::/8`) the addresses in
/// that range, when the host is written as an address. Names are not
/// resolved.
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let list = list.trim();
    if list == "*" {
        return true;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return false;
    }
    let host_ip: Option<IpAddr> = host.parse().ok();
    list.split(|c: char| c == ',' || c.is_whitespace())
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| match host_ip {
            Some(ip) => {
                let e = entry.trim_start_matches('[').trim_end_matches(']');
                if let Ok(net) = e.parse::<ipnet::IpNet>() {
                    net.contains(&ip)
                } else {
                    e.parse::<IpAddr>().is_ok_and(|a| a == ip)
                }
            }
            None => {
                let e = entry.strip_prefix('.').unwrap_or(entry);
                let e = e.strip_suffix('.').unwrap_or(e);
                if e.is_empty() {
                    return false;
                }
                let (h, e) = (host.as_bytes(), e.as_bytes());
                h.eq_ignore_ascii_case(e)
                    || (h.len() > e.len()
                        && h[h.len() - e.len()..].eq_ignore_ascii_case(e)
                        && h[h.len() - e.len() - 1] == b'.')
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_follows_curl() {
        let yes = [
            ("*", "anything.example"),
            (" * ", "10.1.2.3"),
            ("example.com", "example.com"),
            ("example.com", "www.example.com"),
            ("example.com", "a.b.EXAMPLE.com"),
            (".example.com", "example.com"),
            (".example.com", "www.example.com"),
            ("example.com.", "www.example.com."),
            ("other.org, example.com", "gw.example.com"),
            ("other.org example.com", "gw.example.com"),
            ("localhost", "localhost"),
            ("10.0.0.5", "10.0.0.5"),
            ("10.0.0.0/8", "10.200.3.4"),
            ("::1", "[::1]"),
            ("[::1]", "::1"),
            ("fd00::/8", "fd12::1"),
        ];
        for (list, host) in yes {
            assert!(
                no_proxy_matches(list, host),
                "{list:?} should match {host:?}"
            );
        }
        let no = [
            ("", "example.com"),
            ("example.com", "notexample.com"),
            ("www.example.com", "example.com"),
            ("example.com", "example.com.evil"),
            ("a.com,*", "b.com"),
            ("10.0.0.0/8", "11.0.0.1"),
            ("10.0.0.0/8", "ten.example"),
            ("10.0.0.5", "10.0.0.50"),
            (".", "example.com"),
            ("::1", "::2"),
        ];
        for (list, host) in no {
            assert!(
                !no_proxy_matches(list, host),
                "{list:?} should not match {host:?}"
            );
        }
    }

    #[test]
    fn proxy_urls_parse_with_their_credentials_kept_secret() {
        let p = Proxy::parse("http://alice:s%40cr%3At@proxy.corp:3128/", "gateway.proxy").unwrap();
        assert_eq!(p.to_string(), "http://proxy.corp:3128");
        assert_eq!(
            p.auth.as_deref().map(|s| s.as_str()),
            Some(STANDARD.encode("alice:s@cr:t").as_str())
        );
        let dbg = format!("{p:?}");
        assert!(
            !dbg.contains("alice") && !dbg.contains("s%40") && dbg.contains("MASKED"),
            "{dbg}"
        );

        let p = Proxy::parse("proxy.corp:8080", "HTTPS_PROXY").unwrap();
        assert_eq!(
            (p.to_string().as_str(), p.has_credentials()),
            ("http://proxy.corp:8080", false)
        );
        assert_eq!(
            Proxy::parse("http://proxy.corp", "x").unwrap().port,
            DEFAULT_PORT
        );
        assert_eq!(
            Proxy::parse("HTTP://[::1]:3128", "x").unwrap().to_string(),
            "http://[::1]:3128"
        );
        let user_only = Proxy::parse("http://bob@p:1", "x").unwrap();
        assert_eq!(
            user_only.auth.as_deref().map(|s| s.as_str()),
            Some(STANDARD.encode("bob:").as_str())
        );

        for (bad, says) in [
            ("socks5://p:1080", "socks5"),
            ("https://p:443", "only http://"),
            ("http://p:3128/path", "no path"),
            ("http://", "not a URL"),
            ("http://u:%ff@p:1", "UTF-8"),
        ] {
            let e = Proxy::parse(bad, "x").unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("%ff"), "the reason repeats the input: {e}");
        }
        assert_eq!(
            format!("{:?}", ProxyText("http://u:pw@p:1".into())),
            "\"http://***@p:1\""
        );
        assert_eq!(redact("p:3128"), "p:3128");
    }

    #[test]
    fn the_config_wins_then_the_environment_unless_no_proxy_names_the_gateway() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let pick = |cfg: Option<&str>, host, e| {
            choose(cfg, host, e)
                .map(|p| p.map(|p| (p.to_string(), p.source)))
                .map_err(|(field, _)| field)
        };
        let both: &[(&str, &str)] = &[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:1"),
        ];
        assert_eq!(
            pick(None, "gw.example", env(both)),
            Ok(Some(("http://lower:1".into(), "https_proxy".into())))
        );
        assert_eq!(
            pick(Some("http://cfg:2"), "gw.example", env(both)),
            Ok(Some(("http://cfg:2".into(), "gateway.proxy".into())))
        );
        assert_eq!(pick(Some("none"), "gw.example", env(both)), Ok(None));
        assert_eq!(pick(None, "gw.example", env(&[])), Ok(None));
        let all: &[(&str, &str)] = &[("https_proxy", ""), ("ALL_PROXY", "all:3")];
        assert_eq!(
            pick(None, "gw.example", env(all)),
            Ok(Some(("http://all:3".into(), "ALL_PROXY".into())))
        );
        let bypass: &[(&str, &str)] = &[
            ("HTTPS_PROXY", "http://p:1"),
            ("NO_PROXY", "localhost,.example"),
        ];
        assert_eq!(pick(None, "gw.example", env(bypass)), Ok(None));
        assert!(pick(None, "gw.other", env(bypass)).unwrap().is_some());
        let bad: &[(&str, &str)] = &[("HTTPS_PROXY", "socks5://p:1")];
        assert_eq!(
            pick(None, "gw.example", env(bad)),
            Err("environment variable HTTPS_PROXY".into())
        );
        assert_eq!(
            pick(Some("ftp://x"), "gw", env(&[])),
            Err("gateway.proxy".into())
        );
    }

    #[test]
    fn a_refusal_names_the_status_line_and_says_what_407_means() {
        let refused = |code, had_credentials| {
            ProxyError::Refused {
                proxy: "http://p:3128".into(),
                target: "gw:443".into(),
                code,
                status_line: format!("HTTP/1.1 {code} Whatever"),
                had_credentials,
            }
            .to_string()
        };
        assert!(refused(407, false).contains("proxy requires authentication"));
        assert!(refused(407, true).contains("proxy refused the credentials"));
        let e = refused(403, false);
        assert!(
            e.contains("`HTTP/1.1 403 Whatever`") && e.contains("http://p:3128"),
            "{e}"
        );
    }

    /// A one-connection proxy that reads the request head, answers `answer`
    /// in two writes (a split read for the agent) and closes; returns its
    /// address and what it received.
    async fn scripted(answer: Vec<u8>) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 256];
                let n = tcp.read(&mut b).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&b[..n]);
            }
            let (a, b) = answer.split_at(answer.len().min(7));
            let _ = tcp.write_all(a).await;
            let _ = tcp.flush().await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let _ = tcp.write_all(b).await;
            head
        });
        (addr, task)
    }

    fn proxy_at(addr: std::net::SocketAddr, userinfo: &str) -> Proxy {
        Proxy::parse(&format!("http://{userinfo}{addr}"), "test").unwrap()
    }

    #[tokio::test]
    async fn connect_sends_one_request_and_reads_a_split_answer() {
        let (addr, seen) =
            scripted(b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n".to_vec()).await;
        let tcp = proxy_at(addr, "u:p%40ss@")
            .connect("gw.example", 8443)
            .await
            .unwrap();
        drop(tcp);
        let head = String::from_utf8(seen.await.unwrap()).unwrap();
        assert!(
            head.starts_with("CONNECT gw.example:8443 HTTP/1.1\r\nHost: gw.example:8443\r\n"),
            "{head}"
        );
        let auth = format!(
            "Proxy-Authorization: Basic {}\r\n",
            STANDARD.encode("u:p@ss")
        );
        assert!(head.contains(&auth), "{head}");
    }

    #[tokio::test]
    async fn connect_refuses_oversized_heads_early_data_and_garbage() {
        let mut huge = b"HTTP/1.1 200 OK\r\nX-Padding: ".to_vec();
        huge.resize(MAX_RESPONSE_HEAD + 100, b'a');
        huge.extend_from_slice(b"\r\n\r\n");
        for (answer, says) in [
            (huge, "larger than 8192 bytes"),
            (
                b"HTTP/1.1 200 OK\r\n\r\n\x16\x03".to_vec(),
                "sent data after its 2xx answer",
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), "unparsable answer"),
            (
                b"HTTP/1.1 200".to_vec(),
                "closed the connection before answering",
            ),
        ] {
            let (addr, _seen) = scripted(answer).await;
            let proxy = proxy_at(addr, "");
            let e = proxy.connect("gw", 1).await.unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains(&proxy.to_string()),
                "{says}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn a_407_says_whether_credentials_were_sent_and_never_shows_them() {
        for (userinfo, says) in [
            ("", "proxy requires authentication"),
            ("bob:hunter2@", "proxy refused the credentials"),
        ] {
            let (addr, _seen) = scripted(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n"
                    .to_vec(),
            )
            .await;
            let err = proxy_at(addr, userinfo).connect("gw", 1).await.unwrap_err();
            assert_eq!(err.kind(), "proxy_auth");
            let e = err.to_string();
            assert!(
                e.contains("`HTTP/1.1 407 Proxy Authentication Required`") && e.contains(says),
                "{e}"
            );
            assert!(!e.contains("hunter2") && !e.contains("bob"), "{e}");
        }
    }
}
