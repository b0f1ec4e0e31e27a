#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server on loopback for the store tests and
# prints the URL to use (DECKHAND_TEST_PG). Debian's server binaries are
# used directly (not the system service) so this works in containers
# without systemd. Usage: eval "$(bash .ci/postgres.sh start DIR [PORT])"
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?data directory}; port=${3:-54329}

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -n "$bin" ] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }

# The server refuses to run as root: use Debian's postgres account then.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "$cmd" in
start)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  if [ ! -f "$dir/PG_VERSION" ]; then
    # Trust on loopback only: a test server holding nothing of value.
    as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
  fi
  # fsync stays on: the tests exercise the same durability path as production.
  as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=300" start >&2
  echo "export DECKHAND_TEST_PG=postgres://postgres@127.0.0.1:$port/postgres"
  ;;
stop)
  as_pg "$bin/pg_ctl" -D "$dir" -m fast stop >&2 || true
  ;;
*) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac
