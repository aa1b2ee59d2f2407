#!/usr/bin/env bash
# The long fuzz run of docs/security.md: the main property of each fuzz
# target of the security suite (path judgement, Host judgement, framing,
# handshake codec, OAuth header parser) with many inputs, in a release
# build. CI runs every property with proptest's default of 256 inputs.
#
#   scripts/fuzz.sh                  10 million inputs per target
#   scripts/fuzz.sh 100000           fewer
#   scripts/fuzz.sh 100000 host      only the named targets (path host
#                                    framing handshake oauth-header)
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-10000000}"
shift || true
only=" $* "
scripts/setup.sh
export PROPTEST_CASES="$cases"
# No shrinking budget worth speaking of is needed to report a failure.
export PROPTEST_MAX_SHRINK_ITERS=10000
run() {
  local what="$1"; shift
  if [ "$only" != "  " ] && [[ "$only" != *" $what "* ]]; then return; fi
  local start end
  start=$(date +%s)
  "$@" >/tmp/fuzz-"$what".log 2>&1 || { cat /tmp/fuzz-"$what".log; echo "fuzz: $what FAILED" >&2; exit 1; }
  end=$(date +%s)
  echo "fuzz: $what: $cases inputs per property, $((end - start)) s"
}
run path cargo test --release -p gateway-judge --lib an_accepted_path_has_no_confusable_segment
run host cargo test --release -p gateway-judge --lib an_accepted_host_rebuilds_to_itself
run framing cargo test --release -p gateway-judge --lib accepted_framing_is_unambiguous
run handshake cargo test --release -p protocol --test fuzz_handshake the_decoder_accepts_only_well_formed_messages
run oauth-header bash -c "cd plugins && cargo test --release --target-dir ../target/plugins -p oauth1 --test fuzz_header an_accepted_header_is_bounded_unique_and_reads_back"
