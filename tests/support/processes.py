"""Start the project's real processes (Celery worker, the web server) for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class ServiceProcess:
    """A subprocess with a readiness check, its output kept in a file for failure reports."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], ready: Callable[[], bool]
    ):
        self.name = name
        self.command = command
        self.env = env
        self.ready = ready
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix=f"comicgen-{name}-", suffix=".log")[1])

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.output()[-4000:]}")
            try:
                if self.ready():
                    return self
            except Exception:  # not ready yet
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.output()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, no acks, as when a machine dies."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def celery_worker(
    env: dict[str, str],
    *,
    queues: str = "high,normal,low",
    concurrency: int = 8,
) -> ServiceProcess:
    """A real worker on the given queues."""
    from comicgen.celery import app

    node = f"test-{queues.replace(',', '-')}-{time.monotonic_ns()}@localhost"
    command = [
        str(REPO_ROOT / "scripts" / "supervise.sh"),
        str(BIN / "celery"), "-A", "comicgen", "worker", "--pool", "threads",
        "--concurrency", str(concurrency), "-Q", queues, "-n", node, "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip

    def ready() -> bool:
        replies = app.control.ping(destination=[node], timeout=0.5)
        return bool(replies)

    return ServiceProcess("celery", command, env, ready)


def celery_beat(env: dict[str, str], beat_dir: str) -> ServiceProcess:
    """The beat scheduler as its own process, as in production: it keeps retrying through a
    broker outage, where a worker's embedded beat (-B) shuts down."""
    command = [
        str(BIN / "celery"), "-A", "comicgen", "beat", "--loglevel", "INFO",
        "-s", os.path.join(beat_dir, "beat-schedule"),
    ]  # fmt: skip
    started = time.monotonic()
    return ServiceProcess("beat", command, env, lambda: time.monotonic() - started > 1.0)


def procfile_command(name: str) -> str:
    """The Procfile's command line for one process, so the tests run what `make dev` runs."""
    for line in (REPO_ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise LookupError(f"no {name!r} process in the Procfile")


def web_server(env: dict[str, str], port: int) -> ServiceProcess:
    """The Procfile's web process (HTTP and WebSockets, several worker processes) on this port.
    Run through bash as honcho runs it, `exec`ed so that its process group is the server's."""
    import requests

    server_env = {
        **env,
        "PATH": f"{BIN}:{env.get('PATH', '')}",
        "COMICGEN_WEB_HOST": "127.0.0.1",
        "COMICGEN_WEB_PORT": str(port),
    }
    command = ["bash", "-c", "exec " + procfile_command("web")]

    def ready() -> bool:
        return requests.get(f"http://127.0.0.1:{port}/admin/login/", timeout=1).status_code == 200

    return ServiceProcess("web", command, server_env, ready)


# The name tests/conftest.py imports (the web process was daphne before it was the Procfile's).
daphne = web_server
