"""`make dev` as a newcomer runs it (scripts/dev.sh, on free ports and a data folder of its own):
it rides out a Redis restart, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import wait_for
from tests.support.emulator import free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
# What the test suite's own environment points at; the dev stack must use its own.
NOT_INHERITED = {
    "DATABASE_URL", "REDIS_URL", "MEDIA_ROOT", "RUNPOD_BASE_URL", "RUNPOD_ENDPOINT_ID",
    "RUNPOD_API_KEY", "COMICGEN_PUBLIC_URL", "DJANGO_SETTINGS_MODULE", "COMICGEN_TEST_REDIS_DIR",
}  # fmt: skip


def processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes that contain any of these strings."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(needle in command for needle in needles) and "pytest" not in command:
            found.append(f"{entry.name}: {command.strip()}")
    return found


def submit_and_finish(web: str, token: str, title: str) -> dict[str, Any]:
    headers = {"Authorization": f"Token {token}"}
    body = {
        "title": title,
        "params": {"width": 128, "height": 128, "steps": 4},
        "images": [{"prompt": f"{title} {n}"} for n in range(6)],
    }
    created = requests.post(f"{web}/api/v1/batches/", json=body, headers=headers, timeout=10)
    assert created.status_code == 202, created.text

    def done() -> dict[str, Any] | None:
        batch = requests.get(
            f"{web}/api/v1/batches/{created.json()['id']}/", headers=headers, timeout=10
        ).json()
        return batch if batch["status"] in ("completed", "partial", "failed") else None

    return wait_for(done, timeout=90, interval=0.5)


def test_the_dev_stack_rides_out_a_redis_restart_and_ctrl_c_stops_all_of_it(
    tmp_path: Path,
) -> None:
    ports = {name: str(free_port()) for name in ("WEB", "PG", "REDIS", "EMULATOR")}
    env = {key: value for key, value in os.environ.items() if key not in NOT_INHERITED}
    env.update(
        COMICGEN_WEB_PORT=ports["WEB"], COMICGEN_PG_PORT=ports["PG"],
        COMICGEN_REDIS_PORT=ports["REDIS"], EMULATOR_PORT=ports["EMULATOR"],
        COMICGEN_DATA_DIR=str(tmp_path / "dev"), MEDIA_ROOT=str(tmp_path / "media"),
        EMULATOR_WORKERS="4", EMULATOR_LATENCY="0.2", COMICGEN_WORKER_CONCURRENCY="4",
    )  # fmt: skip
    web = f"http://127.0.0.1:{ports['WEB']}"
    log_path = tmp_path / "make-dev.log"
    with log_path.open("wb") as log:
        stack = subprocess.Popen(
            ["bash", "scripts/dev.sh"], cwd=REPO_ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        token = wait_for(
            lambda: re.search(r"API token for demo: (\w+)", log_path.read_text()), timeout=120
        ).group(1)
        wait_for(lambda: _answers(f"{web}/accounts/login/"), timeout=60)
        assert submit_and_finish(web, token, "before")["status"] == "completed"

        # Redis dies and comes back empty, as a crash or `redis-cli shutdown` would leave it.
        redis_dir = tmp_path / "dev" / "redis"
        subprocess.run(["redis-cli", "-p", ports["REDIS"], "shutdown", "nosave"], check=False)
        time.sleep(2)
        subprocess.run(
            ["redis-server", "--bind", "127.0.0.1", "--port", ports["REDIS"], "--dir",
             str(redis_dir), "--daemonize", "yes", "--pidfile", f"{redis_dir}/redis.pid",
             "--logfile", f"{redis_dir}/redis.log", "--save", "", "--appendonly", "no"],
            check=True,
        )  # fmt: skip
        print("injected: the dev stack's Redis shut down and restarted empty")
        time.sleep(3)
        assert stack.poll() is None, log_path.read_text()[-3000:]
        assert submit_and_finish(web, token, "after")["status"] == "completed"
    finally:
        # Ctrl-C in a terminal: SIGINT to the foreground process group.
        os.killpg(stack.pid, signal.SIGINT)
        try:
            code = stack.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            raise
    left = wait_for(lambda: not processes_mentioning(*ports.values()) or None, timeout=15)
    assert left is True, processes_mentioning(*ports.values())
    assert code == 0, log_path.read_text()[-3000:]


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
