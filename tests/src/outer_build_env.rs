/// Settings of the outer cargo build that are for the host, not for a
/// nested build of plugins for `wasm32-wasip2`: removed from that build's
/// environment. Shared by `build.rs` (through `include!`) and the stories
/// that build a plugin themselves.
pub const OUTER_BUILD_ENV: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PROFILE_RELEASE_DEBUG",
];
