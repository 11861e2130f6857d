"""Run the RunPod emulator (``python -m worker.emulator``) as a subprocess for tests.

Independent of Django so any fixture can use it::

    with EmulatorProcess(workers=8, latency=0.05) as emulator:
        client = RunPodClient(emulator.base_url, emulator.endpoint_id, emulator.api_key)
        ...
        emulator.configure(http_error_rate=0.3)
        assert emulator.stats()["runs_per_input"]["duplicates"] == 0
        assert ledger_ms == emulator.billed_ms()
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 15.0
PORT_ATTEMPTS = 3


class EmulatorError(RuntimeError):
    """The emulator did not start, or its control plane refused a request."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the emulator retries if another process takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmulatorProcess:
    """One ``worker.emulator`` process on loopback.

    ``settings`` are emulator flags with underscores (``workers=50, latency=0.2,
    rate_limit_status=0``); ``None`` values are left out. ``env`` adds environment variables.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        endpoint_id: str = "comicgen-test",
        api_key: str = "test-api-key",
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        **settings: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.endpoint_id = endpoint_id
        self.api_key = api_key
        self.settings = {key: value for key, value in settings.items() if value is not None}
        self.env = env or {}
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - read by output() after stop()
        self._session = requests.Session()

    # -- addresses ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """RunPod's API root as ``RUNPOD_BASE_URL`` expects it: ``<url>/v2``."""
        return f"{self.url}/v2"

    @property
    def endpoint_url(self) -> str:
        """``<url>/v2/<endpoint_id>``: append ``/run``, ``/status/<id>``..."""
        return f"{self.base_url}/{self.endpoint_id}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> EmulatorProcess:
        """Start the process and wait until it answers; returns self."""
        if self.process is not None:
            return self
        fixed_port = self.port is not None
        for _ in range(1 if fixed_port else PORT_ATTEMPTS):
            if not fixed_port:
                self.port = free_port(self.host)
            self.process = subprocess.Popen(
                self._command(),
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_until_ready():
                return self
            self.process.wait(timeout=5)
            self.process = None
        raise EmulatorError(f"the RunPod emulator did not start:\n{self.output()}")

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "worker.emulator"]
        flags = {
            "host": self.host,
            "port": self.port,
            "endpoint_id": self.endpoint_id,
            "api_key": self.api_key,
            **self.settings,
        }
        for name, value in flags.items():
            command += ["--" + name.replace("_", "-"), str(value)]
        return command

    def _wait_until_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if self._session.get(f"{self.url}/_emulator/config", timeout=1).ok:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.process.kill()
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate (SIGTERM, then SIGKILL after ``timeout``) and wait."""
        self._session.close()
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        """Everything the process printed so far (startup line, warnings, tracebacks)."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    # -- control plane ------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._session.request(
            method, f"{self.url}/_emulator/{path}", json=body, timeout=10
        )
        if not response.ok:
            raise EmulatorError(
                f"{method} /_emulator/{path}: HTTP {response.status_code} {response.text}"
            )
        return response.json()

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings live (``workers=20, latency=0.5``, ``ambiguous_run_next=1``,
        ``run_answer_delay=2.0``: any setting but host, port and render_threads); returns the
        whole config. A refused setting raises ``EmulatorError`` with the emulator's reason."""
        return self._control("POST", "config", settings)

    def config(self) -> dict[str, Any]:
        return self._control("GET", "config")

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats``: see ``worker.emulator`` for the shape."""
        return self._control("GET", "stats")

    def billed_ms(self) -> int:
        """The ``executionTime`` RunPod would bill since start or the last reset, in ms."""
        return int(self.stats()["billed_ms"])

    def billed_jobs(self) -> dict[str, int]:
        """Job id -> billed ms (only jobs that ran; a job cancelled in queue is absent)."""
        return dict(self.stats()["billed_jobs"])

    def reset(self, *, restore_config: bool = False) -> dict[str, Any]:
        """Forget jobs and counters; ``restore_config`` also restores the start-up settings."""
        return self._control("POST", "reset", {"restore_config": restore_config})

    def wait_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """Poll ``stats()`` until ``predicate(stats)`` holds; returns those stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"emulator stats never matched: {stats}")
            time.sleep(0.05)

    def wait_until_idle(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until no job is queued or running."""
        return self.wait_until(lambda stats: stats["in_flight"] == 0, timeout)
