#!/usr/bin/env bash
# `make dev`: install what is missing, start PostgreSQL and Redis (data in .local/dev, reused),
# migrate, create the demo users, then run web, worker, beat and the RunPod emulator (Procfile).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

export COMICGEN_WEB_HOST="${COMICGEN_WEB_HOST:-127.0.0.1}"
export COMICGEN_WEB_PORT="${COMICGEN_WEB_PORT:-8000}"
# Web server processes (uvicorn; HTTP and WebSockets): Django runs one process's sync views in one
# thread, so a second process keeps webhooks and pages from queueing behind submits.
export COMICGEN_WEB_WORKERS="${COMICGEN_WEB_WORKERS:-2}"
export COMICGEN_PG_PORT="${COMICGEN_PG_PORT:-5433}"
export COMICGEN_REDIS_PORT="${COMICGEN_REDIS_PORT:-6380}"
export EMULATOR_PORT="${EMULATOR_PORT:-8787}"
DATA="${COMICGEN_DATA_DIR:-$ROOT/.local/dev}"

export DATABASE_URL="${DATABASE_URL:-postgres://comicgen:comicgen@127.0.0.1:$COMICGEN_PG_PORT/comicgen}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:$COMICGEN_REDIS_PORT/0}"
export RUNPOD_BASE_URL="${RUNPOD_BASE_URL:-http://127.0.0.1:$EMULATOR_PORT/v2}"
# One RunPod endpoint per model, as in production: the emulator serves two endpoint ids, and
# flux-dev panels go to the second, so a batch mixing models lands on two endpoints (its
# /_emulator/stats count each under "endpoints").
export EMULATOR_ENDPOINT_ID="${EMULATOR_ENDPOINT_ID:-comicgen-local,comicgen-local-flux}"
export RUNPOD_ENDPOINTS="${RUNPOD_ENDPOINTS:-sdxl=comicgen-local,sdxl-turbo=comicgen-local,flux-dev=comicgen-local-flux}"
export COMICGEN_PUBLIC_URL="${COMICGEN_PUBLIC_URL:-http://$COMICGEN_WEB_HOST:$COMICGEN_WEB_PORT}"
export DEBUG="${DEBUG:-true}"
export MEDIA_ROOT="${MEDIA_ROOT:-$ROOT/.local/media}"
export PYTHONUNBUFFERED=1

ensure_packages
ensure_venv
ensure_secret_key

# The Procfile's processes run in a session of their own (setsid), so that stopping the stack
# can stop every one of them and whatever they started (Celery's threads, supervise.sh's
# children), however honcho itself ended: Ctrl-C, an error, or a process that exited.
stack_pid=""
stop_all() {
    local code=$?
    trap - EXIT INT TERM
    if [ -n "$stack_pid" ] && kill -0 -- "-$stack_pid" 2>/dev/null; then
        say "stopping web, workers, beat and the emulator"
        kill -TERM -- "-$stack_pid" 2>/dev/null || true
        local i
        for i in $(seq 100); do kill -0 -- "-$stack_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$stack_pid" 2>/dev/null || true
    fi
    say "stopping PostgreSQL and Redis"
    stop_redis "$DATA/redis" "$COMICGEN_REDIS_PORT"
    stop_postgres "$DATA/pg"
    exit "$code"
}
# Ctrl-C is the normal way to stop: exit 0 then.
trap stop_all EXIT TERM
trap 'exit 0' INT

say "starting PostgreSQL on 127.0.0.1:$COMICGEN_PG_PORT and Redis on 127.0.0.1:$COMICGEN_REDIS_PORT"
start_postgres "$DATA/pg" "$COMICGEN_PG_PORT"
start_redis "$DATA/redis" "$COMICGEN_REDIS_PORT"

"$PY" manage.py migrate --no-input -v 0
"$PY" manage.py collectstatic --no-input -v 0
"$PY" manage.py ensure_demo_users --url "http://$COMICGEN_WEB_HOST:$COMICGEN_WEB_PORT"
echo "    Stop everything with Ctrl-C. Data stays in $DATA for the next run." >&2

# Two Celery worker processes by default: see the Procfile's comment on `worker`.
PATH="$VENV/bin:$PATH" setsid "$VENV/bin/honcho" -f "$ROOT/Procfile" start \
    --concurrency "worker=${COMICGEN_WORKER_PROCESSES:-2}" &
stack_pid=$!
wait "$stack_pid"
