//! One judgement of what a request names, made once and used by routing,
//! the host's checks and the plugins alike: the path ([`judge_path`]) and
//! the host ([`judge_host`]).
//!
//! Both exist because the gateway and the service behind the agent must
//! not read one request two ways. A service on Tomcat or Jetty (Jira,
//! Confluence) strips `;params` from segments and resolves `..`, so
//! `/upload/..;/admin/x` is `/admin/x` there while a naive prefix check
//! sees `/upload/`. A framework that reads the first or last value of
//! `X-Forwarded-Host` builds links to whatever a `Host` with a comma or
//! userinfo smuggled in. So anything that two readers could take
//! differently is refused (400) here, and what passes is handed on in one
//! normalised form. The service still receives the bytes the caller sent:
//! OAuth 1.0a signatures cover them.

use std::fmt;

/// What a route lets through that the strict default refuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// `;params` inside segments (`/a;jsessionid=1/b`): accepted, and
    /// removed from the judged path as a Servlet container removes them.
    pub allow_params: bool,
    /// `%2F` inside a segment (`/projects/group%2Fname`, as GitLab's API
    /// names projects). The decoded segment's parts still may not be `.`,
    /// `..` or empty, so a service that decodes before resolving cannot be
    /// walked out of the prefix either.
    pub allow_encoded_slash: bool,
}

/// A path the gateway accepted, in its normalised form: percent-encoded
/// unreserved characters decoded (`%61` is `a`), `;params` removed, every
/// other byte as sent. No segment of it is `.` or `..`, and it has no
/// empty segment but possibly the last (`/a/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgedPath {
    /// The normalised path (no query).
    pub path: String,
    /// Whether the caller's path had `;params` (refused unless allowed).
    pub had_params: bool,
}

/// Why a path is refused. The message names the rule, never echoes input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    NotAscii,
    Backslash,
    EmptySegment,
    DotSegment,
    Params,
    BadPercent,
    EncodedSeparator,
    EncodedControl,
    NotUtf8,
    TooLong,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path must start with '/'",
            PathError::NotAscii => "the path has bytes outside ASCII",
            PathError::Backslash => "backslash in the path",
            PathError::EmptySegment => "empty path segment ('//')",
            PathError::DotSegment => "dot segments in the path ('.' or '..' in any spelling)",
            PathError::Params => {
                "';' parameters in the path (this route does not allow path parameters)"
            }
            PathError::BadPercent => "invalid percent-encoding in the path",
            PathError::EncodedSeparator => {
                "encoded '/' or '\\' in the path (this route does not allow encoded slashes)"
            }
            PathError::EncodedControl => "encoded NUL or control character in the path",
            PathError::NotUtf8 => "percent-encoded bytes in the path are not UTF-8",
            PathError::TooLong => "the path is too long",
        })
    }
}

impl std::error::Error for PathError {}

/// Longest path judged; longer ones are refused (the header limit bounds
/// the request line anyway, this bounds the work).
pub const MAX_PATH_BYTES: usize = 8192;

/// Judges the path of an origin-form target (query already split off).
///
/// Refused, whatever the route: a path not starting with `/`, raw bytes
/// outside printable ASCII, `\`, an empty segment anywhere but last,
/// a segment that is `.` or `..` after removing `;params` and decoding,
/// invalid percent-encoding, encoded `/`, `\`, NUL or control characters,
/// and encoded bytes that are not UTF-8 (overlong forms included).
/// Refused unless `opts.allow_params`: `;` in any segment.
pub fn judge_path(raw: &str, opts: PathOptions) -> Result<JudgedPath, PathError> {
    let bytes = raw.as_bytes();
    if bytes.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !bytes.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err(PathError::NotAscii);
    }
    if bytes.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    let mut out = String::with_capacity(raw.len());
    let mut had_params = false;
    let segments: Vec<&str> = raw[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        let (name, params) = match segment.split_once(';') {
            Some((name, params)) => (name, Some(params)),
            None => (*segment, None),
        };
        if params.is_some() {
            had_params = true;
            if !opts.allow_params {
                return Err(PathError::Params);
            }
        }
        // `/a/` ends with an empty segment: fine. `//`, `/a//b` and
        // `/;x/` (empty once its parameters are gone) are not.
        if name.is_empty() && (i != last || params.is_some()) {
            return Err(PathError::EmptySegment);
        }
        let decoded = decode_segment(name, opts.allow_encoded_slash)?;
        if decoded.contains('/') {
            // Only with `allow_encoded_slash`: judge each decoded part.
            if decoded
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
            {
                return Err(PathError::DotSegment);
            }
        } else if decoded == "." || decoded == ".." {
            return Err(PathError::DotSegment);
        }
        // Parameters are checked too: a service may still read them.
        if let Some(p) = params {
            decode_segment(p, false)?;
        }
        out.push('/');
        out.push_str(&normalise_segment(name));
    }
    Ok(JudgedPath {
        path: out,
        had_params,
    })
}

/// Decodes one segment to check it: every `%XX` must be valid, must not
/// be a separator (unless `slash` allows `%2F`) or a control character,
/// and the result must be UTF-8.
fn decode_segment(s: &str, slash: bool) -> Result<String, PathError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = b.get(i + 1).and_then(|c| hex(*c));
            let lo = b.get(i + 2).and_then(|c| hex(*c));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadPercent);
            };
            let v = hi << 4 | lo;
            match v {
                b'/' if slash => out.push(v),
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                _ => out.push(v),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    // `String::from_utf8` refuses overlong forms and surrogates.
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// Decodes percent-encoded unreserved characters (RFC 3986 §6.2.2.2: they
/// mean the same as the character itself) and keeps everything else as
/// sent. Only called on segments that [`decode_segment`] accepted.
fn normalise_segment(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let v = hi << 4 | lo;
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    out.push(v as char);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` (judged) lies under `prefix` (a configured route prefix)
/// on whole segments, ignoring ASCII case: `/api` covers `/api`, `/api/`
/// and `/API/x`, never `/apix`. Case is ignored so that a case-insensitive
/// service (IIS, Windows file shares) cannot be reached through a more
/// lenient route of the same host by spelling `/Admin` for `/admin`.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    let (p, pre) = (path.as_bytes(), prefix.as_bytes());
    p.len() >= pre.len()
        && p[..pre.len()].eq_ignore_ascii_case(pre)
        && (p.len() == pre.len() || p[pre.len()] == b'/')
}

/// A `Host` (or `:authority`, or absolute-form authority) the gateway
/// accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgedHost {
    /// Lower-case host without port or trailing dot; IPv6 in brackets.
    pub host: String,
    /// The port, when one was given.
    pub port: Option<u16>,
}

impl JudgedHost {
    /// `host[:port]`, rebuilt from the judged parts: what forwarding
    /// headers carry, never the caller's raw value.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

/// Why a host is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Empty,
    TooLong,
    Userinfo,
    BadPort,
    BadCharacter,
    BadIpLiteral,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostError::Empty => "missing Host",
            HostError::TooLong => "Host is too long",
            HostError::Userinfo => "userinfo ('@') in Host",
            HostError::BadPort => "Host has a non-numeric or out-of-range port",
            HostError::BadCharacter => "Host has characters outside a host name or IP literal",
            HostError::BadIpLiteral => "Host has an invalid IP literal",
        })
    }
}

impl std::error::Error for HostError {}

/// Judges a Host value: a DNS name (letters, digits, `-`, `_`, `.`), an
/// IPv4 address or a bracketed IPv6 address, optionally followed by
/// `:port` with a port of 1–65535 in at most five digits. Anything else
/// (userinfo, commas, spaces, a second colon, an empty or non-numeric
/// port) is refused.
pub fn judge_host(raw: &str) -> Result<JudgedHost, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if raw.len() > 260 {
        return Err(HostError::TooLong);
    }
    if raw.contains('@') {
        return Err(HostError::Userinfo);
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or(HostError::BadIpLiteral)?;
        let addr: std::net::Ipv6Addr = ip.parse().map_err(|_| HostError::BadIpLiteral)?;
        let port = match after {
            "" => None,
            p => Some(port(p.strip_prefix(':').ok_or(HostError::BadCharacter)?)?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (name, port) = match raw.split_once(':') {
            Some((n, p)) => (n, Some(port(p)?)),
            None => (raw, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(HostError::Empty);
        }
        if name.len() > 253 {
            return Err(HostError::TooLong);
        }
        let ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        // One trailing dot (the root) was dropped above; another, or an
        // empty label anywhere, is no host name.
        if !ok || name.contains("..") || name.starts_with('.') || name.ends_with('.') {
            return Err(HostError::BadCharacter);
        }
        (name.to_ascii_lowercase(), port)
    };
    Ok(JudgedHost { host, port })
}

fn port(p: &str) -> Result<u16, HostError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::BadPort);
    }
    match p.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(HostError::BadPort),
    }
}

#[cfg(test)]
mod tests;
