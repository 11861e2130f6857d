# Shared helpers for scripts/dev.sh and scripts/test.sh: install what is missing and run a
# project-local PostgreSQL cluster and Redis on loopback (never the system's own services).
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root to run: $*"
    fi
}

pg_bindir() {
    local dir
    for dir in "$(pg_config --bindir 2>/dev/null)" /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
    done
    return 1
}

# apt packages: Redis always, PostgreSQL only when its server binaries are absent, Chromium for
# the browser tests when asked (`ensure_packages browser`).
ensure_packages() {
    local wanted=()
    command -v redis-server >/dev/null || wanted+=(redis-server)
    pg_bindir >/dev/null || wanted+=(postgresql)
    if [ "${1:-}" = browser ]; then command -v chromium >/dev/null || wanted+=(chromium); fi
    [ ${#wanted[@]} -eq 0 ] && return 0
    say "installing ${wanted[*]} (apt)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${wanted[@]}" >/dev/null
    # Debian's postgresql package starts a system cluster; comicgen runs its own, so leave that
    # one alone but do not depend on it.
}

# The virtualenv, reinstalled only when pyproject.toml changes.
ensure_venv() {
    local stamp="$VENV/.comicgen-installed"
    if [ ! -x "$PY" ]; then
        say "creating the virtualenv in $VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
    fi
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        say "installing Python dependencies"
        "$PY" -m pip install -q --disable-pip-version-check --upgrade pip
        "$PY" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]"
        touch "$stamp"
    fi
}

# The diffusers worker's own virtualenv (.venv-worker): torch, diffusers, transformers,
# accelerate and the worker SDK, for tests/diffusers. Kept apart so the web app's .venv never
# holds torch. Reinstalled only when the worker's requirements change. torch is installed
# first, on its own, at the version pinned in worker/requirements-diffusers.txt: with no torch
# present, diffusers' and accelerate's loose `torch>=...` would pull the newest CUDA build
# (several GB). COMICGEN_SKIP_WORKER_VENV=1 skips it (and the tests that need it).
WORKER_VENV="${WORKER_VENV:-$ROOT/.venv-worker}"
WORKER_PY="$WORKER_VENV/bin/python"
ensure_worker_venv() {
    local stamp="$WORKER_VENV/.comicgen-installed" reqs="$ROOT/worker/requirements-diffusers.txt"
    local tests="$ROOT/worker/requirements-diffusers-test.txt" torch
    if [ ! -x "$WORKER_PY" ]; then
        say "creating the worker virtualenv in $WORKER_VENV"
        python3 -m venv "$WORKER_VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
    fi
    if [ ! -f "$stamp" ] || [ "$reqs" -nt "$stamp" ] || [ "$tests" -nt "$stamp" ] \
        || [ "$ROOT/worker/requirements.txt" -nt "$stamp" ]; then
        torch="$(grep -E '^torch==' "$reqs")" || die "$reqs must pin torch (torch==X.Y.Z)"
        say "installing the diffusers worker's dependencies ($torch first) in $WORKER_VENV"
        local started=$SECONDS
        "$WORKER_PY" -m pip install -q --disable-pip-version-check --upgrade pip
        "$WORKER_PY" -m pip install -q --disable-pip-version-check "$torch"
        "$WORKER_PY" -m pip install -q --disable-pip-version-check -r "$tests"
        say "worker virtualenv ready in $((SECONDS - started)) s"
        touch "$stamp"
    fi
}

# This checkout's Django SECRET_KEY: random, written once to .local/secret_key (readable by its
# owner only), read by comicgen/settings.py when the SECRET_KEY variable is not set. It is what
# lets `python manage.py ...` run here with no environment; `make clean` removes it.
ensure_secret_key() {
    local file="$ROOT/.local/secret_key"
    [ -s "$file" ] && return 0
    mkdir -p "$ROOT/.local"
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(50))' >"$file.tmp") \
        && mv "$file.tmp" "$file" || die "could not write $file"
}

# PostgreSQL refuses to run as root: run it as the `postgres` system user (created by Debian's
# package) or, failing that, a `comicgen` system user made for it.
pg_user() {
    if [ "$(id -u)" != 0 ]; then id -un; return; fi
    if id postgres >/dev/null 2>&1; then echo postgres; return; fi
    id comicgen >/dev/null 2>&1 || useradd --system --no-create-home comicgen
    echo comicgen
}

as_pg() {
    local user; user="$(pg_user)"
    if [ "$user" = "$(id -un)" ]; then "$@"; else runuser -u "$user" -- "$@"; fi
}

# start_postgres DIR PORT [fast|bench]: a cluster in DIR (created on first use, reused after),
# superuser comicgen/comicgen, database comicgen. "fast" trades durability for speed (tests);
# "bench" also loads pg_stat_statements to count statements.
start_postgres() {
    local dir="$1" port="$2" mode="${3:-}" bin; bin="$(pg_bindir)" || die "PostgreSQL not found"
    mkdir -p "$dir"
    chown "$(pg_user)" "$dir" 2>/dev/null || true
    as_pg test -w "$dir" || die "the PostgreSQL user $(pg_user) cannot write $dir; " \
        "clone the project somewhere it can reach (e.g. not under a private home folder)"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        say "creating a PostgreSQL cluster in $dir/data"
        local pwfile="$dir/pwfile"; echo comicgen >"$pwfile"; chown "$(pg_user)" "$pwfile" 2>/dev/null || true
        as_pg "$bin/initdb" -D "$dir/data" -U comicgen --pwfile="$pwfile" -A scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log"; die "initdb failed"; }
        rm -f "$pwfile"
    fi
    local opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300"
    case "$mode" in fast|bench)
        opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off" ;;
    esac
    # The benchmarks count the SQL statements comicgen runs per image (pg_stat_statements ships
    # with PostgreSQL; it only has to be loaded at start).
    [ "$mode" = bench ] && opts="$opts -c shared_preload_libraries=pg_stat_statements"
    if ! as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$opts" -w -t 60 start >/dev/null \
            || { tail -20 "$dir/postgres.log"; die "PostgreSQL did not start (port $port in use?)"; }
    fi
    PGPASSWORD=comicgen psql -h 127.0.0.1 -p "$port" -U comicgen -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname='comicgen'" | grep -q 1 \
        || PGPASSWORD=comicgen psql -h 127.0.0.1 -p "$port" -U comicgen -d postgres -qc "CREATE DATABASE comicgen"
}

stop_postgres() {
    local dir="$1" bin; bin="$(pg_bindir)" || return 0
    [ -f "$dir/data/postmaster.pid" ] || return 0
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >"$dir/stop.log" 2>&1 \
        || echo "could not stop PostgreSQL in $dir (see $dir/stop.log)" >&2
    return 0
}

# start_redis DIR PORT [ephemeral]
start_redis() {
    local dir="$1" port="$2" mode="${3:-}"
    mkdir -p "$dir"
    local persist=(--save 60 1000 --appendonly no)
    [ "$mode" = ephemeral ] && persist=(--save "" --appendonly no)
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "${persist[@]}" \
        || die "Redis did not start"
    local i
    for i in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "Redis did not answer on port $port (in use?); see $dir/redis.log"
}

stop_redis() {
    local dir="$1" port="$2"
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    rm -f "$dir/redis.pid"
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
