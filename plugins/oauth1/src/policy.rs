//! The decision for one request (RFC 5849 §3.2, "Verifying Requests").
//!
//! The checks run from cheapest to most expensive, and the nonce is
//! recorded last: a request that fails any check must not use up its nonce,
//! or anyone could burn a legitimate client's nonces with forged requests.

use alloc::{
    collections::BTreeMap,
    format,
    string::{String, ToString},
    vec,
    vec::Vec,
};

use crate::config::{Config, Credential, Verifier};
use crate::encoding::{is_protocol_name, parse_form, FormParams, Param, MAX_PARAMS};
use crate::header;
use crate::signature::{
    base_string, base_string_uri, decode_signature, hmac_key, hmac_verify, normalized_parameters,
    rsa_verify, Method,
};
use crate::{Decision, Denial, Header, Host, Request};

/// An `Authorization` header longer than this is refused. A real OAuth
/// header is a few hundred bytes (an RSA signature is the longest part).
pub const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;

/// The protocol parameters every signed request carries (§3.1). Version is
/// optional; token is absent in two-legged requests.
const REQUIRED: [&str; 5] = [
    "oauth_consumer_key",
    "oauth_signature_method",
    "oauth_signature",
    "oauth_timestamp",
    "oauth_nonce",
];

/// Why a request was refused, by the OAuth Problem Reporting extension's
/// names (<https://wiki.oauth.net/w/page/12238543/ProblemReporting>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A required parameter is missing.
    ParameterAbsent,
    /// A parameter is malformed, duplicated or too large.
    ParameterRejected,
    /// The signature method is not supported or not allowed.
    SignatureMethodRejected,
    /// The timestamp is outside the window.
    TimestampRefused,
    /// The nonce was seen before.
    NonceUsed,
    /// The signature does not verify.
    SignatureInvalid,
    /// No consumer has this key (reported to the caller as
    /// `signature_invalid`).
    ConsumerKeyUnknown,
    /// The token is not known for the consumer.
    TokenRejected,
    /// `oauth_version` is not `1.0`.
    VersionRejected,
}

impl Problem {
    /// The name sent to the caller. An unknown consumer key reads exactly as
    /// a bad signature, so that callers cannot probe which keys exist.
    pub fn public_name(self) -> &'static str {
        match self {
            Problem::ParameterAbsent => "parameter_absent",
            Problem::ParameterRejected => "parameter_rejected",
            Problem::SignatureMethodRejected => "signature_method_rejected",
            Problem::TimestampRefused => "timestamp_refused",
            Problem::NonceUsed => "nonce_used",
            Problem::SignatureInvalid | Problem::ConsumerKeyUnknown => "signature_invalid",
            Problem::TokenRejected => "token_rejected",
            Problem::VersionRejected => "version_rejected",
        }
    }
}

/// A refused request: status, problem and a sentence for the logs. The
/// sentence never holds a signature, a secret, a token or the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400 or 401, following RFC 5849 §3.2.
    pub status: u16,
    /// What went wrong, as the caller is told.
    pub problem: Problem,
    /// Why, for the gateway's logs.
    pub reason: String,
}

fn rejected(reason: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        problem: Problem::ParameterRejected,
        reason: reason.into(),
    }
}

fn unauthorized(problem: Problem, reason: impl Into<String>) -> Refusal {
    Refusal {
        status: 401,
        problem,
        reason: reason.into(),
    }
}

/// An allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No OAuth parameters, and `allow_unsigned` lets such requests pass.
    Unsigned,
    /// Signature verified for this consumer; timestamp and nonce fresh.
    Verified {
        /// The consumer key.
        consumer: String,
    },
    /// No consumers are configured: parameters, method, timestamp and nonce
    /// were checked, the signature is left to the service.
    Checked {
        /// The consumer key (as claimed: nothing proved it).
        consumer: String,
    },
}

/// Where a parameter came from (§3.4.1.3.1 lists the three places).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Query,
    Body,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Header => "the Authorization header",
            Source::Query => "the query string",
            Source::Body => "the form body",
        }
    }
}

/// What the plugin could learn from the body.
enum Body {
    /// Not form-encoded: its content is not part of the signature.
    NotForm,
    /// Form-encoded but not seen in full (why).
    Unseen(&'static str),
    /// Form-encoded and seen in full.
    Seen(FormParams),
}

fn header_value<'a>(req: &'a Request, name: &str) -> Option<&'a [u8]> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_slice())
}

/// Whether a Content-Type header declares a form body (§3.4.1.3.1 counts
/// the body only then). Any such header counts: if a request carries two
/// and the service picks the form one, its parameters must have been part
/// of what the gateway verified.
fn is_form(req: &Request) -> bool {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-type"))
        .any(|h| {
            let media = h.value.split(|&b| b == b';').next().unwrap_or_default();
            media
                .trim_ascii()
                .eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
        })
}

/// The whole body, when the gateway passed all of it. A prefix is not
/// enough: the signature covers every body parameter, and judging a
/// truncated body could only fail legitimate requests or, worse, let
/// unverified parameters through in the part not seen.
fn full_body(req: &Request) -> Result<&[u8], &'static str> {
    let length = header_value(req, "content-length").map(|v| {
        core::str::from_utf8(v)
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok())
    });
    match (req.body_prefix.as_deref(), length) {
        (Some(body), Some(Some(n))) if body.len() as u64 == n => Ok(body),
        // Content-Length: 0 is a body known in full without seeing it.
        (None, Some(Some(0))) => Ok(&[]),
        // Without a length, the gateway passes a body only when it knows it
        // is empty (HTTP/1.1 without framing, HTTP/2 ending with the headers).
        (Some([]), None) => Ok(&[]),
        (None, _) => Err("the gateway did not pass the body (the route must ask for form bodies)"),
        (Some(_), None) => Err("the request has no Content-Length"),
        (Some(_), Some(None)) => Err("the Content-Length is not a number"),
        (Some(_), Some(Some(_))) => Err("the body is longer than the part the gateway passed"),
    }
}

/// The key under which a nonce is remembered: unique per (consumer, token,
/// timestamp, nonce) as §3.3 asks. Lengths prefix the free-form parts so
/// that no two different tuples give the same text (`a|b` + `c` vs `a` +
/// `b|c`); the timestamp is the parsed number, so `0123` and `123` are the
/// same timestamp. The text is hashed (SHA-256, hex) so the key has a
/// fixed length whatever the parameters' (the host caps key length).
pub fn nonce_key(consumer: &str, token: &str, timestamp: u64, nonce: &str) -> String {
    use sha2::Digest;
    let text = format!(
        "{}:{consumer}|{}:{token}|{timestamp}|{nonce}",
        consumer.len(),
        token.len()
    );
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// The parameters of a request that carries OAuth parameters.
struct Collected<'r> {
    /// The path as sent (no query, no fragment).
    path: &'r str,
    header: Vec<Param>,
    query: FormParams,
    /// Empty when the body is not form-encoded.
    body: FormParams,
}

impl Collected<'_> {
    /// The signature base string (§3.4.1) of this request: every parameter
    /// but `realm` (header only) and `oauth_signature`.
    fn base_string(&self, method: &str, origin: &str) -> String {
        let signed = self
            .header
            .iter()
            .filter(|p| p.name != b"realm")
            .chain(&self.query.params)
            .chain(&self.body.params)
            .filter(|p| p.name != b"oauth_signature");
        base_string(
            method,
            &base_string_uri(origin, self.path),
            &normalized_parameters(signed),
        )
    }
}

enum Collection<'r> {
    /// No OAuth parameter anywhere the plugin could look.
    Unsigned {
        /// A form body was declared but could not be seen.
        body_unseen: bool,
    },
    Signed(Collected<'r>),
}

/// Step 1: the parameters from the three places §3.4.1.3.1 names, with
/// every syntax and size limit applied. Problems with the query or body
/// count only when the request turns out to carry OAuth parameters.
fn collect(req: &Request) -> Result<Collection<'_>, Refusal> {
    // 1a. The Authorization header, if it uses the OAuth scheme. Other
    // schemes are not this plugin's business.
    let mut header_params: Option<Vec<Param>> = None;
    for h in req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("authorization"))
    {
        let Some(credentials) = header::oauth_credentials(&h.value) else {
            continue;
        };
        if header_params.is_some() {
            return Err(rejected(
                "the request has more than one OAuth Authorization header",
            ));
        }
        if h.value.len() > MAX_AUTHORIZATION_BYTES {
            return Err(rejected(format!(
                "the OAuth Authorization header is {} bytes, over the {MAX_AUTHORIZATION_BYTES}-byte limit",
                h.value.len()
            )));
        }
        let params = header::parse(credentials)
            .map_err(|e| rejected(format!("malformed OAuth Authorization header: {e}")))?;
        header_params = Some(params);
    }

    // 1b. The query string; 1c. the form body.
    let (path, query) = req
        .path_with_query
        .split_once('?')
        .unwrap_or((req.path_with_query.as_str(), ""));
    let path = path.split('#').next().unwrap_or_default();
    let query = query.split('#').next().unwrap_or_default();
    let query = parse_form(query.as_bytes(), "query string");
    let body = if is_form(req) {
        match full_body(req) {
            Ok(bytes) => Body::Seen(parse_form(bytes, "form body")),
            Err(why) => Body::Unseen(why),
        }
    } else {
        Body::NotForm
    };

    let signed = header_params.is_some()
        || query.mentions_oauth
        || matches!(&body, Body::Seen(form) if form.mentions_oauth);
    if !signed {
        return Ok(Collection::Unsigned {
            body_unseen: matches!(body, Body::Unseen(_)),
        });
    }
    if let Some(problem) = query.problem {
        return Err(rejected(problem));
    }
    let body = match body {
        Body::NotForm => FormParams::default(),
        Body::Unseen(why) => {
            return Err(unauthorized(
                Problem::ParameterRejected,
                format!("form body not available to verify: {why}"),
            ))
        }
        Body::Seen(form) => match form.problem {
            Some(problem) => return Err(rejected(problem)),
            None => form,
        },
    };
    let header = header_params.unwrap_or_default();
    let total = header.len() + query.count + body.count;
    if total > MAX_PARAMS {
        return Err(rejected(format!(
            "the request has {total} parameters, over the limit of {MAX_PARAMS}"
        )));
    }
    Ok(Collection::Signed(Collected {
        path,
        header,
        query,
        body,
    }))
}

/// The signature base string of `req` for `origin` (`scheme://host[:port]`,
/// normalized), built by the same code the verification uses; `None` for a
/// request without OAuth parameters. For tests and for debugging a client.
#[cfg(test)]
pub(crate) fn signature_base_string(
    origin: &str,
    req: &Request,
) -> Result<Option<String>, Refusal> {
    Ok(match collect(req)? {
        Collection::Signed(c) => Some(c.base_string(&req.method, origin)),
        Collection::Unsigned { .. } => None,
    })
}

/// The plugin: a checked configuration and the decision it makes.
pub struct Policy {
    config: Config,
}

impl Policy {
    /// Checks the configuration text (see the README for the fields).
    pub fn new(config: &str) -> Result<Policy, String> {
        Config::parse(config).map(|config| Policy { config })
    }

    /// The decision for one request, as the WIT world returns it. Allowed
    /// requests get no header edits: the service behind the gateway sees
    /// the Authorization header intact and may verify it again.
    pub fn decide(&self, req: &Request, host: &mut impl Host) -> Decision {
        match self.evaluate(req, host) {
            Ok(_) => Decision::Allow(Vec::new()),
            Err(refusal) => Decision::Deny(self.denial(refusal)),
        }
    }

    /// The response for a refusal: `oauth_problem=<name>` in plain text
    /// (the Problem Reporting extension's form) and, for 401, the
    /// challenge RFC 5849 §3.2 / RFC 7235 ask for.
    pub fn denial(&self, refusal: Refusal) -> Denial {
        let mut headers = vec![Header {
            name: "content-type".to_string(),
            value: b"text/plain; charset=utf-8".to_vec(),
        }];
        if refusal.status == 401 {
            headers.push(Header {
                name: "www-authenticate".to_string(),
                value: format!("OAuth realm=\"{}\"", self.config.realm).into_bytes(),
            });
        }
        Denial {
            status: refusal.status,
            headers,
            body: format!("oauth_problem={}\n", refusal.problem.public_name()).into_bytes(),
            reason: refusal.reason,
        }
    }

    /// Judges one request (the numbered steps follow the README).
    pub fn evaluate(&self, req: &Request, host: &mut impl Host) -> Result<Verdict, Refusal> {
        let cfg = &self.config;

        // 1. Collect the parameters; 2. unsigned requests.
        let collected = match collect(req)? {
            Collection::Signed(collected) => collected,
            Collection::Unsigned { body_unseen } => {
                if cfg.allow_unsigned {
                    return Ok(Verdict::Unsigned);
                }
                let note = if body_unseen {
                    " (the form body, which could carry them, was not available)"
                } else {
                    ""
                };
                return Err(unauthorized(
                    Problem::ParameterAbsent,
                    format!("the request carries no OAuth parameters{note}"),
                ));
            }
        };
        let Collected {
            header: header_params,
            query,
            body,
            ..
        } = &collected;

        // Each protocol parameter once, in one place (§3.2: "duplicated
        // protocol parameter" is a 400).
        let sources = [
            (Source::Header, header_params),
            (Source::Query, &query.params),
            (Source::Body, &body.params),
        ];
        let mut protocol: BTreeMap<&[u8], (Source, &str)> = BTreeMap::new();
        for (source, params) in sources {
            for p in params.iter().filter(|p| is_protocol_name(&p.name)) {
                let value = core::str::from_utf8(&p.value).map_err(|_| {
                    rejected(format!(
                        "{:?} in {} is not UTF-8",
                        lossy(&p.name),
                        source.name()
                    ))
                })?;
                if let Some((first, _)) = protocol.insert(&p.name, (source, value)) {
                    return Err(rejected(format!(
                        "protocol parameter {:?} appears more than once ({} and {})",
                        lossy(&p.name),
                        first.name(),
                        source.name()
                    )));
                }
            }
        }
        let raw = |name: &str| protocol.get(name.as_bytes()).map(|&(_, v)| v);
        // An empty value is as good as none for the required parameters.
        let get = |name: &str| raw(name).filter(|v| !v.is_empty());

        // 3. Required parameters, version, method.
        let [Some(consumer), Some(method_name), Some(signature), Some(timestamp), Some(nonce)] =
            REQUIRED.map(get)
        else {
            let missing: Vec<&str> = REQUIRED.into_iter().filter(|n| get(n).is_none()).collect();
            return Err(Refusal {
                status: 400,
                problem: Problem::ParameterAbsent,
                reason: format!("missing or empty: {}", missing.join(", ")),
            });
        };
        if let Some(version) = raw("oauth_version") {
            if version != "1.0" {
                return Err(Refusal {
                    status: 400,
                    problem: Problem::VersionRejected,
                    reason: format!("oauth_version {version:?} is not 1.0"),
                });
            }
        }
        // §3.2 lists "unsupported signature method" among the 400s.
        let method = Method::from_name(method_name)
            .filter(|m| cfg.methods.contains(m))
            .ok_or_else(|| {
                let allowed: Vec<&str> = cfg.methods.iter().map(|m| m.name()).collect();
                Refusal {
                    status: 400,
                    problem: Problem::SignatureMethodRejected,
                    reason: format!(
                        "signature method {method_name:?} is not allowed (allowed: {})",
                        allowed.join(", ")
                    ),
                }
            })?;

        // 4. Timestamp: a positive decimal integer (§3.3), within the window.
        let timestamp = Some(timestamp)
            .filter(|t| t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| {
                rejected(format!(
                    "oauth_timestamp {timestamp:?} is not a decimal integer"
                ))
            })?;
        let now = host.now();
        let skew = now.abs_diff(timestamp);
        if skew > cfg.window_secs {
            let direction = if timestamp > now {
                "ahead of"
            } else {
                "behind"
            };
            return Err(unauthorized(
                Problem::TimestampRefused,
                format!(
                    "oauth_timestamp is {skew} s {direction} the gateway's clock (window {} s)",
                    cfg.window_secs
                ),
            ));
        }

        // 5. Signature.
        let token = get("oauth_token");
        if let Some(verifier) = &cfg.verifier {
            let base = collected.base_string(&req.method, &verifier.origin);
            verify(verifier, method, consumer, token, signature, &base)?;
        }

        // 6. Nonce, last (see the module comment). When the host's set is
        // full it answers false too: failing closed is the host's promise.
        let ttl = u32::try_from(cfg.window_secs * 2).unwrap_or(u32::MAX);
        let key = nonce_key(consumer, token.unwrap_or_default(), timestamp, nonce);
        if !host.insert_if_absent(&key, ttl) {
            return Err(unauthorized(
                Problem::NonceUsed,
                format!("nonce already used (consumer {consumer:?}, timestamp {timestamp})"),
            ));
        }

        // 7. Allowed.
        let consumer = consumer.to_string();
        Ok(if cfg.verifier.is_some() {
            Verdict::Verified { consumer }
        } else {
            Verdict::Checked { consumer }
        })
    }
}

/// Verifies the signature over `base` for `consumer`.
///
/// A request naming an unknown consumer (or a consumer of the other kind)
/// does the same work as one naming a known consumer, against a stand-in
/// credential of the same kind and size, and its result is thrown away: the
/// time taken must not tell a prober which keys exist. The stand-in for RSA
/// is a configured key whose modulus is as long as the signature (RSA
/// verification fails fast on a length mismatch, so matching the length is
/// what matching the cost means); with no RSA consumer configured there is
/// nothing to tell apart, since every RSA-SHA1 request fails the same way.
fn verify(
    verifier: &Verifier,
    method: Method,
    consumer: &str,
    token: Option<&str>,
    signature: &str,
    base: &str,
) -> Result<(), Refusal> {
    let signature = decode_signature(signature).ok_or_else(|| {
        unauthorized(
            Problem::SignatureInvalid,
            "oauth_signature is not valid base64",
        )
    })?;
    let credential = verifier.consumers.get(consumer);
    let unknown = || {
        unauthorized(
            Problem::ConsumerKeyUnknown,
            format!(
                "consumer key {consumer:?} is not configured for {}",
                method.name()
            ),
        )
    };
    let invalid = || {
        unauthorized(
            Problem::SignatureInvalid,
            format!(
                "{} signature of consumer {consumer:?} does not verify",
                method.name()
            ),
        )
    };
    match method {
        Method::RsaSha1 => {
            let stand_in = verifier.rsa_key_for_signature(signature.len());
            let known = match credential {
                Some(Credential::Rsa(key)) => Some(key),
                _ => None,
            };
            let ok = known
                .or(stand_in)
                .is_some_and(|key| rsa_verify(key, base.as_bytes(), &signature));
            match (known, ok) {
                (None, _) => Err(unknown()),
                (Some(_), true) => Ok(()),
                (Some(_), false) => Err(invalid()),
            }
        }
        Method::HmacSha1 | Method::HmacSha256 => {
            let (secret, token_secrets) = match credential {
                Some(Credential::Shared {
                    secret,
                    token_secrets,
                }) => (Some(secret.as_str()), Some(token_secrets)),
                _ => (None, None),
            };
            // No token: the key ends in a bare `&` (§3.4.2). A token the
            // consumer does not have cannot be verified at all.
            let token_secret = match token {
                None => Some(""),
                Some(t) => token_secrets.and_then(|m| m.get(t)).map(String::as_str),
            };
            let key = hmac_key(
                secret.unwrap_or(&verifier.dummy_secret),
                token_secret.unwrap_or_default(),
            );
            let ok = hmac_verify(method, key.as_bytes(), base.as_bytes(), &signature);
            match (secret, token_secret, ok) {
                // An unknown consumer that names a token gets the same answer
                // as a known consumer with an unknown token, so that this
                // answer does not reveal whether the consumer exists either.
                (_, None, _) => Err(unauthorized(
                    Problem::TokenRejected,
                    match secret {
                        Some(_) => format!("oauth_token is not known for consumer {consumer:?}"),
                        None => format!(
                            "consumer key {consumer:?} is not configured for {} (answered as token_rejected)",
                            method.name()
                        ),
                    },
                )),
                (None, Some(_), _) => Err(unknown()),
                (Some(_), Some(_), true) => Ok(()),
                (Some(_), Some(_), false) => Err(invalid()),
            }
        }
    }
}

impl Verifier {
    /// A configured RSA key whose modulus has `len` bytes, else any
    /// configured RSA key; `None` when no consumer uses RSA.
    pub(crate) fn rsa_key_for_signature(&self, len: usize) -> Option<&rsa::RsaPublicKey> {
        use rsa::traits::PublicKeyParts;
        let mut keys = self.consumers.values().filter_map(|c| match c {
            Credential::Rsa(key) => Some(key),
            Credential::Shared { .. } => None,
        });
        let first = keys.clone().next();
        keys.find(|k| k.size() == len).or(first)
    }
}
