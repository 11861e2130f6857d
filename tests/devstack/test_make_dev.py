"""`make dev` as a newcomer runs it (scripts/dev.sh, on free ports and a data folder of its own):
it rides out a Redis restart, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A folder the PostgreSQL system user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="comicgen-devstack-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class DevStack:
    process: subprocess.Popen[bytes]
    ports: dict[str, str]
    data: Path
    web: str
    token: str

    @property
    def log(self) -> str:
        return (self.data / "make-dev.log").read_text(errors="replace")

    def leftovers(self) -> list[str]:
        return processes_mentioning(*self.ports.values())


@pytest.fixture
def dev_stack(data_dir: Path) -> Iterator[DevStack]:
    """`make dev` started as a newcomer would, on free ports, in a session of its own (as a
    terminal's foreground job); stopped with Ctrl-C afterwards if the test left it running."""
    ports = {name: str(free_port()) for name in ("WEB", "PG", "REDIS", "EMULATOR")}
    env = {key: value for key, value in os.environ.items() if key not in NOT_INHERITED}
    env.update(
        COMICGEN_WEB_PORT=ports["WEB"], COMICGEN_PG_PORT=ports["PG"],
        COMICGEN_REDIS_PORT=ports["REDIS"], EMULATOR_PORT=ports["EMULATOR"],
        COMICGEN_DATA_DIR=str(data_dir / "dev"), MEDIA_ROOT=str(data_dir / "media"),
        EMULATOR_WORKERS="4", EMULATOR_LATENCY="0.2", COMICGEN_WORKER_CONCURRENCY="4",
        # Beat sends the sweeper every 2 s, so it meets a broker outage within it.
        COMICGEN_SWEEP_INTERVAL="2",
    )  # fmt: skip
    with (data_dir / "make-dev.log").open("wb") as log:
        process = subprocess.Popen(
            ["bash", "scripts/dev.sh"], cwd=REPO_ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    web = f"http://127.0.0.1:{ports['WEB']}"
    log_path = data_dir / "make-dev.log"
    try:
        found = wait_for(
            lambda: re.search(r"API token for demo: (\w+)", log_path.read_text()), timeout=120
        )
        wait_for(lambda: _answers(f"{web}/accounts/login/"), timeout=60)
        yield DevStack(process, ports, data_dir, web, found.group(1))
    finally:
        if process.poll() is None:
            ctrl_c(process)
        # Whatever the test did, nothing of this stack outlives it.
        for line in processes_mentioning(*ports.values()):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


def ctrl_c(process: subprocess.Popen[bytes]) -> int:
    """Ctrl-C in a terminal: SIGINT to the foreground process group."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise


def test_the_dev_stack_rides_out_a_redis_restart_and_ctrl_c_stops_all_of_it(
    dev_stack: DevStack,
) -> None:
    assert submit_and_finish(dev_stack.web, dev_stack.token, "before")["status"] == "completed"

    # Two Celery processes on the Procfile's `worker` line, each under a name of its own (the
    # heartbeat /health/ reads is keyed by it), besides the high-queue worker.
    # The batch needed only one of the two: the other may still be starting on a busy machine.
    def ready() -> set[str]:
        return set(re.findall(r"\b(worker\.\d+|high)@\S+ ready\.", dev_stack.log))

    with contextlib.suppress(AssertionError):
        wait_for(lambda: ready() == {"worker.1", "worker.2", "high"}, timeout=60, interval=0.5)
    assert ready() == {"worker.1", "worker.2", "high"}, dev_stack.log[-3000:]

    # Redis dies and comes back empty, as a crash or `redis-cli shutdown` would leave it.
    redis_dir = dev_stack.data / "dev" / "redis"
    port = dev_stack.ports["REDIS"]
    subprocess.run(["redis-cli", "-p", port, "shutdown", "nosave"], check=False)
    time.sleep(8)  # long enough for beat and the workers to meet the outage
    subprocess.run(
        ["redis-server", "--bind", "127.0.0.1", "--port", port, "--dir", str(redis_dir),
         "--daemonize", "yes", "--pidfile", f"{redis_dir}/redis.pid",
         "--logfile", f"{redis_dir}/redis.log", "--save", "", "--appendonly", "no"],
        check=True,
    )  # fmt: skip
    print("injected: the dev stack's Redis shut down for 8 s and restarted empty")
    time.sleep(3)
    assert dev_stack.process.poll() is None, dev_stack.log[-3000:]
    assert submit_and_finish(dev_stack.web, dev_stack.token, "after")["status"] == "completed"

    code = ctrl_c(dev_stack.process)

    assert wait_for(lambda: not dev_stack.leftovers(), timeout=15), dev_stack.leftovers()
    assert code == 0, dev_stack.log[-3000:]


def test_a_stack_process_dying_mid_batch_stops_the_whole_stack_with_nothing_left_behind(
    dev_stack: DevStack,
) -> None:
    headers = {"Authorization": f"Token {dev_stack.token}"}
    body = {"title": "long", "images": [{"prompt": f"slow panel {n} [slow:20]"} for n in range(6)]}
    created = requests.post(f"{dev_stack.web}/api/v1/batches/", json=body, headers=headers)
    assert created.status_code == 202, created.text
    time.sleep(2)  # the worker's chunk threads are busy following their jobs

    # The emulator dies: honcho stops the rest (a Celery worker in warm shutdown waits for its
    # running chunks, longer than honcho waits for it).
    emulator = [line for line in dev_stack.leftovers() if "worker.emulator" in line]
    os.kill(int(emulator[0].split(":", 1)[0]), signal.SIGKILL)
    print("injected: the emulator process SIGKILLed while a batch ran")

    dev_stack.process.wait(90)
    assert wait_for(lambda: not dev_stack.leftovers(), timeout=15), dev_stack.leftovers()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
