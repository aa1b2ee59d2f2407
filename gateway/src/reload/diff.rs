//! What differs between two configurations, field by field, and which of
//! those fields can change while the gateway runs.

use serde_json::Value;

use crate::config::GatewayConfig;

/// Fields (and whole sections, by prefix) a running gateway applies
/// without a restart. Everything else is bound at start: listener
/// addresses and certificates, threads, the store, the agents' listener,
/// the admin listener, trace export and the log format (installed once per
/// process; only the log filter, `log.level`, can be swapped),
/// the public listener's address, TLS and keep-alive time (pingora fixes
/// its HTTP/2 idle timeout when the listener is built), and the plugin
/// engine's pool sizes, replay-set bounds and reload interval.
pub const LIVE_FIELDS: &[&str] = &[
    "routes",
    "routing",
    "public.max_body_bytes",
    "public.max_header_bytes",
    "public.max_connections",
    "public.max_connections_per_source",
    "public.header_read_timeout",
    "public.read_timeout",
    "public.write_timeout",
    "public.upstream_timeout",
    "callers.max_failures_per_minute",
    "log.level",
    "plugins.dir",
    "plugins.call_timeout",
    "plugins.sha256",
    "plugins.max_file_bytes",
    "plugins.max_requests_per_sandbox",
];

/// Whether `field` (a dotted path from [`Diff::fields`]) can change live.
pub fn is_live(field: &str) -> bool {
    LIVE_FIELDS.iter().any(|p| {
        field == *p
            || field
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// What differs between a running and a new configuration.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Every changed field, as a dotted path (`public.listen`,
    /// `plugins.sha256.authz`); lists (`routes`, `routing.plugins`) are
    /// named as a whole. Values are never included: some are secrets.
    pub fields: Vec<String>,
    /// Routes by name: new ones.
    pub routes_added: Vec<String>,
    /// Routes by name: gone.
    pub routes_removed: Vec<String>,
    /// Routes by name: present in both, with any setting changed (plugin
    /// chain and configurations included).
    pub routes_changed: Vec<String>,
}

impl Diff {
    /// The changed fields that cannot change live.
    pub fn fixed(&self) -> Vec<&str> {
        self.fields
            .iter()
            .map(String::as_str)
            .filter(|f| !is_live(f))
            .collect()
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Lists what differs between `old` and `new`.
pub fn diff(old: &GatewayConfig, new: &GatewayConfig) -> Diff {
    let (a, b) = (as_value(old), as_value(new));
    let mut d = Diff::default();
    walk("", &a, &b, &mut d.fields);
    let routes = |v: &Value| -> Vec<(String, Value)> {
        let mut seen = std::collections::HashMap::<String, usize>::new();
        v["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let name = r["name"].as_str().unwrap_or_default().to_string();
                // Two routes of one name (allowed) stay apart by their rank.
                let n = seen.entry(name.clone()).or_default();
                *n += 1;
                let key = if *n == 1 { name } else { format!("{name}#{n}") };
                (key, r.clone())
            })
            .collect()
    };
    let (ra, rb) = (routes(&a), routes(&b));
    for (name, route) in &rb {
        match ra.iter().find(|(n, _)| n == name) {
            None => d.routes_added.push(name.clone()),
            Some((_, before)) if before != route => d.routes_changed.push(name.clone()),
            Some(_) => {}
        }
    }
    for (name, _) in &ra {
        if !rb.iter().any(|(n, _)| n == name) {
            d.routes_removed.push(name.clone());
        }
    }
    d
}

fn as_value(cfg: &GatewayConfig) -> Value {
    // Every field is plain data (strings, numbers, paths, maps): this
    // cannot fail.
    serde_json::to_value(cfg).unwrap_or(Value::Null)
}

fn walk(at: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => walk(&path, p, q, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> GatewayConfig {
        let text = format!(
            r#"
[public]
listen = "127.0.0.1:0"
[agents]
listen = "127.0.0.1:0"
tls_cert = "c.pem"
tls_key = "k.pem"
[store]
path = "db"
kek_file = "kek"
{extra}
"#
        );
        let c: GatewayConfig = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        c.validate().unwrap();
        c
    }

    const ROUTES: &str = r#"
[[routes]]
name = "wiki"
host = "wiki.test"
tunnel = "wiki"
allow_without_plugins = true
[[routes]]
name = "jira"
host = "jira.test"
tunnel = "jira"
allow_without_plugins = true
"#;

    #[test]
    fn the_same_configuration_differs_in_nothing() {
        let d = diff(&cfg(ROUTES), &cfg(ROUTES));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d, Diff::default());
    }

    #[test]
    fn routes_are_reported_by_name() {
        let new = ROUTES
            .replace("name = \"jira\"", "name = \"ci\"")
            .replace("tunnel = \"wiki\"", "tunnel = \"wiki\"\nmax_body_bytes = 5");
        let d = diff(&cfg(ROUTES), &cfg(&new));
        assert_eq!(d.fields, ["routes"]);
        assert_eq!(d.routes_added, ["ci"]);
        assert_eq!(d.routes_removed, ["jira"]);
        assert_eq!(d.routes_changed, ["wiki"]);
        assert!(d.fixed().is_empty());
    }

    #[test]
    fn a_plugin_configuration_change_is_a_route_change() {
        let with = |rules: &str| {
            format!(
                "[plugins]\ndir = \"p\"\n[[routes]]\nname = \"wiki\"\nhost = \"wiki.test\"\ntunnel = \"wiki\"\n[[routes.plugins]]\nname = \"authz\"\nconfig = {rules}\n"
            )
        };
        let d = diff(
            &cfg(&with(r#"'{"rules":[]}'"#)),
            &cfg(&with(r#"{ rules = [ { methods = ["GET"] } ] }"#)),
        );
        assert_eq!(d.routes_changed, ["wiki"]);
        assert!(d.fixed().is_empty(), "{d:?}");
    }

    #[test]
    fn settings_bound_at_start_are_named_each() {
        let old = cfg(ROUTES);
        let mut new = cfg(ROUTES);
        new.public.listen = "127.0.0.1:8443".into();
        new.server.threads += 1;
        new.store.refresh = std::time::Duration::from_secs(9);
        new.agents.max_connections = 7;
        new.admin.listen = Some("off".into());
        new.log.format = telemetry::LogFormat::Json;
        new.telemetry
            .headers
            .insert("authorization".into(), "Bearer s3cret".into());
        new.plugins.max_sandboxes = 3;
        // Live ones beside them.
        new.public.max_body_bytes = 10;
        new.callers.max_failures_per_minute = 5;
        new.plugins.call_timeout = std::time::Duration::from_millis(80);
        new.log.level = "debug".into();
        let d = diff(&old, &new);
        let mut fixed = d.fixed();
        fixed.sort();
        assert_eq!(
            fixed,
            [
                "admin.listen",
                "agents.max_connections",
                "log.format",
                "plugins.max_sandboxes",
                "public.listen",
                "server.threads",
                "store.refresh",
                "telemetry.headers.authorization",
            ]
        );
        for live in [
            "public.max_body_bytes",
            "callers.max_failures_per_minute",
            "plugins.call_timeout",
            "log.level",
        ] {
            assert!(d.fields.iter().any(|f| f == live), "{live}: {d:?}");
        }
        // Field names only: a secret value never appears.
        assert!(!format!("{d:?}").contains("s3cret"));
    }

    #[test]
    fn live_fields_match_by_whole_names() {
        assert!(is_live("routes"));
        assert!(is_live("routing.base_domain"));
        assert!(is_live("plugins.sha256.authz"));
        assert!(!is_live("plugins.sha256x"));
        assert!(!is_live("public.listen"));
        assert!(!is_live("public.max_body_bytes_extra"));
    }
}
