#!/usr/bin/env bash
# Installs what a fresh machine lacks for building and testing:
# cmake (pingora builds zlib-ng with it), PostgreSQL's server (the
# store's tests on PostgreSQL), Chromium and its WebDriver (the
# dashboard's browser tests), the wasm32-wasip2 target
# (policy plugins), rustfmt and clippy, cargo-deny (scripts/lint.sh) and
# Python's oauthlib (the OAuth 1.0a end-to-end test).
# Arguments name more Debian packages, installed when their command is
# missing (scripts/bench.sh: wrk, nginx, strace, openssl, libssl-dev).
# Safe to run repeatedly.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root to run: $*" >&2; exit 1; fi
}

missing=()
command -v cmake >/dev/null || missing+=(cmake)
# The dashboard's browser tests (tests/tests/dashboard.rs) drive Debian's
# headless Chromium through its WebDriver.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# The store's PostgreSQL tests run a throwaway cluster (scripts/pg.sh).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
for pkg in "$@"; do
  case "$pkg" in
    # The bench's reverse-proxy peer; Debian puts it in /usr/sbin, which a
    # user's PATH may lack. The bench runs its own from a temp folder (where
    # init starts services, the package also starts the system's nginx on
    # port 80; the bench neither needs nor touches it).
    nginx) command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx) ;;
    # OpenSSL's headers, for building the bench's rathole (native-tls).
    libssl-dev) pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev pkg-config) ;;
    *) command -v "$pkg" >/dev/null || missing+=("$pkg") ;;
  esac
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2 >&2
fi

if command -v rustup >/dev/null; then
  for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^$component"; then
      echo "setup: adding the $component component" >&2
      rustup component add "$component" >&2
    fi
  done
fi

# cargo-deny checks our dependencies (scripts/lint.sh). Built from
# crates.io, pinned: about five minutes on two cores, once.
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
  echo "setup: installing cargo-deny $CARGO_DENY_VERSION" >&2
  cargo install --quiet --locked cargo-deny --version "$CARGO_DENY_VERSION" >&2
fi

# Python's oauthlib (with cryptography and PyJWT, which its RSA-SHA1 needs):
# the independent OAuth 1.0a signer and verifying service of
# tests/tests/oauth1.rs (tests/oauth/).
if ! python3 -c 'import oauthlib, cryptography, jwt' 2>/dev/null; then
  echo "setup: installing oauthlib, cryptography and pyjwt for python3" >&2
  if ! python3 -m pip --version >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  pip_install() { python3 -m pip install --quiet "$@" oauthlib cryptography pyjwt >&2; }
  # --user is refused inside a virtualenv (then install into it); a
  # distribution's own python3 may refuse both without the last flag.
  pip_install --user || pip_install || pip_install --user --break-system-packages
  python3 -c 'import oauthlib, cryptography, jwt'
fi
