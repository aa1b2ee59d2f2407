//! `authz`: allow a request only when one of the route's rules matches it.
//!
//! A rule names any of: methods, path prefixes, caller ids and caller
//! organizations. It matches a request when every field it sets matches (a
//! field left out matches anything). A request that some rule matches goes
//! through untouched; a request that no rule matches is denied. A route with
//! no rules at all allows everything: a route that needs a default deny must
//! configure at least one rule.
//!
//! Path prefixes match the raw path (the part of `path-with-query` before
//! `?`), byte for byte and on a segment boundary, without percent-decoding.
//! The gateway has already refused dot segments in any spelling, so a prefix
//! cannot be escaped with `..`. The caller's id and organization come from
//! the gateway (resolved from the caller credential), never from the request.
//!
//! See `README.md` for the configuration format.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::{
    format,
    string::{String, ToString},
    vec::Vec,
};
use core::{fmt, marker::PhantomData};

use plugin_sdk::{Context, Decision, Denial, Policy, Request};
use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// Most rules a configuration may hold.
pub const MAX_RULES: usize = 1_000;
/// Most items one list of a rule may hold.
pub const MAX_LIST_ITEMS: usize = 100;
/// Longest string (in bytes) a list may hold.
pub const MAX_STRING_BYTES: usize = 1_024;
/// Status of a denial when the configuration does not set `deny_status`.
pub const DEFAULT_DENY_STATUS: u16 = 403;
/// Longest method or path (in characters) echoed in a denial.
const MAX_ECHO_CHARS: usize = 200;

/// One rule, validated. `None` means the field was left out: it matches
/// anything. A present list is never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Methods, case-sensitive upper-case tokens (`GET`, `POST`).
    pub methods: Option<Vec<String>>,
    /// Path prefixes, each starting with `/`.
    pub path_prefixes: Option<Vec<String>>,
    /// Caller credential ids (`context.caller-id`).
    pub callers: Option<Vec<String>>,
    /// Caller organizations (`context.caller-org`).
    pub orgs: Option<Vec<String>>,
}

/// The plugin's configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The rules; empty means every request is allowed.
    pub rules: Vec<Rule>,
    /// Status of a denial, 400-599.
    pub deny_status: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rules: Vec::new(),
            deny_status: DEFAULT_DENY_STATUS,
        }
    }
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// The configuration as written. Fields are kept as JSON values so that the
/// validation below can name the field and rule of every mistake.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    rules: RawRules,
    #[serde(default, deserialize_with = "present")]
    deny_status: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default, deserialize_with = "present")]
    methods: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    path_prefixes: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    callers: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    orgs: Option<Value>,
}

/// What an [`Object`] may hold, and how to name it in errors.
trait Described {
    const EXPECTING: &'static str;
}

impl Described for RawConfig {
    const EXPECTING: &'static str = "a JSON object with optional `rules` and `deny_status`";
}

impl Described for RawRule {
    const EXPECTING: &'static str =
        "a rule: an object with optional `methods`, `path_prefixes`, `callers` and `orgs`";
}

/// A struct read from a JSON object only. Derived struct deserializers also
/// accept a list of the fields in order (`[["GET"]]` would be a rule with
/// `methods: ["GET"]`); this refuses that form.
struct Object<T>(T);

impl<'de, T: Deserialize<'de> + Described> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de> + Described> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Object)
            }
        }

        d.deserialize_map(ObjectVisitor(PhantomData))
    }
}

/// A field that is present, even as `null` (which validation then refuses
/// instead of reading it as "left out").
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The `rules` list, parsed element by element so that an error names the
/// rule's index and the count limit holds before the whole list is read.
#[derive(Default)]
struct RawRules(Vec<RawRule>);

impl<'de> Deserialize<'de> for RawRules {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RulesVisitor;

        impl<'de> Visitor<'de> for RulesVisitor {
            type Value = RawRules;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`rules` as a list of rules")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRules, A::Error> {
                let mut rules = Vec::new();
                loop {
                    let index = rules.len();
                    match seq.next_element::<Object<RawRule>>() {
                        Ok(Some(Object(rule))) if index < MAX_RULES => rules.push(rule),
                        Ok(Some(_)) => {
                            return Err(de::Error::custom(format_args!(
                                "`rules` holds more than {MAX_RULES} rules"
                            )))
                        }
                        Ok(None) => return Ok(RawRules(rules)),
                        Err(e) => {
                            return Err(de::Error::custom(format_args!(
                                "`rules[{index}]`: {}",
                                without_position(&e.to_string())
                            )))
                        }
                    }
                }
            }
        }

        d.deserialize_seq(RulesVisitor)
    }
}

/// Drops serde_json's trailing " at line L column C" from an inner error:
/// the parser adds the position again when the error reaches the top.
fn without_position(message: &str) -> &str {
    if let Some(at) = message.rfind(" at line ") {
        let tail = &message[at + " at line ".len()..];
        if let Some((line, column)) = tail.split_once(" column ") {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if digits(line) && digits(column) {
                return &message[..at];
            }
        }
    }
    message
}

/// Parses and validates the configuration text. Empty text (or only
/// whitespace) means no rules.
pub fn parse_config(text: &str) -> Result<Config, String> {
    if text
        .bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(Config::default());
    }
    let Object::<RawConfig>(raw) =
        serde_json::from_str(text).map_err(|e| format!("authz config: {e}"))?;
    let deny_status = match raw.deny_status {
        None => DEFAULT_DENY_STATUS,
        Some(value) => match value.as_u64() {
            Some(n @ 400..=599) => n as u16,
            _ => {
                return Err(format!(
                    "authz config: `deny_status` must be an HTTP status from 400 to 599, not {}",
                    describe(&value)
                ))
            }
        },
    };
    let mut rules = Vec::with_capacity(raw.rules.0.len());
    for (index, rule) in raw.rules.0.into_iter().enumerate() {
        rules.push(Rule {
            methods: string_list(rule.methods, index, "methods", "method", check_method)?,
            path_prefixes: string_list(
                rule.path_prefixes,
                index,
                "path_prefixes",
                "path",
                check_path_prefix,
            )?,
            callers: string_list(rule.callers, index, "callers", "caller", check_id)?,
            orgs: string_list(rule.orgs, index, "orgs", "organization", check_id)?,
        });
    }
    Ok(Config { rules, deny_status })
}

/// Validates one list field of rule `index`.
fn string_list(
    value: Option<Value>,
    index: usize,
    field: &str,
    what: &str,
    check: fn(&str) -> Result<(), String>,
) -> Result<Option<Vec<String>>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let items = match value {
        Value::Array(items) => items,
        other => {
            return Err(format!(
                "authz config: `rules[{index}].{field}` must be a list of strings, not {}",
                describe(&other)
            ))
        }
    };
    if items.is_empty() {
        return Err(format!(
            "authz config: `rules[{index}].{field}` is an empty list, which would match \
             nothing; leave the field out to match any {what}"
        ));
    }
    if items.len() > MAX_LIST_ITEMS {
        return Err(format!(
            "authz config: `rules[{index}].{field}` holds {} items; at most {MAX_LIST_ITEMS} are allowed",
            items.len()
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let item = match item {
            Value::String(s) => s,
            other => {
                return Err(format!(
                    "authz config: `rules[{index}].{field}[{i}]` must be a string, not {}",
                    describe(&other)
                ))
            }
        };
        if item.len() > MAX_STRING_BYTES {
            return Err(format!(
                "authz config: `rules[{index}].{field}[{i}]` is {} bytes long; at most {MAX_STRING_BYTES} are allowed",
                item.len()
            ));
        }
        check(&item).map_err(|why| format!("authz config: `rules[{index}].{field}[{i}]` {why}"))?;
        out.push(item);
    }
    Ok(Some(out))
}

/// A method is an HTTP token (RFC 9110 `tchar`s) without lower-case letters:
/// matching is case-sensitive, and every registered method is upper-case.
fn check_method(method: &str) -> Result<(), String> {
    if method.is_empty() {
        return Err(String::from(
            "is empty; a method is an upper-case token such as \"GET\"",
        ));
    }
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !method.bytes().all(tchar) {
        return Err(format!(
            "{:?} is not an HTTP method token",
            clip(method, 64)
        ));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "{:?} is not upper-case; methods match case-sensitively, write {:?}",
            clip(method, 64),
            clip(&method.to_ascii_uppercase(), 64)
        ));
    }
    Ok(())
}

/// A path prefix starts with `/` and could match some request the gateway
/// lets through: no query or fragment, no spaces or control characters, no
/// dot segments (the gateway refuses those in any spelling).
fn check_path_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("{:?} does not start with `/`", clip(prefix, 64)));
    }
    if prefix.contains(['?', '#']) {
        return Err(format!(
            "{:?} contains `?` or `#`; prefixes match the path only, without the query",
            clip(prefix, 64)
        ));
    }
    if prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{:?} contains a space or control character, which no request path does",
            clip(prefix, 64)
        ));
    }
    // The same spellings the gateway's check decodes.
    let decoded = prefix
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    if decoded.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!(
            "{:?} contains a dot segment; the gateway refuses those in request paths, so it would never match",
            clip(prefix, 64)
        ));
    }
    Ok(())
}

/// A caller id or organization must not be empty: an empty value must never
/// be able to match a request whose caller is missing one.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        Err(String::from("is empty"))
    } else {
        Ok(())
    }
}

/// Names a JSON value's type (and a number's value) for error messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => String::from("null"),
        Value::Bool(_) => String::from("a boolean"),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {:?}", clip(s, 64)),
        Value::Array(_) => String::from("a list"),
        Value::Object(_) => String::from("an object"),
    }
}

// ---------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------

/// Whether `prefix` matches `path` on a segment boundary, comparing raw
/// bytes: `/wiki` matches `/wiki`, `/wiki/` and `/wiki/x` but not
/// `/wikipedia`; a prefix ending in `/` matches anything below it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let (prefix, path) = (prefix.as_bytes(), path.as_bytes());
    path.starts_with(prefix)
        && (prefix.ends_with(b"/") || matches!(path.get(prefix.len()), None | Some(b'/')))
}

impl Rule {
    /// Whether every field this rule sets matches the request.
    pub fn matches(&self, method: &str, path: &str, caller_id: &str, caller_org: &str) -> bool {
        let any_eq = |list: &Option<Vec<String>>, value: &str| {
            list.as_ref().is_none_or(|l| l.iter().any(|x| x == value))
        };
        any_eq(&self.methods, method)
            && self
                .path_prefixes
                .as_ref()
                .is_none_or(|l| l.iter().any(|p| prefix_matches(p, path)))
            && any_eq(&self.callers, caller_id)
            && any_eq(&self.orgs, caller_org)
    }
}

/// The decision for one request.
pub fn decide(config: &Config, ctx: &Context, req: &Request) -> Decision {
    if config.rules.is_empty() {
        return Decision::allow();
    }
    let path = req.path();
    if config
        .rules
        .iter()
        .any(|r| r.matches(&req.method, path, &ctx.caller_id, &ctx.caller_org))
    {
        return Decision::allow();
    }
    // The query is never echoed: it may carry tokens.
    let method = clip(&req.method, MAX_ECHO_CHARS);
    let path = clip(path, MAX_ECHO_CHARS);
    let status = config.deny_status;
    let phrase = match plugin_sdk::status_phrase(status) {
        "" => status.to_string(),
        phrase => format!("{status} {phrase}"),
    };
    Denial::new(
        status,
        format!(
            "no authz rule allows {method} {path} for caller {:?} (org {:?})",
            clip(&ctx.caller_id, MAX_ECHO_CHARS),
            clip(&ctx.caller_org, MAX_ECHO_CHARS)
        ),
    )
    .with_body(format!("{phrase}: no authz rule allows {method} {path}\n"))
    .into()
}

/// At most `max` characters of `s`, with `...` appended when cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => String::from(s),
        Some((cut, _)) => format!("{}...", &s[..cut]),
    }
}

// ---------------------------------------------------------------------------
// Component exports
// ---------------------------------------------------------------------------

/// The plugin: the configuration `init` accepted.
pub struct Authz(Config);

impl Policy for Authz {
    fn init(config: &str) -> Result<Self, String> {
        parse_config(config).map(Authz)
    }

    fn on_request(&self, ctx: &Context, req: &Request) -> Decision {
        decide(&self.0, ctx, req)
    }
}

plugin_sdk::export_policy!(Authz);

#[cfg(test)]
mod tests {
    use super::*;

    use plugin_sdk::testing::request as req;

    fn ctx(caller_id: &str, caller_org: &str) -> Context {
        Context {
            caller_org: caller_org.into(),
            caller_id: caller_id.into(),
            ..plugin_sdk::testing::context()
        }
    }

    fn config(text: &str) -> Config {
        parse_config(text).unwrap_or_else(|e| panic!("config refused: {e}"))
    }

    fn error(text: &str) -> String {
        match parse_config(text) {
            Ok(c) => panic!("config accepted: {c:?}"),
            Err(e) => e,
        }
    }

    fn allowed(c: &Config, caller: &str, org: &str, method: &str, path: &str) -> bool {
        match decide(c, &ctx(caller, org), &req(method, path)) {
            Decision::Allow(edits) => {
                assert!(edits.is_empty(), "authz must not edit headers");
                true
            }
            Decision::Deny(_) => false,
        }
    }

    fn denial(c: &Config, caller: &str, org: &str, method: &str, path: &str) -> Denial {
        match decide(c, &ctx(caller, org), &req(method, path)) {
            Decision::Deny(d) => d,
            Decision::Allow(_) => panic!("{method} {path} allowed"),
        }
    }

    const EXAMPLE: &str = r#"{
        "rules": [
            {"methods": ["GET", "HEAD"], "path_prefixes": ["/wiki/", "/static/"],
             "callers": ["caller-id-1"], "orgs": ["acme"]},
            {"methods": ["POST"], "path_prefixes": ["/api/"]}
        ],
        "deny_status": 403
    }"#;

    #[test]
    fn no_rules_allow_everything() {
        for text in [
            "",
            "  \n\t",
            "{}",
            " { } ",
            r#"{"rules": []}"#,
            r#"{"deny_status": 404}"#,
        ] {
            let c = config(text);
            assert!(c.rules.is_empty(), "{text:?}");
            assert!(allowed(&c, "", "", "DELETE", "/anything?x=1"), "{text:?}");
            assert!(allowed(&c, "c", "o", "get", "*"), "{text:?}");
        }
        assert_eq!(config("").deny_status, 403);
        assert_eq!(config("{}").deny_status, 403);
    }

    #[test]
    fn example_config_parses() {
        let c = config(EXAMPLE);
        assert_eq!(c.deny_status, 403);
        assert_eq!(c.rules.len(), 2);
        assert_eq!(
            c.rules[0].methods.as_deref(),
            Some(&["GET".to_string(), "HEAD".to_string()][..])
        );
        assert_eq!(c.rules[1].callers, None);
        assert_eq!(c.rules[1].orgs, None);
    }

    #[test]
    fn example_decisions() {
        let c = config(EXAMPLE);
        // Rule 0: every field must match.
        assert!(allowed(&c, "caller-id-1", "acme", "GET", "/wiki/Main"));
        assert!(allowed(
            &c,
            "caller-id-1",
            "acme",
            "HEAD",
            "/static/app.css"
        ));
        assert!(!allowed(&c, "caller-id-2", "acme", "GET", "/wiki/Main"));
        assert!(!allowed(&c, "caller-id-1", "globex", "GET", "/wiki/Main"));
        assert!(!allowed(&c, "caller-id-1", "acme", "PUT", "/wiki/Main"));
        assert!(!allowed(&c, "caller-id-1", "acme", "GET", "/admin/"));
        // Rule 1: any caller, any org.
        assert!(allowed(&c, "anyone", "globex", "POST", "/api/v1/items"));
        assert!(allowed(&c, "", "", "POST", "/api/"));
        assert!(!allowed(&c, "anyone", "globex", "GET", "/api/v1/items"));
        // "/api/" ends in `/`: "/api" itself is not below it.
        assert!(!allowed(&c, "anyone", "globex", "POST", "/api"));
    }

    #[test]
    fn each_field_matches_on_its_own() {
        let c = config(r#"{"rules": [{"methods": ["GET", "HEAD"]}]}"#);
        assert!(allowed(&c, "x", "y", "GET", "/any"));
        assert!(allowed(&c, "x", "y", "HEAD", "/any"));
        assert!(!allowed(&c, "x", "y", "POST", "/any"));

        let c = config(r#"{"rules": [{"path_prefixes": ["/a", "/b/"]}]}"#);
        assert!(allowed(&c, "x", "y", "DELETE", "/a/1"));
        assert!(allowed(&c, "x", "y", "DELETE", "/b/1"));
        assert!(!allowed(&c, "x", "y", "DELETE", "/c/1"));

        let c = config(r#"{"rules": [{"callers": ["c1", "c2"]}]}"#);
        assert!(allowed(&c, "c1", "y", "GET", "/"));
        assert!(allowed(&c, "c2", "y", "GET", "/"));
        assert!(!allowed(&c, "c3", "y", "GET", "/"));
        assert!(!allowed(&c, "", "y", "GET", "/"));
        assert!(!allowed(&c, "C1", "y", "GET", "/"));

        let c = config(r#"{"rules": [{"orgs": ["acme"]}]}"#);
        assert!(allowed(&c, "x", "acme", "GET", "/"));
        assert!(!allowed(&c, "x", "globex", "GET", "/"));
        assert!(!allowed(&c, "x", "", "GET", "/"));
        // The tunnel's org is not the caller's org.
        assert!(!allowed(&c, "x", "other", "GET", "/"));
    }

    #[test]
    fn an_empty_rule_matches_everything() {
        let c = config(r#"{"rules": [{}]}"#);
        assert!(allowed(&c, "", "", "GET", "/"));
        assert!(allowed(&c, "x", "y", "DELETE", "/x/y?z"));
    }

    #[test]
    fn any_matching_rule_allows() {
        let c = config(
            r#"{"rules": [{"callers": ["alice"]}, {"orgs": ["acme"], "methods": ["GET"]}]}"#,
        );
        assert!(allowed(&c, "alice", "globex", "DELETE", "/x"));
        assert!(allowed(&c, "bob", "acme", "GET", "/x"));
        assert!(!allowed(&c, "bob", "acme", "DELETE", "/x"));
    }

    #[test]
    fn methods_are_case_sensitive() {
        let c = config(r#"{"rules": [{"methods": ["GET"]}]}"#);
        assert!(!allowed(&c, "x", "y", "get", "/"));
        assert!(!allowed(&c, "x", "y", "Get", "/"));
        assert!(!allowed(&c, "x", "y", "GETX", "/"));
        let c = config(r#"{"rules": [{"methods": ["M-SEARCH", "PROPFIND"]}]}"#);
        assert!(allowed(&c, "x", "y", "M-SEARCH", "/"));
    }

    #[test]
    fn path_prefix_matches_on_a_segment_boundary() {
        assert!(prefix_matches("/wiki", "/wiki"));
        assert!(prefix_matches("/wiki", "/wiki/"));
        assert!(prefix_matches("/wiki", "/wiki/x"));
        assert!(!prefix_matches("/wiki", "/wikipedia"));
        assert!(!prefix_matches("/wiki", "/wik"));
        assert!(!prefix_matches("/wiki", "/WIKI"));
        assert!(!prefix_matches("/wiki", "/x/wiki"));
        assert!(prefix_matches("/wiki/", "/wiki/"));
        assert!(prefix_matches("/wiki/", "/wiki/x/y"));
        assert!(!prefix_matches("/wiki/", "/wiki"));
        assert!(prefix_matches("/", "/"));
        assert!(prefix_matches("/", "/anything/at/all"));
        assert!(!prefix_matches("/", "*"));
        assert!(!prefix_matches("/", ""));
        assert!(prefix_matches("/a/b", "/a/b/c"));
        assert!(!prefix_matches("/a/b", "/a/bc"));

        let c = config(r#"{"rules": [{"path_prefixes": ["/wiki"]}]}"#);
        assert!(allowed(&c, "x", "y", "GET", "/wiki"));
        assert!(allowed(&c, "x", "y", "GET", "/wiki/"));
        assert!(allowed(&c, "x", "y", "GET", "/wiki/x"));
        assert!(!allowed(&c, "x", "y", "GET", "/wikipedia"));
    }

    #[test]
    fn the_query_is_stripped_before_matching() {
        assert_eq!(req("GET", "/a/b?c=d?e").path(), "/a/b");
        assert_eq!(req("GET", "/a/b").path(), "/a/b");
        assert_eq!(req("GET", "?x").path(), "");
        let c = config(r#"{"rules": [{"path_prefixes": ["/wiki"]}]}"#);
        assert!(allowed(&c, "x", "y", "GET", "/wiki?page=1"));
        assert!(allowed(&c, "x", "y", "GET", "/wiki/x?a=/b"));
        assert!(!allowed(&c, "x", "y", "GET", "/wikipedia?x"));
        // A prefix in the query grants nothing.
        assert!(!allowed(&c, "x", "y", "GET", "/admin?/wiki"));
        assert!(!allowed(&c, "x", "y", "GET", "/admin?next=/wiki/x"));
    }

    #[test]
    fn paths_are_matched_raw_not_decoded() {
        let c = config(r#"{"rules": [{"path_prefixes": ["/wiki/", "/a"]}]}"#);
        assert!(!allowed(&c, "x", "y", "GET", "/%77iki/x"));
        assert!(!allowed(&c, "x", "y", "GET", "/wiki%2Fx"));
        assert!(!allowed(&c, "x", "y", "GET", "/a%2Fb"));
        assert!(allowed(&c, "x", "y", "GET", "/wiki/a%20b"));
        let c = config(r#"{"rules": [{"path_prefixes": ["/a%2Fb"]}]}"#);
        assert!(allowed(&c, "x", "y", "GET", "/a%2Fb/c"));
        assert!(!allowed(&c, "x", "y", "GET", "/a%2fb/c"));
        assert!(!allowed(&c, "x", "y", "GET", "/a/b/c"));
    }

    #[test]
    fn denial_has_status_body_headers_and_reason() {
        let c = config(EXAMPLE);
        let d = denial(
            &c,
            "caller-id-9",
            "acme",
            "GET",
            "/admin/users?token=secret",
        );
        assert_eq!(d.status, 403);
        assert_eq!(
            d.body,
            b"403 Forbidden: no authz rule allows GET /admin/users\n".to_vec()
        );
        assert!(d
            .headers
            .iter()
            .any(|h| h.name == "content-type" && h.value == b"text/plain; charset=utf-8".to_vec()));
        assert!(d.headers.iter().any(|h| h.name == "x-content-type-options"));
        assert!(d.reason.contains("GET"), "{}", d.reason);
        assert!(d.reason.contains("/admin/users"), "{}", d.reason);
        assert!(d.reason.contains("caller-id-9"), "{}", d.reason);
        assert!(!d.reason.contains("secret"), "{}", d.reason);
        assert!(!String::from_utf8_lossy(&d.body).contains("secret"));
    }

    #[test]
    fn deny_status_is_configurable() {
        let c = config(r#"{"rules": [{"methods": ["GET"]}], "deny_status": 404}"#);
        let d = denial(&c, "x", "y", "POST", "/x");
        assert_eq!(d.status, 404);
        assert_eq!(
            d.body,
            b"404 Not Found: no authz rule allows POST /x\n".to_vec()
        );
        let c = config(r#"{"rules": [{"methods": ["GET"]}], "deny_status": 499}"#);
        let d = denial(&c, "x", "y", "POST", "/x");
        assert_eq!(d.status, 499);
        assert_eq!(d.body, b"499: no authz rule allows POST /x\n".to_vec());
        for status in [400, 599] {
            let text = format!(r#"{{"deny_status": {status}}}"#);
            assert_eq!(config(&text).deny_status, status);
        }
    }

    #[test]
    fn long_paths_are_not_echoed_whole() {
        let c = config(r#"{"rules": [{"methods": ["GET"]}]}"#);
        let path = format!("/{}", "é".repeat(5_000));
        let method = "X".repeat(1_000);
        let d = denial(&c, &"c".repeat(10_000), "y", &method, &path);
        let body = String::from_utf8(d.body).unwrap();
        assert!(body.len() < 1_000, "{} bytes", body.len());
        assert!(body.ends_with("...\n"));
        assert!(d.reason.len() < 2_000, "{} bytes", d.reason.len());
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc...");
        assert_eq!(clip("ééé", 2), "éé...");
    }

    #[test]
    fn bad_json_is_refused() {
        assert!(error("{").starts_with("authz config: "));
        assert!(error("not json").starts_with("authz config: "));
        assert!(error("[]").contains("JSON object"));
        assert!(error("null").contains("JSON object"));
        assert!(error("\"rules\"").contains("JSON object"));
        assert!(error(r#"{"rules": [] } x"#).contains("trailing"));
    }

    #[test]
    fn unknown_and_duplicate_fields_are_refused() {
        let e = error(r#"{"rule": []}"#);
        assert!(e.contains("unknown field `rule`"), "{e}");
        let e = error(r#"{"rules": [{"methods": ["GET"]}, {"method": ["GET"]}]}"#);
        assert!(e.contains("rules[1]"), "{e}");
        assert!(e.contains("unknown field `method`"), "{e}");
        assert_eq!(e.matches(" at line ").count(), 1, "{e}");
        let e = error(r#"{"rules": [{"methods": ["GET"], "methods": ["POST"]}]}"#);
        assert!(
            e.contains("rules[0]") && e.contains("duplicate field `methods`"),
            "{e}"
        );
        let e = error(r#"{"rules": [], "rules": []}"#);
        assert!(e.contains("duplicate field `rules`"), "{e}");
    }

    #[test]
    fn wrong_types_are_refused() {
        let e = error(r#"{"rules": {}}"#);
        assert!(e.contains("`rules` as a list of rules"), "{e}");
        let e = error(r#"{"rules": null}"#);
        assert!(e.contains("a list of rules"), "{e}");
        let e = error(r#"{"rules": [{}, "GET"]}"#);
        assert!(e.contains("rules[1]") && e.contains("a rule"), "{e}");
        // Derived struct deserializers would read a list of fields in order.
        let e = error(r#"{"rules": [["GET"]]}"#);
        assert!(e.contains("rules[0]") && e.contains("a rule"), "{e}");
        assert!(error(r#"[[]]"#).contains("JSON object"));
        let e = error(r#"{"rules": [{"methods": "GET"}]}"#);
        assert!(
            e.contains("`rules[0].methods` must be a list of strings"),
            "{e}"
        );
        let e = error(r#"{"rules": [{"orgs": null}]}"#);
        assert!(
            e.contains("`rules[0].orgs` must be a list of strings, not null"),
            "{e}"
        );
        let e = error(r#"{"rules": [{"callers": ["a", 7]}]}"#);
        assert!(e.contains("`rules[0].callers[1]` must be a string"), "{e}");
    }

    #[test]
    fn empty_lists_are_refused() {
        for field in ["methods", "path_prefixes", "callers", "orgs"] {
            let text = format!(r#"{{"rules": [{{}}, {{"{field}": []}}]}}"#);
            let e = error(&text);
            assert!(
                e.contains(&format!("`rules[1].{field}` is an empty list")),
                "{e}"
            );
            assert!(e.contains("leave the field out"), "{e}");
        }
    }

    #[test]
    fn bad_methods_are_refused() {
        let e = error(r#"{"rules": [{"methods": ["GET", "get"]}]}"#);
        assert!(e.contains("`rules[0].methods[1]`"), "{e}");
        assert!(e.contains("upper-case") && e.contains("\"GET\""), "{e}");
        let e = error(r#"{"rules": [{"methods": ["GE T"]}]}"#);
        assert!(e.contains("not an HTTP method token"), "{e}");
        let e = error(r#"{"rules": [{"methods": [""]}]}"#);
        assert!(e.contains("`rules[0].methods[0]` is empty"), "{e}");
        let e = error(r#"{"rules": [{"methods": ["GÉT"]}]}"#);
        assert!(e.contains("not an HTTP method token"), "{e}");
    }

    #[test]
    fn bad_path_prefixes_are_refused() {
        let e = error(r#"{"rules": [{"path_prefixes": ["/ok", "wiki/"]}]}"#);
        assert!(e.contains("`rules[0].path_prefixes[1]`"), "{e}");
        assert!(e.contains("does not start with `/`"), "{e}");
        assert!(error(r#"{"rules": [{"path_prefixes": [""]}]}"#).contains("start with `/`"));
        assert!(error(r#"{"rules": [{"path_prefixes": ["/a?b"]}]}"#).contains("`?`"));
        assert!(error(r#"{"rules": [{"path_prefixes": ["/a#b"]}]}"#).contains("`#`"));
        assert!(error(r#"{"rules": [{"path_prefixes": ["/a b"]}]}"#).contains("space"));
        for bad in [
            "/a/../b",
            "/a/./",
            "/..",
            "/a/%2E%2e/b",
            "/a/%2e",
            "/a/..%2fb",
            "/a%5c..",
        ] {
            let text = format!(r#"{{"rules": [{{"path_prefixes": ["{bad}"]}}]}}"#);
            assert!(error(&text).contains("dot segment"), "{bad}");
        }
        // Dots inside a segment are fine.
        config(r#"{"rules": [{"path_prefixes": ["/a..b/", "/.well-known/", "/v1.2"]}]}"#);
    }

    #[test]
    fn empty_ids_are_refused() {
        let e = error(r#"{"rules": [{"callers": [""]}]}"#);
        assert!(e.contains("`rules[0].callers[0]` is empty"), "{e}");
        let e = error(r#"{"rules": [{"orgs": ["acme", ""]}]}"#);
        assert!(e.contains("`rules[0].orgs[1]` is empty"), "{e}");
    }

    #[test]
    fn bad_deny_status_is_refused() {
        for bad in [
            "200", "399", "600", "0", "-403", "403.0", "\"403\"", "null", "true", "70000",
        ] {
            let text = format!(r#"{{"deny_status": {bad}}}"#);
            let e = error(&text);
            assert!(
                e.contains("`deny_status` must be an HTTP status from 400 to 599"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn limits_are_enforced() {
        let rule = r#"{"methods": ["GET"]}"#;
        let rules = |n: usize| alloc::vec![rule; n].join(",");
        assert_eq!(
            config(&format!(r#"{{"rules": [{}]}}"#, rules(MAX_RULES)))
                .rules
                .len(),
            MAX_RULES
        );
        let e = error(&format!(r#"{{"rules": [{}]}}"#, rules(MAX_RULES + 1)));
        assert!(e.contains("more than 1000 rules"), "{e}");

        let items = |n: usize| {
            (0..n)
                .map(|i| format!("\"c{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        config(&format!(
            r#"{{"rules": [{{"callers": [{}]}}]}}"#,
            items(MAX_LIST_ITEMS)
        ));
        let e = error(&format!(
            r#"{{"rules": [{{"callers": [{}]}}]}}"#,
            items(MAX_LIST_ITEMS + 1)
        ));
        assert!(e.contains("`rules[0].callers` holds 101 items"), "{e}");

        let long = "a".repeat(MAX_STRING_BYTES);
        config(&format!(r#"{{"rules": [{{"orgs": ["{long}"]}}]}}"#));
        let e = error(&format!(r#"{{"rules": [{{"orgs": ["{long}a"]}}]}}"#));
        assert!(e.contains("`rules[0].orgs[0]` is 1025 bytes long"), "{e}");
        let e = error(&format!(
            r#"{{"rules": [{{"path_prefixes": ["/{long}"]}}]}}"#
        ));
        assert!(e.contains("1025 bytes"), "{e}");
    }

    #[test]
    fn error_positions_are_stripped_once() {
        assert_eq!(without_position("x at line 1 column 2"), "x");
        assert_eq!(
            without_position("x at line one column 2"),
            "x at line one column 2"
        );
        assert_eq!(without_position("x"), "x");
    }

    /// Through the component's exports, as the gateway calls them.
    #[test]
    fn guest_init_and_on_request() {
        use plugin_sdk::bindings::Guest;
        let on = |method: &str, path: &str| {
            __PolicyComponent::on_request(ctx("caller-id-1", "acme"), req(method, path))
        };
        // Before any init: fail closed.
        match on("GET", "/wiki/") {
            Decision::Deny(d) => assert_eq!(d.status, 500),
            Decision::Allow(_) => panic!("allowed before init"),
        }
        __PolicyComponent::init(String::from(EXAMPLE)).unwrap();
        assert!(matches!(on("GET", "/wiki/x"), Decision::Allow(_)));
        assert!(matches!(on("GET", "/admin"), Decision::Deny(d) if d.status == 403));
        // A refused config does not leave the earlier one in force.
        let e = __PolicyComponent::init(String::from(r#"{"rules": [{"methods": []}]}"#));
        assert!(e.unwrap_err().contains("empty list"));
        assert!(matches!(on("GET", "/wiki/x"), Decision::Deny(d) if d.status == 500));
        __PolicyComponent::init(String::new()).unwrap();
        assert!(matches!(on("DELETE", "/admin"), Decision::Allow(_)));
    }
}
