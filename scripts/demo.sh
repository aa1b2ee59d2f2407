#!/usr/bin/env bash
# The demo: gateway, agent and a sample local service on loopback with
# generated certificates; a tunnel and a caller are created, a few requests
# go through, and it keeps running with a curl line to try. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins
exec cargo run -q -p tests --bin demo -- "$@"
