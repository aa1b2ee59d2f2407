#!/usr/bin/env bash
# The whole test suite: the habits (scripts/lint.sh: fmt, clippy,
# cargo-deny), the policy plugins' own tests (native), unit tests,
# protocol tests, example configs (the store's tests also on a throwaway
# PostgreSQL), and the end-to-end tests that start real
# gateway and agent processes with the plugins built for wasm32-wasip2.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/lint.sh
(cd plugins && cargo test --target-dir ../target/plugins)
(cd plugins/template && cargo test --target-dir ../../target/plugins)
cargo build --workspace --bins
# A throwaway PostgreSQL cluster on a Unix socket: the store's tests and the
# several-gateway tests run on it as well as on SQLite. Stopped on exit.
pgdir=$(mktemp -d /tmp/tunnel-pg.XXXXXX)
trap 'scripts/pg.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
pg=$(scripts/pg.sh start "$pgdir")
export "$pg"
cargo test --workspace -- --test-threads=2
