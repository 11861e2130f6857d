"""Checks of every component the service needs, for GET /api/v1/health/ and `make dev`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import connection

from batches.runpod import RunPodClient
from comicgen.celery import app as celery_app


def check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {}


def check_redis() -> dict[str, Any]:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return {}


def check_celery() -> dict[str, Any]:
    replies = celery_app.control.ping(timeout=1.0)
    if not replies:
        raise RuntimeError("no Celery worker answered a ping within 1 s")
    return {"workers": sorted(name for reply in replies for name in reply)}


def check_runpod() -> dict[str, Any]:
    client = RunPodClient.from_settings()
    try:
        health = client.health()
    finally:
        client.close()
    return {"endpoint": settings.RUNPOD_ENDPOINT_ID, "workers": health.get("workers", {})}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": check_database,
    "redis": check_redis,
    "celery": check_celery,
    "runpod": check_runpod,
}


def run_health_checks() -> dict[str, Any]:
    """Run every check; each reports `up` or `down` with the reason, never raising."""
    components: dict[str, Any] = {}
    for name, check in CHECKS.items():
        started = time.monotonic()
        try:
            details = check()
            components[name] = {"status": "up", **details}
        except Exception as error:  # a health check reports any failure as "down"
            components[name] = {"status": "down", "error": f"{type(error).__name__}: {error}"}
        components[name]["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    down = [name for name, component in components.items() if component["status"] != "up"]
    return {"status": "down" if down else "up", "down": down, "components": components}
