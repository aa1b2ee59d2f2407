#!/usr/bin/env bash
# The benchmark: direct, through the tunnel, and through the peers (nginx
# as a reverse proxy, rathole over WebSocket+TLS), in one run. Installs
# wrk, and for the peers and the profile nginx, strace, the openssl CLI and
# OpenSSL's headers (rathole is built into target/bench-tools on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
tools=(wrk)
case " $* " in
  *" --no-peers "*) ;;
  *) tools+=(nginx openssl libssl-dev) ;;
esac
case " $* " in
  *" --profile "* | *" profile"* | *",profile"* | *"=profile"*) tools+=(strace) ;;
esac
scripts/setup.sh "${tools[@]}"
cargo build --release --workspace --bins
exec cargo run --release -q -p bench --bin bench -- "$@"
