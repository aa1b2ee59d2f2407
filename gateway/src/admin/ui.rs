//! The dashboard at `/ui/` on the admin listener: three static files
//! embedded in the binary (no CDN, no build step: the page works on an
//! air-gapped host) and the browser's session.
//!
//! - Signing in (`POST /ui/session` with an admin token) sets a session
//!   cookie that is `HttpOnly` and `SameSite=Strict`, and `Secure` when the
//!   listener speaks HTTPS (`admin.tls_cert`); the page never sees the
//!   cookie nor keeps the token.
//! - The page calls the same `/v1/` API as everyone else; the cookie
//!   stands in for `Authorization`, and every call that changes something
//!   must also carry the session's CSRF token in `X-CSRF-Token` and must
//!   not come from another site (`Sec-Fetch-Site`).
//! - The session keeps the admin token's hash (never the token) and
//!   every call looks it up again, so a token revoked or a scope lost
//!   takes effect on the next call; sessions end after [`IDLE`] without a
//!   call, after [`LIFETIME`] in any case; one token holds at most
//!   [`MAX_PER_TOKEN`] sessions and all tokens [`MAX_SESSIONS`], past
//!   which the longest idle one (of that token first) ends.
//! - Over HTTPS the cookie is named `__Host-…`, which a page of another
//!   host (a tenant's service under the same domain) cannot set; the
//!   proxy never forwards the cookie into a tunnel
//!   ([`strip_session_cookie`]).
//! - The files are served with a strict `Content-Security-Policy`: scripts
//!   and styles from the page's own files only, no inline code, no other
//!   origin, no framing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response};
use http_body_util::Full;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::store::AdminScope;

/// The session cookie's name over plain HTTP.
pub const COOKIE: &str = "tunnel_admin_session";
/// Its name over HTTPS: a `__Host-` cookie is `Secure`, for this host
/// only and for every path, so no other host can plant one.
pub const SECURE_COOKIE: &str = "__Host-tunnel_admin_session";
/// The header carrying the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, used or not.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions at once.
pub const MAX_SESSIONS: usize = 256;
/// Most sessions of one admin token at once.
pub const MAX_PER_TOKEN: usize = 16;

/// What the page may load, and from where: only its own files.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's files: path under `/ui/`, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/app.css"),
    ),
];

/// The response for `GET /ui/<file>`, or `None` when there is no such file.
pub fn file(path: &str) -> Option<Response<Full<Bytes>>> {
    let name = path.strip_prefix("/ui/")?;
    let (_, content_type, body) = FILES.iter().find(|(n, _, _)| *n == name)?;
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    page_headers(h);
    Some(r)
}

/// Headers of every dashboard answer: no sniffing, no framing, no
/// referrer, no caching.
pub fn page_headers(h: &mut HeaderMap) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A signed-in browser.
struct Session {
    /// The hash of the admin token it signed in with, looked up again on
    /// every call.
    token_hash: [u8; 32],
    csrf: String,
    started: Instant,
    used: Instant,
}

/// What a session's call carries.
pub struct SessionAuth {
    /// The cookie value that found it.
    pub id: String,
    /// The hash of its admin token.
    pub token_hash: [u8; 32],
    /// The session's CSRF token, to compare with the call's.
    pub csrf: String,
}

/// The live sessions, by the SHA-256 of their cookie value.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_token() -> String {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut *raw);
    URL_SAFE_NO_PAD.encode(*raw)
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Starts a session for the admin token of hash `token_hash`: the
    /// cookie value and the CSRF token.
    pub fn start(&self, token_hash: [u8; 32]) -> (Zeroizing<String>, String) {
        let id = Zeroizing::new(random_token());
        let csrf = random_token();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| live(s, now));
        // One token cannot push out everyone else's sessions: it loses its
        // own oldest first.
        let own = map.values().filter(|s| s.token_hash == token_hash).count();
        let victim = if own >= MAX_PER_TOKEN {
            map.iter()
                .filter(|(_, s)| s.token_hash == token_hash)
                .min_by_key(|(_, s)| s.used)
        } else if map.len() >= MAX_SESSIONS {
            map.iter().min_by_key(|(_, s)| s.used)
        } else {
            None
        }
        .map(|(k, _)| *k);
        if let Some(k) = victim {
            map.remove(&k);
        }
        map.insert(
            key(&id),
            Session {
                token_hash,
                csrf: csrf.clone(),
                started: now,
                used: now,
            },
        );
        (id, csrf)
    }

    /// The first live session among the cookie values `ids` (marked used).
    pub fn find(&self, ids: &[String]) -> Option<SessionAuth> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            let k = key(id);
            let Some(s) = map.get_mut(&k) else {
                continue;
            };
            if !live(s, now) {
                map.remove(&k);
                continue;
            }
            s.used = now;
            return Some(SessionAuth {
                id: id.clone(),
                token_hash: s.token_hash,
                csrf: s.csrf.clone(),
            });
        }
        None
    }

    /// Ends the session of cookie value `id`.
    pub fn end(&self, id: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&key(id));
    }

    #[cfg(test)]
    fn age(&self, id: &str, by: Duration) {
        let mut map = self.map.lock().unwrap();
        let s = map.get_mut(&key(id)).unwrap();
        s.started -= by;
        s.used -= by;
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.used) < IDLE && now.duration_since(s.started) < LIFETIME
}

fn is_session_cookie(name: &str) -> bool {
    name == COOKIE || name == SECURE_COOKIE
}

/// Every session cookie value in a request's `Cookie` headers (a cookie
/// another page planted may come first: each is tried).
pub fn cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| is_session_cookie(name))
        .map(|(_, value)| value.to_string())
        .take(8)
        .collect()
}

/// A `Cookie` header's value without the dashboard's session cookie, or
/// `None` when nothing else is left: what the proxy forwards, so a
/// signed-in operator's session never reaches a tunnel's service that
/// shares the admin listener's host name.
pub fn strip_session_cookie(value: &[u8]) -> Option<Vec<u8>> {
    let kept: Vec<&[u8]> = value
        .split(|b| *b == b';')
        .filter(|pair| {
            let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
            let name = name.trim_ascii();
            !(name == COOKIE.as_bytes() || name == SECURE_COOKIE.as_bytes())
        })
        .map(|pair| pair.trim_ascii())
        .filter(|pair| !pair.is_empty())
        .collect();
    (!kept.is_empty()).then(|| kept.join(&b"; "[..]))
}

/// Whether a call that changes something may use the session: it carries
/// the session's CSRF token and does not come from another site.
pub fn csrf_ok(headers: &HeaderMap, csrf: &str) -> bool {
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "same-origin" && v != "none");
    let sent = headers
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    !cross_site && !sent.is_empty() && bool::from(sent.ct_eq(csrf.as_bytes()))
}

/// The `Set-Cookie` value that starts (`Some(id)`) or ends (`None`) a
/// session.
pub fn set_cookie(id: Option<&str>, secure: bool) -> HeaderValue {
    let (name, secure) = if secure {
        (SECURE_COOKIE, "; Secure")
    } else {
        (COOKIE, "")
    };
    let text = match id {
        Some(id) => format!(
            "{name}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            LIFETIME.as_secs()
        ),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&text).expect("cookie value is a header value")
}

/// What `GET /ui/session` and a sign-in answer: who is signed in.
pub fn whoami(name: &str, actor: &str, scope: AdminScope, csrf: &str) -> serde_json::Value {
    serde_json::json!({ "name": name, "actor": actor, "scope": scope, "csrf": csrf })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(s: &Sessions, id: &str) -> Option<SessionAuth> {
        s.find(&[id.to_string()])
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends_idle_old_or_signed_out() {
        let s = Sessions::default();
        let (id, csrf) = s.start([1; 32]);
        let got = get(&s, &id).expect("live session");
        assert_eq!(got.token_hash, [1; 32]);
        assert_eq!(got.csrf, csrf);
        assert!(get(&s, "not-a-session").is_none());
        // A planted cookie before the real one does not hide it.
        let both = s.find(&["planted".into(), id.to_string()]).unwrap();
        assert_eq!(both.id, *id);
        s.age(&id, IDLE);
        assert!(get(&s, &id).is_none(), "idle past IDLE");
        let (id, _) = s.start([1; 32]);
        s.end(&id);
        assert!(get(&s, &id).is_none(), "signed out");
    }

    #[test]
    fn sessions_are_bounded_per_token_and_in_all() {
        let s = Sessions::default();
        let other = s.start([2; 32]).0;
        let first = s.start([1; 32]).0;
        for _ in 0..MAX_SESSIONS {
            s.start([1; 32]);
        }
        assert!(get(&s, &first).is_none(), "the token's own oldest ended");
        assert!(get(&s, &other).is_some(), "another token's session stays");
        for t in 3..40u8 {
            for _ in 0..MAX_PER_TOKEN {
                s.start([t; 32]);
            }
        }
        assert_eq!(s.map.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_read_among_others_and_csrf_must_match_from_this_site() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tunnel_admin_session=abc; b=2"),
        );
        assert_eq!(cookies(&h), vec!["abc".to_string()]);
        assert_eq!(
            strip_session_cookie(b"a=1; tunnel_admin_session=abc;b=2").as_deref(),
            Some(&b"a=1; b=2"[..])
        );
        assert_eq!(
            strip_session_cookie(b"__Host-tunnel_admin_session=abc"),
            None
        );
        assert!(!csrf_ok(&h, "tok"), "no CSRF header");
        h.insert(CSRF_HEADER, HeaderValue::from_static("tok"));
        assert!(csrf_ok(&h, "tok"));
        assert!(!csrf_ok(&h, "other"));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!csrf_ok(&h, "tok"), "from another site");
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(csrf_ok(&h, "tok"));
        let set = set_cookie(Some("abc"), false);
        let set = set.to_str().unwrap();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(!set.contains("Secure"));
        let secure = set_cookie(Some("abc"), true);
        let secure = secure.to_str().unwrap();
        assert!(secure.starts_with("__Host-") && secure.ends_with("; Secure"));
    }

    #[test]
    fn the_files_are_served_with_a_strict_policy_and_nothing_else_is() {
        let index = file("/ui/").expect("index");
        assert_eq!(index.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert!(file("/ui/app.js").is_some() && file("/ui/app.css").is_some());
        assert!(file("/ui/../Cargo.toml").is_none() && file("/ui/x").is_none());
        // The page has no inline code and loads nothing from elsewhere,
        // which the policy would block anyway.
        for (name, _, body) in FILES {
            // The one address allowed: SVG's namespace, a name, not a
            // place anything is loaded from.
            let body = body.replace("http://www.w3.org/2000/svg", "");
            for banned in [
                "<script>",
                "style=",
                "onclick",
                "innerHTML",
                "http://",
                "https://",
            ] {
                assert!(!body.contains(banned), "{name} holds {banned}");
            }
        }
    }
}
