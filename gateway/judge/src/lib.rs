//! What the gateway judges of a caller's request before it routes, runs
//! plugins or forwards anything: [`http_checks`] (framing that could
//! smuggle a second request, header rewriting) and [`judgement`] (the one
//! normalised path and Host that routing, checks and plugins share).
//!
//! These are the first code an attacker's bytes reach, so they live in a
//! crate of their own with no dependency but `http`: their property tests
//! (the security suite's fuzz targets) build and run in seconds, in release
//! too (`scripts/fuzz.sh`).

pub mod http_checks;
pub mod judgement;
