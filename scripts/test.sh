#!/usr/bin/env bash
# The whole test suite: unit tests, protocol tests, example configs, and the
# end-to-end tests that start real gateway and agent processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
