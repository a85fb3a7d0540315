#!/usr/bin/env bash
# Start a real Ray head on 127.0.0.1 for the tests that run trials on a Ray cluster, or stop it.
#
#   tests/ray_head.sh start STATE_DIR PORT   # prints the head's address (IP:PORT) on stdout
#   tests/ray_head.sh stop STATE_DIR         # stops it and deletes STATE_DIR
#
# .ci/run and tests/conftest.py call it, with the project's .venv (which has Ray: the test extras). The
# head keeps its session files in STATE_DIR; two CPUs, a small object store, no dashboard. Ray binds this
# machine's own address even when asked for 127.0.0.1 (so that other nodes could join); the address
# printed is the one Ray took.
set -euo pipefail
STATE=${2:?usage: $0 start|stop STATE_DIR [PORT]}
PORT=${3:-63790}
RAY=$(dirname "$0")/../.venv/bin/ray
[ -x "$RAY" ] || RAY=ray

case "$1" in
  start)
    mkdir -p "$STATE"
    # No token: whether Ray asks for one depends on a file in ~/.ray that other runs may leave; a test head
    # asks for none, so that every test process joins it alike (the tests run their drivers the same way).
    RAY_AUTH_MODE=disabled "$RAY" start --head --port "$PORT" --num-cpus 2 --num-gpus 0 \
      --object-store-memory 300000000 --include-dashboard false --disable-usage-stats \
      --temp-dir "$STATE" >"$STATE/start.log" 2>&1 || { cat "$STATE/start.log" >&2; exit 1; }
    sed -n "s/.*ray start --address='\([^']*\)'.*/\1/p" "$STATE/start.log" | head -n 1
    ;;
  stop)
    "$RAY" stop --force >/dev/null 2>&1 || true
    rm -rf "$STATE"
    ;;
  *)
    echo "usage: $0 start|stop STATE_DIR [PORT]" >&2
    exit 2
    ;;
esac
