"""Health of every component the service needs, for GET /api/v1/health/.

It answers fast whoever asks and however often:
- Celery is not pinged. Each worker publishes a heartbeat, a Redis key with a short TTL, from a
  worker bootstep (comicgen/celery.py); the check reads those keys. A worker that stops or hangs
  stops beating, and its key expires by itself.
- The full report (PostgreSQL, Redis, the heartbeats, RunPod's /health) is computed at most every
  REPORT_FRESH_SECONDS and shared through Redis: one caller refreshes it under a lock while the
  others answer from the last report. With Redis down, each process keeps its own copy as long.
- Errors are summarised without URL paths, credentials or keys. Only staff see them; anonymous
  callers get up or down (see comicgen/views.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.db import connection

HEARTBEAT_PREFIX = "comicgen:heartbeat:"
HEARTBEAT_INTERVAL_SECONDS = 2.0
# Several missed beats before a worker counts as gone: a busy event loop may beat late.
HEARTBEAT_TTL_SECONDS = 10

REPORT_KEY = "comicgen:health:report"
LOCK_KEY = "comicgen:health:lock"
REPORT_FRESH_SECONDS = 5.0
# A report older than fresh is still served while one caller refreshes it, up to this age.
REPORT_KEEP_SECONDS = 60
# Longer than the slowest refresh (RunPod's connect + read timeouts below, plus the rest).
LOCK_SECONDS = 15
RUNPOD_CONNECT_TIMEOUT = 2.0
RUNPOD_READ_TIMEOUT = 3.0
MAX_ERROR_LENGTH = 300


class ComponentDown(Exception):
    """A check's own verdict: `message` is safe to show staff; `details` go in the report."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


@functools.lru_cache(maxsize=4)
def _redis_for(url: str) -> redis.Redis:
    # Short timeouts: a health check must answer "down" quickly, not hang with Redis.
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def get_redis() -> redis.Redis:
    return _redis_for(settings.REDIS_URL)


# -- worker heartbeats ------------------------------------------------------------------------


def publish_heartbeat(hostname: str, queues: list[str]) -> None:
    """Say that this worker is alive and which queues it consumes (called by the worker)."""
    beat = {"hostname": hostname, "queues": queues, "pid": os.getpid(), "at": time.time()}
    get_redis().set(f"{HEARTBEAT_PREFIX}{hostname}", json.dumps(beat), ex=HEARTBEAT_TTL_SECONDS)


def clear_heartbeat(hostname: str) -> None:
    """A worker shutting down cleanly disappears at once rather than when its key expires."""
    get_redis().delete(f"{HEARTBEAT_PREFIX}{hostname}")


def read_heartbeats() -> list[dict[str, Any]]:
    """The heartbeats of the workers alive now, by hostname."""
    client = get_redis()
    keys = sorted(client.scan_iter(match=f"{HEARTBEAT_PREFIX}*", count=500))
    beats = []
    for raw in client.mget(keys) if keys else []:
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            beat = json.loads(raw)
        except ValueError:
            continue
        if isinstance(beat, dict) and isinstance(beat.get("queues"), list):
            beats.append(beat)
    return beats


# -- the checks -------------------------------------------------------------------------------


def check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {}


def check_redis() -> dict[str, Any]:
    get_redis().ping()
    return {}


def check_celery() -> dict[str, Any]:
    """Down when no worker beats, or when a priority's queue has no worker to consume it (its
    batches would wait forever)."""
    from batches.models import Priority

    now = time.time()
    workers = [
        {
            "name": beat.get("hostname", "?"),
            "queues": beat["queues"],
            "last_seen_seconds": round(max(0.0, now - float(beat.get("at", now))), 1),
        }
        for beat in read_heartbeats()
    ]
    if not workers:
        raise ComponentDown(
            f"no Celery worker has sent a heartbeat in the last {HEARTBEAT_TTL_SECONDS} s",
            workers=[],
        )
    served = {queue for worker in workers for queue in worker["queues"]}
    unserved = [queue for queue in Priority.values if queue not in served]
    if unserved:
        raise ComponentDown(
            f"no worker consumes the queue(s): {', '.join(unserved)}", workers=workers
        )
    return {"workers": workers}


def check_runpod() -> dict[str, Any]:
    from batches.runpod import RunPodClient

    client = RunPodClient.from_settings(
        connect_timeout=RUNPOD_CONNECT_TIMEOUT, read_timeout=RUNPOD_READ_TIMEOUT
    )
    try:
        health = client.health()
    finally:
        client.close()
    return {
        "endpoint": settings.RUNPOD_ENDPOINT_ID,
        "workers": health.get("workers", {}),
        "jobs": health.get("jobs", {}),
    }


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": check_database,
    "redis": check_redis,
    "celery": check_celery,
    "runpod": check_runpod,
}


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def _without_path(match: re.Match[str]) -> str:
    # Scheme, host and port say where it failed; credentials, paths and queries may hold keys.
    try:
        parts = urlsplit(match.group(0))
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<url>"
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


def _secrets() -> list[str]:
    database = settings.DATABASES.get("default", {})
    candidates = [
        getattr(settings, "RUNPOD_API_KEY", ""),
        settings.SECRET_KEY,
        database.get("PASSWORD") or "",
        urlsplit(settings.REDIS_URL).password or "",
        getattr(settings, "COMICGEN_METRICS_TOKEN", "") or "",
    ]
    # Very short values would blank out ordinary words; they are not secrets worth the name.
    return [str(value) for value in candidates if value and len(str(value)) >= 6]


def describe_error(error: BaseException) -> str:
    """A one-line reason fit to show staff: no URL path or query, no credentials, no keys."""
    text = " ".join(str(error).split())
    text = _URL.sub(_without_path, text)
    for secret in _secrets():
        text = text.replace(secret, "***")
    message = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return message[:MAX_ERROR_LENGTH]


def run_health_checks() -> dict[str, Any]:
    """Run every check now; each reports `up` or `down` with the reason, never raising."""
    components: dict[str, Any] = {}
    for name, check in CHECKS.items():
        started = time.monotonic()
        try:
            components[name] = {"status": "up", **check()}
        except ComponentDown as verdict:
            components[name] = {"status": "down", "error": str(verdict), **verdict.details}
        except Exception as error:  # a health check reports any failure as "down"
            components[name] = {"status": "down", "error": describe_error(error)}
        components[name]["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    down = [name for name, component in components.items() if component["status"] != "up"]
    return {
        "status": "down" if down else "up",
        "down": down,
        "components": components,
        "checked_at": dt.datetime.now(tz=dt.UTC).isoformat(),
    }


# -- the shared report --------------------------------------------------------------------------


def report_age(report: dict[str, Any]) -> float:
    checked_at = dt.datetime.fromisoformat(report["checked_at"])
    return max(0.0, (dt.datetime.now(tz=dt.UTC) - checked_at).total_seconds())


def _load(client: redis.Redis) -> dict[str, Any] | None:
    raw = client.get(REPORT_KEY)
    if raw is None:
        return None
    try:
        report = json.loads(raw)
        report_age(report)
    except (ValueError, KeyError, TypeError):
        return None
    return report if isinstance(report, dict) else None


_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"


def _refresh(client: redis.Redis, token: str) -> dict[str, Any]:
    try:
        report = run_health_checks()
        # Should Redis have just gone down, this caller still has its report.
        with contextlib.suppress(redis.RedisError):
            client.set(REPORT_KEY, json.dumps(report), ex=REPORT_KEEP_SECONDS)
        return report
    finally:
        with contextlib.suppress(redis.RedisError):  # else the lock expires by itself
            client.eval(_RELEASE, 1, LOCK_KEY, token)


def _shared_report(client: redis.Redis) -> dict[str, Any]:
    cached = _load(client)
    if cached is not None and report_age(cached) < REPORT_FRESH_SECONDS:
        return cached
    token = secrets.token_hex(8)
    if client.set(LOCK_KEY, token, nx=True, ex=LOCK_SECONDS):
        return _refresh(client, token)
    if cached is not None:
        return cached  # another caller is refreshing it: the last report is recent enough
    # No report at all yet and another caller computing the first: wait for it.
    deadline = time.monotonic() + LOCK_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.05)
        cached = _load(client)
        if cached is not None:
            return cached
        if not client.exists(LOCK_KEY):
            break  # its holder failed without storing a report
    return run_health_checks()


class _LocalReport:
    """This process's copy of the report, used only while Redis cannot be reached."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.report: dict[str, Any] | None = None
        # After a Redis error, skip the shared report for a while: an unreachable Redis costs
        # a connect timeout per attempt, which callers must not pay on every request.
        self.redis_down_until = 0.0

    def get(self) -> dict[str, Any]:
        with self.lock:
            if self.report is None or report_age(self.report) >= REPORT_FRESH_SECONDS:
                self.report = run_health_checks()
            return self.report


_local = _LocalReport()


def health_report() -> dict[str, Any]:
    """The health report, at most REPORT_FRESH_SECONDS old (a little more while another caller
    refreshes it), with `age_seconds`. Fast: usually one Redis GET."""
    report = None
    if time.monotonic() >= _local.redis_down_until:
        try:
            report = _shared_report(get_redis())
        except redis.RedisError:
            _local.redis_down_until = time.monotonic() + REPORT_FRESH_SECONDS
    if report is None:
        report = _local.get()
    return {**report, "age_seconds": round(report_age(report), 1)}


def forget_report() -> None:
    """Drop the cached report (tests; an operator who wants a fresh one at once)."""
    _local.report = None
    _local.redis_down_until = 0.0
    with contextlib.suppress(redis.RedisError):
        get_redis().delete(REPORT_KEY)
