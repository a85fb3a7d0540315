#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 for the distributed-storage tests, or stop it.
#
#   tests/postgres.sh start STATE_DIR PORT   # prints the server's URL on stdout
#   tests/postgres.sh stop STATE_DIR         # stops it and deletes STATE_DIR
#
# tests/conftest.py calls it (setup.sh installs Debian's PostgreSQL when run as root). The cluster
# lives in STATE_DIR, owned by the 'postgres' user when run as root (the server refuses to run as
# root), and listens on the loopback address only.
set -euo pipefail
STATE=${2:?usage: $0 start|stop STATE_DIR [PORT]}
PORT=${3:-54329}
DATA=$STATE/data

as_owner() {
  # from /, which the postgres user can enter (it may not enter the caller's folder)
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

bin_dir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && echo "$dir"
}

start() {
  if [ -z "$(bin_dir)" ]; then
    echo "PostgreSQL is not installed (setup.sh installs it as root; or: sudo apt-get install postgresql)" >&2
    exit 1
  fi
  local bin
  bin=$(bin_dir)
  if [ -f "$DATA/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true
  fi
  rm -rf "$STATE"
  mkdir -p "$STATE"
  [ "$(id -u)" = 0 ] && chown postgres "$STATE"
  as_owner "$bin/initdb" -D "$DATA" -U postgres -A trust --no-sync >/dev/null
  as_owner "$bin/pg_ctl" -D "$DATA" -l "$STATE/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $STATE -c fsync=off -c max_connections=100" start >/dev/null
  echo "postgresql+psycopg2://postgres@127.0.0.1:$PORT/postgres"
}

stop() {
  local bin
  bin=$(bin_dir) || exit 0
  if [ -f "$DATA/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$DATA" -m fast stop >/dev/null
  fi
  rm -rf "$STATE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop STATE_DIR [PORT]" >&2; exit 2 ;;
esac
