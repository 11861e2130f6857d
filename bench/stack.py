"""The benchmarks' harness: a whole comicgen stack on loopback, brought up and torn down per run.

`Stack` starts a throwaway PostgreSQL and Redis (scripts/lib.sh's own functions), migrates,
then runs the Procfile's processes with the bench's settings: the web server (the Procfile's
own line), two Celery workers (threads, concurrency 8 each), the high-queue worker (concurrency 4),
beat, and the RunPod emulator. It creates a user with a token, and drives the REST API over
real HTTP and the WebSocket with a real client (aiohttp), as an API client would. The bench
process itself never imports Django: it reads the database with plain SQL (psycopg) where a
figure needs a stored timestamp.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LIB = ROOT / "scripts" / "lib.sh"
# As `make dev` runs the Procfile: COMICGEN_WORKER_PROCESSES Celery workers (scripts/dev.sh's
# default) of COMICGEN_WORKER_CONCURRENCY threads each (the Procfile's), and the high worker's.
WORKER_PROCESSES = int(os.environ.get("COMICGEN_WORKER_PROCESSES", "2"))
WORKER_CONCURRENCY = int(os.environ.get("COMICGEN_WORKER_CONCURRENCY", "8"))
# Images per chunk task: the settings' COMICGEN_CHUNK_SIZE default (a bench that sets another
# warms up with more or fewer chunks than threads; none does).
CHUNK_SIZE = 10
# Names of the worker services, as honcho names them.
WORKERS = tuple(f"worker.{number}" for number in range(1, WORKER_PROCESSES + 1))
HIGH_WORKER_CONCURRENCY = 4
TERMINAL = {"completed", "partial", "failed", "cancelled"}
SMALL_PARAMS = {"width": 256, "height": 256, "steps": 4}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lib(function: str, *args: str) -> None:
    """Run one function of scripts/lib.sh (start_postgres, stop_redis, ...)."""
    subprocess.run(
        ["bash", "-c", f'source "{LIB}" && {function} "$@"', "lib", *args],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def procfile_command(name: str) -> str:
    """The Procfile's command line for one process (`web`, `worker`, ...)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise LookupError(f"no {name!r} process in the Procfile")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": sys.version.split()[0],
    }


# --- processes ---------------------------------------------------------------------------------


class Service:
    """One process of the stack (its own process group, so a stop reaches its children)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log()[-3000:]}")
            try:
                if ready():
                    return
            except Exception:  # not ready yet
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log()[-3000:]}")

    def pids(self) -> list[int]:
        """This process and all its descendants (from /proc)."""
        if self.process is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def memory_mb(self) -> dict[str, float]:
        """Peak (VmHWM) and current (VmRSS) resident memory, summed over the process tree.
        The supervising shell and celery's own tree count too: that is what the host pays."""
        totals = {"VmHWM": 0.0, "VmRSS": 0.0}
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as status:
                    for line in status:
                        key = line.split(":", 1)[0]
                        if key in totals:
                            totals[key] += int(line.split()[1]) / 1024
            except OSError:
                continue
        return {"peak_mb": round(totals["VmHWM"], 1), "rss_mb": round(totals["VmRSS"], 1)}

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        except ProcessLookupError:
            pass


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class StackConfig:
    """What a bench sets: emulator flags, and env for the web and worker processes."""

    emulator: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    # Point COMICGEN_PUBLIC_URL at the web server (RunPod webhooks on), as `make dev` does.
    webhooks: bool = True


class Stack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.dir = Path(tempfile.mkdtemp(prefix="comicgen-bench-"))
        self.dir.chmod(0o755)
        self.pg_port, self.redis_port = free_port(), free_port()
        self.web_port, self.emulator_port = free_port(), free_port()
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.emulator_url = f"http://127.0.0.1:{self.emulator_port}"
        self.db_url = f"postgres://comicgen:comicgen@127.0.0.1:{self.pg_port}/comicgen"
        self.services: dict[str, Service] = {}
        self.token = ""
        self.secret_key = secrets.token_urlsafe(50)
        self.session = requests.Session()
        self._started_db = False

    # life cycle

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            for name, service in self.services.items():
                print(f"--- {name} log tail ({service.log_path}) ---", file=sys.stderr)
                print(service.log()[-2000:], file=sys.stderr)
        self.stop()

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "DJANGO_SETTINGS_MODULE": "comicgen.settings",
            "PYTHONUNBUFFERED": "1",
            # This checkout's code, whatever the venv's editable install points at.
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": self.db_url,
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "RUNPOD_BASE_URL": f"{self.emulator_url}/v2",
            "RUNPOD_ENDPOINT_ID": "comicgen-bench",
            "RUNPOD_API_KEY": "bench-key",
            "MEDIA_ROOT": str(self.dir / "media"),
            "COMICGEN_PUBLIC_URL": self.web_url if self.config.webhooks else "",
            "COMICGEN_DEFAULT_MONTHLY_BUDGET": "100000",
            "DEBUG": "false",
            "SECRET_KEY": self.secret_key,
            # The benches measure the pipeline, not the per-user limits.
            "COMICGEN_THROTTLE_SUBMIT": "100000/s",
            "COMICGEN_THROTTLE_ESTIMATE": "100000/s",
        }
        env.update(self.config.env)
        return env

    def start(self) -> None:
        started = time.monotonic()
        lib("start_postgres", str(self.dir / "pg"), str(self.pg_port), "bench")
        lib("start_redis", str(self.dir / "redis"), str(self.redis_port), "ephemeral")
        self._started_db = True
        env = self.env()
        python = str(VENV_BIN / "python")
        subprocess.run(
            [python, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True
        )
        self.token = subprocess.run(
            [python, "manage.py", "shell", "-c", _CREATE_USER], cwd=ROOT, env=env, check=True,
            capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        self.session.headers["Authorization"] = f"Token {self.token}"

        emulator = {"workers": 8, "latency": 1.5, "jitter": 0.0, **self.config.emulator}
        emulator_command = [
            python, "-m", "worker.emulator", "--port", str(self.emulator_port),
            "--endpoint-id", "comicgen-bench", "--api-key", "bench-key",
        ]  # fmt: skip
        for name, value in emulator.items():
            emulator_command += ["--" + name.replace("_", "-"), str(value)]
        supervise = str(ROOT / "scripts" / "supervise.sh")
        celery = str(VENV_BIN / "celery")
        commands = {
            "emulator": emulator_command,
            # The Procfile's own line, through bash as honcho runs it: the bench measures
            # the web server `make dev` and the tests run.
            "web": ["bash", "-c", "exec " + procfile_command("web")],
            **{
                name: [supervise, celery, "-A", "comicgen", "worker", "--pool", "threads",
                       "--concurrency", str(WORKER_CONCURRENCY), "-Q", "high,normal,low",
                       "-n", f"{name}@%h", "--loglevel", "INFO"]
                for name in WORKERS
            },
            "worker_high": [supervise, celery, "-A", "comicgen", "worker", "--pool", "threads",
                            "--concurrency", str(HIGH_WORKER_CONCURRENCY), "-Q", "high",
                            "-n", "high@%h", "--loglevel", "INFO"],
            "beat": [celery, "-A", "comicgen", "beat", "--schedule",
                     str(self.dir / "celerybeat-schedule"), "--loglevel", "INFO"],
        }  # fmt: skip
        web_env = {**env, "COMICGEN_WEB_HOST": "127.0.0.1", "COMICGEN_WEB_PORT": str(self.web_port)}
        for name, command in commands.items():
            service_env = web_env if name == "web" else env
            self.services[name] = Service(name, command, service_env, self.dir).start()
        self.services["emulator"].wait_for(
            lambda: requests.get(f"{self.emulator_url}/_emulator/config", timeout=1).ok
        )
        self.services["web"].wait_for(
            lambda: requests.get(f"{self.web_url}/admin/login/", timeout=1).status_code == 200
        )
        for name in (*WORKERS, "worker_high"):
            self.services[name].wait_for(lambda name=name: " ready." in self.services[name].log())
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        for name in ("beat", "worker_high", *WORKERS, "web", "emulator"):
            if name in self.services:
                self.services[name].stop()
        if self._started_db:
            lib("stop_redis", str(self.dir / "redis"), str(self.redis_port))
            lib("stop_postgres", str(self.dir / "pg"))
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # the emulator's control plane

    def memory_mb(self, name: str) -> dict[str, float]:
        """A service's memory (Service.memory_mb); "worker" is every worker process's summed,
        what the host pays for the Procfile's `worker` line."""
        if name != "worker":
            return self.services[name].memory_mb()
        each = [self.services[worker].memory_mb() for worker in WORKERS]
        return {key: round(sum(figures[key] for figures in each), 1) for key in each[0]}

    def emulator_stats(self) -> dict[str, Any]:
        return requests.get(f"{self.emulator_url}/_emulator/stats", timeout=10).json()

    def configure_emulator(self, **settings: Any) -> None:
        requests.post(f"{self.emulator_url}/_emulator/config", json=settings, timeout=10)

    def reset_emulator(self) -> None:
        requests.post(f"{self.emulator_url}/_emulator/reset", json={}, timeout=10)

    # the API

    def submit(
        self, count: int, *, prefix: str = "panel", params: dict[str, Any] | None = None,
        priority: str = "normal", session: requests.Session | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        body = {
            "title": f"bench {prefix}",
            "priority": priority,
            "params": params or SMALL_PARAMS,
            "images": [{"prompt": f"{prefix} {n}"} for n in range(count)],
        }
        response = (session or self.session).post(
            f"{self.web_url}/api/v1/batches/", json=body, timeout=120
        )
        if response.status_code != 202:
            raise RuntimeError(f"submit: HTTP {response.status_code} {response.text[:500]}")
        return response.json()

    def warm_up(self) -> None:
        """Run a batch of one chunk per worker thread to its end before anything is measured, so
        that every worker process has run chunks (imports done, connection pool opened, its
        event announcer connected): a stack that has been up for a while. A 5-panel warm-up
        reached one worker process of two, and the other paid for its first chunks inside the
        measured run."""
        batch = self.submit(WORKER_PROCESSES * WORKER_CONCURRENCY * CHUNK_SIZE, prefix="warm-up")
        self.wait_terminal(batch["id"], timeout=300)
        cold = [name for name in WORKERS if "process_chunk_task" not in self.services[name].log()]
        if cold:
            raise RuntimeError(f"the warm-up ran no chunk in {', '.join(cold)}")

    def new_session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.token}"
        return session

    # the database, read directly (timestamps the API does not expose)

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url) as connection:
            return connection.execute(query, args).fetchall()

    def reset_statement_count(self) -> None:
        """Start counting SQL statements from zero (pg_stat_statements, loaded by the bench's
        PostgreSQL)."""
        with psycopg.connect(self.db_url, autocommit=True) as connection:
            connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            connection.execute("SELECT pg_stat_statements_reset()")

    def statement_count(self) -> int:
        """SQL statements comicgen ran since reset_statement_count: every statement of every
        process, but the bench's own reads (its polling of the batch row, this count)."""
        rows = self.sql(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            "WHERE query NOT LIKE %s AND query NOT ILIKE %s",
            "SELECT status, created_at, finished_at FROM batches_batch%",
            "%pg_stat_statements%",
        )
        return int(rows[0][0])

    def batch_row(self, batch_id: int) -> dict[str, Any]:
        status, created, finished = self.sql(
            "SELECT status, created_at, finished_at FROM batches_batch WHERE id = %s", batch_id
        )[0]
        return {"status": status, "created_at": created, "finished_at": finished}

    def wait_terminal(self, batch_id: int, timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.db_url, autocommit=True) as connection:
            while time.monotonic() < deadline:
                row = connection.execute(
                    "SELECT status, created_at, finished_at FROM batches_batch WHERE id = %s",
                    (batch_id,),
                ).fetchone()
                if row and row[0] in TERMINAL:
                    return {"status": row[0], "created_at": row[1], "finished_at": row[2]}
                time.sleep(0.05)
        raise TimeoutError(f"batch {batch_id} not finished in {timeout}s")

    def image_finished_at(self, batch_id: int) -> dict[int, float]:
        rows = self.sql(
            "SELECT id, finished_at FROM batches_imagejob WHERE batch_id = %s "
            "AND status = 'completed'",
            batch_id,
        )
        return {image_id: finished.timestamp() for image_id, finished in rows}

    # the WebSocket

    def watch(self, batch_id: int, connect_timeout: float = 15.0) -> Watcher:
        return Watcher(self, batch_id).start(connect_timeout)


# The bench's author may ask for high priority (the priority bench does).
_CREATE_USER = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_user("bench", password="bench")
user.user_permissions.add(Permission.objects.get(codename="submit_high_priority"))
print(Token.objects.create(user=user).key)
"""


class Watcher:
    """A WebSocket client on `/ws/batches/<id>/?token=`: records when each image's
    `image.updated` event with status `completed` arrives (wall clock), in a thread."""

    def __init__(self, stack: Stack, batch_id: int) -> None:
        self.stack = stack
        self.batch_id = batch_id
        self.completed_at: dict[int, float] = {}
        self.events = 0
        self.seqs: list[int] = []
        self.terminal_at: float | None = None
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.error: BaseException | None = None

    def start(self, timeout: float = 15.0) -> Watcher:
        self._thread.start()
        if not self.connected.wait(timeout):
            raise RuntimeError(f"WebSocket did not connect: {self.error!r}")
        return self

    async def _run(self) -> None:
        url = f"ws://127.0.0.1:{self.stack.web_port}/ws/batches/{self.batch_id}/?token={self.stack.token}"
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(
                    url, headers={"Origin": self.stack.web_url}, max_msg_size=0, heartbeat=None
                ) as socket_,
            ):
                async for message in socket_:
                    now = time.time()
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    event = json.loads(message.data)
                    self.events += 1
                    self.seqs.append(event["seq"])
                    if event["type"] == "batch.snapshot":
                        self.connected.set()
                        for image in event["batch"]["images"]:
                            if image["status"] == "completed":
                                self.completed_at.setdefault(image["id"], now)
                    elif event["type"] == "image.updated":
                        if event["image"]["status"] == "completed":
                            self.completed_at.setdefault(event["image"]["id"], now)
                    elif event["type"] == "batch.updated" and event["status"] in TERMINAL:
                        self.terminal_at = now
                    if self._stop.is_set():
                        break
        except BaseException as error:  # reported by start() or the bench
            self.error = error
            self.connected.set()

    def wait_for(self, images: int, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.completed_at) >= images:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        self._stop.set()

    @property
    def inversions(self) -> int:
        """Events that arrived with a seq not above the one before (0 when in order)."""
        return sum(
            1 for before, after in zip(self.seqs, self.seqs[1:], strict=False) if after <= before
        )


# --- reporting ---------------------------------------------------------------------------------


def report(name: str, rows: list[tuple[str, Any, str, str]], figures: dict[str, Any]) -> None:
    """Print a table (figure, value, target, verdict) and one JSON line for machines."""
    width = max(len(row[0]) for row in rows)
    print(f"\n== {name} ==")
    print(f"{'figure'.ljust(width)}  {'value':>12}  {'target':>12}  verdict")
    for label, value, target, verdict in rows:
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{label.ljust(width)}  {shown:>12}  {target:>12}  {verdict}")
    print(json.dumps({"bench": name, "machine": machine(), **figures}, default=str))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def runpod_calls(stats: dict[str, Any]) -> dict[str, int]:
    requests_ = stats["requests"]
    return {op: sum(requests_.get(op, {}).values()) for op in ("run", "status", "cancel")}
