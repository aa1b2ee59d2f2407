//! Test-only plugin that misbehaves on purpose. Never deploy it.
//!
//! Its configuration names the failure: `loop` logs `spinning on PATH`
//! and spins forever, `trap` hits an
//! `unreachable` instruction, `grow` allocates until memory runs out,
//! `init-error` refuses to load, `init-loop` never returns from `init`,
//! `allow` and `deny` behave (so a test can
//! swap a good version for a bad one and back). `deny-NNN` denies with
//! status NNN. `count` allows and sets `x-faulty-served` to the number of
//! requests its sandbox has served, this one included; under it a path
//! containing `/trap` traps and one containing `/grow` first grows memory
//! by 2 MiB, so a test can watch sandboxes being reused and retired, and
//! one containing `/hog` asks for 64 MiB, accepts the refusal and allows
//! (a plugin that survives the memory limit).
//!
//! Built twice: as `faulty` and, with the feature `next` (the crate
//! `faulty-next`), as a later version of the same plugin (it identifies as
//! `faulty` 0.1.1) whose `allow` mode denies, so a test can replace one
//! with the other and watch the decisions change.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::{string::String, vec::Vec};
use core::cell::Cell;

use plugin_sdk::{Context, Decision, Denial, HeaderEdit, Policy, Request};

/// The configured failure, and how many requests this sandbox served.
pub struct Faulty {
    mode: String,
    served: Cell<u32>,
}

impl Policy for Faulty {
    fn init(config: &str) -> Result<Self, String> {
        let mode = String::from(config.trim());
        if mode == "init-error" {
            return Err(String::from("faulty: refusing to load, as configured"));
        }
        if mode == "init-loop" {
            let mut n: u64 = 0;
            loop {
                n = core::hint::black_box(n.wrapping_add(1));
            }
        }
        Ok(Faulty {
            mode,
            served: Cell::new(0),
        })
    }

    fn on_request(&self, _ctx: &Context, req: &Request) -> Decision {
        match self.mode.as_str() {
            "count" => {
                let served = self.served.get() + 1;
                self.served.set(served);
                if req.path_with_query.contains("/trap") {
                    panic!("trap");
                }
                if req.path_with_query.contains("/hog") {
                    let mut hoard: Vec<u8> = Vec::new();
                    let refused = hoard.try_reserve_exact(64 << 20).is_err();
                    core::hint::black_box(&hoard);
                    return Decision::allow_with(alloc::vec![HeaderEdit::set(
                        "x-faulty-hog",
                        if refused { "refused" } else { "granted" }
                    )]);
                }
                if req.path_with_query.contains("/grow") {
                    let block: Vec<u8> = alloc::vec![1u8; 2 << 20];
                    core::hint::black_box(&block);
                }
                Decision::allow_with(alloc::vec![HeaderEdit::set(
                    "x-faulty-served",
                    alloc::format!("{served}")
                )])
            }
            "loop" => {
                // Says it is inside, so a test can wait for that.
                plugin_sdk::host::log(
                    plugin_sdk::Level::Info,
                    &alloc::format!("spinning on {}", req.path_with_query),
                );
                let mut n: u64 = 0;
                loop {
                    n = core::hint::black_box(n.wrapping_add(1));
                }
            }
            "trap" => panic!("trap"),
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut block = Vec::with_capacity(1 << 20);
                    block.resize(1 << 20, 1u8);
                    hoard.push(core::hint::black_box(block));
                }
            }
            "allow" if !cfg!(feature = "next") => {
                Decision::allow_with(alloc::vec![HeaderEdit::set("x-faulty", "allow")])
            }
            other => {
                let status = other
                    .strip_prefix("deny-")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(403);
                Denial {
                    status,
                    headers: Vec::new(),
                    body: alloc::format!("denied by faulty ({other})\n").into_bytes(),
                    reason: alloc::format!("faulty mode {other}"),
                }
                .into()
            }
        }
    }
}

#[cfg(not(feature = "next"))]
plugin_sdk::export_policy!(Faulty);
#[cfg(feature = "next")]
plugin_sdk::export_policy!(Faulty, name = "faulty");
