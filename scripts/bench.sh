#!/usr/bin/env bash
# The benchmark: direct vs through the tunnel, in one run. Installs wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh wrk
cargo build --release --workspace --bins
exec cargo run --release -q -p tests --bin bench -- "$@"
