#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests (and for trying several
# gateways on one machine): Debian's server, a new cluster in DIR, listening
# only on a Unix socket in DIR (no TCP port), with one superuser `tunnel`
# trusted on that socket. Run as root, the cluster belongs to the
# unprivileged `postgres` user (initdb refuses root).
#
#   scripts/pg.sh start DIR   makes and starts it; prints the line
#                             TUNNEL_TEST_PG=postgres://…  (export it)
#   scripts/pg.sh stop DIR    stops it (DIR is left for the caller)
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")

bindir=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
  if [ -x "$d/initdb" ]; then bindir=$d; break; fi
done
if [ -z "$bindir" ]; then
  echo "pg.sh: no PostgreSQL server found (/usr/lib/postgresql/*/bin/initdb); run scripts/setup.sh" >&2
  exit 1
fi

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
      id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
      chown postgres "$dir"
    fi
    chmod 0700 "$dir"
    as_owner "$bindir/initdb" --pgdata="$dir/data" --username=tunnel --auth=trust \
      --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    # No TCP; the socket in DIR; fsync off: the cluster is thrown away.
    # Enough connections for the test suite's gateways (each holds a pool
    # of up to 8 and one listening connection) run two at a time.
    as_owner "$bindir/pg_ctl" --pgdata="$dir/data" --log="$dir/server.log" --wait \
      --options="-c listen_addresses='' -c unix_socket_directories='$dir' -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
      start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "TUNNEL_TEST_PG=postgres://tunnel@localhost/postgres?host=$dir"
    ;;
  stop)
    [ -d "$dir/data" ] || exit 0
    as_owner "$bindir/pg_ctl" --pgdata="$dir/data" --mode=fast --wait stop >/dev/null 2>&1 || true
    ;;
  *) usage ;;
esac
