//! `org-check`: the caller's organization must own the tunnel.
//!
//! This is the plugin that keeps a caller of one organization away from
//! another organization's tunnel. The gateway resolves both organizations
//! itself (the caller's from its credential, the tunnel's from the store);
//! nothing in the request can change them.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;

use plugin_sdk::{Context, Decision, Denial, Policy, Request};

/// Checks the configuration: the plugin takes none (an empty text or `{}`).
pub fn check_config(config: &str) -> Result<(), String> {
    let trimmed = config.trim();
    if trimmed.is_empty() || trimmed == "{}" {
        Ok(())
    } else {
        Err(String::from(
            "org-check takes no configuration: leave `config` out or set it to \"{}\"",
        ))
    }
}

/// The decision for one request.
pub fn decide(ctx: &Context) -> Decision {
    // Organization ids are not secrets; a plain comparison is fine. An empty
    // organization never matches, so a missing value cannot grant access.
    if !ctx.caller_org.is_empty() && ctx.caller_org == ctx.tunnel_org {
        Decision::allow()
    } else {
        Denial::new(
            403,
            alloc::format!(
                "caller org {:?} is not the tunnel's org {:?}",
                ctx.caller_org,
                ctx.tunnel_org
            ),
        )
        .with_body("403 Forbidden: this tunnel belongs to another organization\n")
        .into()
    }
}

/// The plugin: it holds no state.
pub struct OrgCheck;

impl Policy for OrgCheck {
    fn init(config: &str) -> Result<Self, String> {
        check_config(config).map(|()| OrgCheck)
    }

    fn on_request(&self, ctx: &Context, _req: &Request) -> Decision {
        decide(ctx)
    }
}

plugin_sdk::export_policy!(OrgCheck);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(caller: &str, tunnel: &str) -> Context {
        Context {
            tunnel_org: tunnel.into(),
            caller_org: caller.into(),
            ..plugin_sdk::testing::context()
        }
    }

    #[test]
    fn same_org_is_allowed() {
        assert!(matches!(decide(&ctx("acme", "acme")), Decision::Allow(e) if e.is_empty()));
    }

    #[test]
    fn other_org_is_denied_with_403() {
        match decide(&ctx("globex", "acme")) {
            Decision::Deny(d) => {
                assert_eq!(d.status, 403);
                assert!(d.reason.contains("globex"));
            }
            Decision::Allow(_) => panic!("cross-org request allowed"),
        }
    }

    #[test]
    fn empty_orgs_never_match() {
        assert!(matches!(decide(&ctx("", "")), Decision::Deny(_)));
    }

    #[test]
    fn identifies_with_its_package_name_and_version() {
        let id = <__PolicyComponent as plugin_sdk::bindings::Guest>::identify();
        assert_eq!(
            (id.name.as_str(), id.version.as_str()),
            ("org-check", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn config_must_be_empty() {
        assert!(check_config("").is_ok());
        assert!(check_config(" {} ").is_ok());
        assert!(check_config("{\"x\":1}")
            .unwrap_err()
            .contains("no configuration"));
    }
}
