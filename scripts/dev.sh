#!/usr/bin/env bash
# `make dev`: install what is missing, start PostgreSQL and Redis (data in .local/dev, reused),
# migrate, create the demo users, then run web, worker, beat and the RunPod emulator (Procfile).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

export COMICGEN_WEB_HOST="${COMICGEN_WEB_HOST:-127.0.0.1}"
export COMICGEN_WEB_PORT="${COMICGEN_WEB_PORT:-8000}"
export COMICGEN_PG_PORT="${COMICGEN_PG_PORT:-5433}"
export COMICGEN_REDIS_PORT="${COMICGEN_REDIS_PORT:-6380}"
export EMULATOR_PORT="${EMULATOR_PORT:-8787}"
DATA="${COMICGEN_DATA_DIR:-$ROOT/.local/dev}"

export DATABASE_URL="${DATABASE_URL:-postgres://comicgen:comicgen@127.0.0.1:$COMICGEN_PG_PORT/comicgen}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:$COMICGEN_REDIS_PORT/0}"
export RUNPOD_BASE_URL="${RUNPOD_BASE_URL:-http://127.0.0.1:$EMULATOR_PORT/v2}"
# Keep RunPod's own queue short (the emulator runs 8 GPU workers): a high-priority panel
# then starts at the next free worker instead of behind a queue of normal ones.
export RUNPOD_MAX_IN_FLIGHT="${RUNPOD_MAX_IN_FLIGHT:-10}"
export COMICGEN_PUBLIC_URL="${COMICGEN_PUBLIC_URL:-http://$COMICGEN_WEB_HOST:$COMICGEN_WEB_PORT}"
export DEBUG="${DEBUG:-true}"
export MEDIA_ROOT="${MEDIA_ROOT:-$ROOT/.local/media}"
export PYTHONUNBUFFERED=1

ensure_packages
ensure_venv
ensure_secret_key

stop_all() {
    trap - EXIT INT TERM
    say "stopping PostgreSQL and Redis"
    stop_redis "$DATA/redis" "$COMICGEN_REDIS_PORT"
    stop_postgres "$DATA/pg"
}
trap stop_all EXIT INT TERM

say "starting PostgreSQL on 127.0.0.1:$COMICGEN_PG_PORT and Redis on 127.0.0.1:$COMICGEN_REDIS_PORT"
start_postgres "$DATA/pg" "$COMICGEN_PG_PORT"
start_redis "$DATA/redis" "$COMICGEN_REDIS_PORT"

"$PY" manage.py migrate --no-input -v 0
"$PY" manage.py collectstatic --no-input -v 0
"$PY" manage.py ensure_demo_users --url "http://$COMICGEN_WEB_HOST:$COMICGEN_WEB_PORT"
echo "    Stop everything with Ctrl-C. Data stays in $DATA for the next run." >&2

code=0
PATH="$VENV/bin:$PATH" "$VENV/bin/honcho" -f "$ROOT/Procfile" start || code=$?
# Ctrl-C (130) is the normal way to stop.
[ "$code" -eq 130 ] && code=0
exit "$code"
