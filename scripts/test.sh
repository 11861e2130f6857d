#!/usr/bin/env bash
# `make test`: install what is missing, start a throwaway PostgreSQL and Redis on free ports,
# run pytest (arguments pass through), then remove them.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_packages browser
ensure_venv
ensure_secret_key

RUN_DIR="$(mktemp -d /tmp/comicgen-test.XXXXXX)"
chmod 755 "$RUN_DIR"
PG_PORT="$(free_port)"
REDIS_PORT="$(free_port)"

cleanup() {
    stop_redis "$RUN_DIR/redis" "$REDIS_PORT"
    stop_postgres "$RUN_DIR/pg"
    rm -rf "$RUN_DIR"
}
# HUP and PIPE too: a test run piped into `head` must not leave a cluster behind.
trap cleanup EXIT INT TERM HUP PIPE

say "throwaway PostgreSQL on 127.0.0.1:$PG_PORT and Redis on 127.0.0.1:$REDIS_PORT"
start_postgres "$RUN_DIR/pg" "$PG_PORT" fast
start_redis "$RUN_DIR/redis" "$REDIS_PORT" ephemeral

export DATABASE_URL="postgres://comicgen:comicgen@127.0.0.1:$PG_PORT/comicgen"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
export COMICGEN_TEST_REDIS_DIR="$RUN_DIR/redis"
export MEDIA_ROOT="$RUN_DIR/media"
export PYTHONUNBUFFERED=1

"$PY" -m pytest "$@"
