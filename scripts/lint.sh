#!/usr/bin/env bash
# The habits CI checks, for the workspace, the plugins and the plugin
# template: formatting (`cargo fmt --check`), clippy with warnings as
# errors on every target, and cargo-deny on the dependencies (deny.toml,
# plugins/deny.toml: licenses, duplicate versions, sources, and RustSec
# advisories when github.com is reachable; LINT_REQUIRE_ADVISORIES=1 makes
# an unreachable advisory database an error).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo "lint: $*" >&2; }

step "cargo fmt --check"
cargo fmt --all --check
(cd plugins && cargo fmt --all --check)
(cd plugins/template && cargo fmt --check)

step "cargo clippy -D warnings"
cargo clippy --quiet --workspace --all-targets -- -D warnings
(cd plugins && cargo clippy --quiet --all-targets --target-dir ../target/plugins -- -D warnings)
(cd plugins && cargo clippy --quiet --target wasm32-wasip2 --target-dir ../target/plugins -- -D warnings)
(cd plugins/template && cargo clippy --quiet --all-targets --target-dir ../../target/plugins -- -D warnings)

step "cargo deny (licenses, bans, sources)"
cargo deny --log-level error check bans licenses sources
cargo deny --log-level error --manifest-path plugins/Cargo.toml check bans licenses sources
cargo deny --log-level error --manifest-path plugins/template/Cargo.toml --config plugins/deny.toml \
  check bans licenses sources

# RustSec's database lives on github.com. Where it cannot be fetched, say
# so loudly rather than pass in silence.
if cargo deny --log-level error fetch db >/dev/null 2>&1; then
  step "cargo deny (advisories)"
  cargo deny --log-level error check advisories
  cargo deny --log-level error --manifest-path plugins/Cargo.toml check advisories
  cargo deny --log-level error --manifest-path plugins/template/Cargo.toml \
    --config plugins/deny.toml check advisories
else
  echo "lint: WARNING: RustSec advisories NOT checked: the advisory database" \
    "(github.com/rustsec/advisory-db) could not be fetched from this machine;" \
    "run 'cargo deny check advisories' where it can be" >&2
  # Where the database is reachable, a failed fetch must fail the run.
  if [ "${LINT_REQUIRE_ADVISORIES:-0}" = 1 ]; then
    echo "lint: LINT_REQUIRE_ADVISORIES=1: failing" >&2
    exit 1
  fi
fi
