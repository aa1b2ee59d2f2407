#!/usr/bin/env bash
# The whole test suite: the habits (scripts/lint.sh: fmt, clippy,
# cargo-deny), the policy plugins' own tests (native), unit tests,
# protocol tests, example configs, and the end-to-end tests that start real
# gateway and agent processes with the plugins built for wasm32-wasip2.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/lint.sh
(cd plugins && cargo test --target-dir ../target/plugins)
(cd plugins/template && cargo test --target-dir ../../target/plugins)
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
