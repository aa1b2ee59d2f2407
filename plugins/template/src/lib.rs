//! `my-policy`: a request must carry a header with one of the configured
//! values, e.g. `{"header": "x-team", "allow": ["blue", "green"]}`.
//!
//! Made to be copied (see README.md). The parts:
//!
//! - [`Config`]: the route's `config`, parsed and checked in `init`. A
//!   mistake refuses the plugin at load with the message returned here.
//! - [`MyPolicy::on_request`]: the rule. Change it.
//! - `plugin_sdk::export_policy!`: makes the type the component.
//! - The tests at the bottom run natively (`cargo test`).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::{format, string::String, vec::Vec};

use plugin_sdk::{host, Context, Decision, Denial, Level, Policy, Request};
use serde::Deserialize;

/// The status of a denial.
pub const DENY_STATUS: u16 = 403;

/// The route's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The header to look at (any case).
    pub header: String,
    /// The values that let a request through.
    pub allow: Vec<String>,
}

/// The plugin: what `init` parsed. Keep nothing of one request for the
/// next.
pub struct MyPolicy {
    config: Config,
}

impl Policy for MyPolicy {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("my-policy config: {e}"))?;
        if config.header.is_empty() {
            return Err("my-policy config: `header` is empty".into());
        }
        if config.allow.is_empty() {
            return Err("my-policy config: `allow` lists no value".into());
        }
        Ok(MyPolicy { config })
    }

    fn on_request(&self, ctx: &Context, req: &Request) -> Decision {
        let header = &self.config.header;
        match req.header_str(header) {
            Some(value) if self.config.allow.iter().any(|a| a == value) => Decision::allow(),
            found => {
                // The log and the reason go to the gateway, never to the
                // caller. Header values may be secrets: name, don't echo.
                host::log(
                    Level::Info,
                    &format!("refused caller {} on route {}", ctx.caller_id, ctx.route),
                );
                let why = if found.is_some() {
                    "has a value not allowed"
                } else {
                    "is missing"
                };
                Denial::new(DENY_STATUS, format!("header {header} {why}"))
                    .with_body(format!("{DENY_STATUS}: header {header} {why}\n"))
                    .into()
            }
        }
    }
}

plugin_sdk::export_policy!(MyPolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_sdk::{testing, Header};

    const CONFIG: &str = r#"{"header": "x-team", "allow": ["blue", "green"]}"#;

    fn with_team(team: &str) -> Request {
        let mut req = testing::request("GET", "/wiki/");
        req.headers.push(Header::new("x-team", team));
        req
    }

    #[test]
    fn an_allowed_value_goes_through() {
        let policy: MyPolicy = testing::init(CONFIG).unwrap();
        assert!(policy
            .on_request(&testing::context(), &with_team("green"))
            .is_allow());
    }

    #[test]
    fn a_missing_or_other_value_is_denied_and_logged() {
        testing::reset();
        let policy: MyPolicy = testing::init(CONFIG).unwrap();
        let ctx = testing::context();
        for (req, why) in [
            (with_team("red"), "has a value not allowed"),
            (testing::request("GET", "/wiki/"), "is missing"),
        ] {
            let decision = policy.on_request(&ctx, &req);
            let denial = decision.denial().expect("denied");
            assert_eq!(denial.status, DENY_STATUS);
            assert!(denial.reason.contains(why), "{}", denial.reason);
        }
        assert_eq!(testing::logs().len(), 2);
    }

    #[test]
    fn a_bad_configuration_is_refused_with_its_reason() {
        let e = MyPolicy::init(r#"{"header": "x-team"}"#).err().unwrap();
        assert!(e.contains("missing field `allow`"), "{e}");
        let e = MyPolicy::init(r#"{"header": "", "allow": ["a"]}"#)
            .err()
            .unwrap();
        assert!(e.contains("`header` is empty"), "{e}");
    }
}
