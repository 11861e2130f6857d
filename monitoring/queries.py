"""The figures of the staff queue page and of /metrics, read from PostgreSQL (the source of truth)
and, for RunPod's own queue and workers, from the endpoint's /health.

Each function is one aggregate query (or one cached HTTP call), so a scrape or a page refresh
costs a handful of statements however many batches, images or ledger rows there are:

- in flight: images not yet finished, by endpoint, priority and user (the status index);
- images per state: every image, by status;
- attempts per minute: the ledger's charges, one per attempt RunPod ended (created_at index);
- charges per hour: the same rows, summed by hour;
- recent errors: the newest failed attempts, with their panel's error text.

Each image is counted at its own endpoint (its model's, ImageJob.endpoint_id); a panel from
before endpoints were per model, at its batch's.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, F, Q, Sum, Value
from django.db.models.functions import Coalesce, NullIf, TruncHour, TruncMinute
from django.utils import timezone

from batches.models import ImageJob, ImageStatus, Priority
from budgets.models import LedgerEntry

logger = logging.getLogger(__name__)

ATTEMPT_MINUTES = 15
CHARGE_HOURS = 24
RECENT_ERRORS = 10
# RunPod's /health is read at most this often per endpoint, whoever asks (page polls, scrapes).
RUNPOD_HEALTH_CACHE_SECONDS = 2
# Short: a RunPod that does not answer must not hold a scrape or a page refresh for long.
RUNPOD_CONNECT_TIMEOUT = 1.0
RUNPOD_READ_TIMEOUT = 2.0

# Work an image still has to do: waiting here (pending, retrying), or holding a RunPod job.
WAITING = (ImageStatus.PENDING, ImageStatus.RETRYING)
UNFINISHED = (*WAITING, ImageStatus.SUBMITTED, ImageStatus.RUNNING)
PRIORITY_ORDER = {value: rank for rank, value in enumerate(Priority.values)}

# A charged attempt that completed its panel, or that was the one a cancel ended: neither is a
# failure. Every other charge is an attempt that failed (an error, a timeout, a blank image, a
# lost job), whether the panel was then retried or given up.
_SUCCEEDED = Q(image__status=ImageStatus.COMPLETED, attempt=F("image__attempts"))
_CANCELLED = Q(image__status=ImageStatus.CANCELLED, attempt=F("image__attempts"))
_FAILED = Q(image__isnull=False) & ~_SUCCEEDED & ~_CANCELLED


@dataclass(frozen=True)
class InFlightRow:
    """Unfinished images of one endpoint, priority and user."""

    endpoint: str
    priority: str
    user_id: int
    username: str
    submitted: int  # on RunPod, in its queue
    running: int  # on RunPod, on a GPU
    waiting: int  # here: pending, or retrying after a backoff

    @property
    def in_flight(self) -> int:
        return self.submitted + self.running


def in_flight() -> list[InFlightRow]:
    """Unfinished images by endpoint, priority and user: high priority first, then the most in
    flight. One query."""
    rows = (
        ImageJob.objects.filter(status__in=UNFINISHED)
        .values(
            endpoint=Coalesce(NullIf(F("endpoint_id"), Value("")), F("batch__endpoint_id")),
            priority=F("batch__priority"),
            owner_id=F("batch__user_id"),
            username=F("batch__user__username"),
        )
        .annotate(
            submitted=Count("id", filter=Q(status=ImageStatus.SUBMITTED)),
            running=Count("id", filter=Q(status=ImageStatus.RUNNING)),
            waiting=Count("id", filter=Q(status__in=WAITING)),
        )
        .order_by()
    )
    result = [
        InFlightRow(
            endpoint=row["endpoint"],
            priority=row["priority"],
            user_id=row["owner_id"],
            username=row["username"],
            submitted=row["submitted"],
            running=row["running"],
            waiting=row["waiting"],
        )
        for row in rows
    ]
    result.sort(
        key=lambda r: (PRIORITY_ORDER.get(r.priority, 99), -r.in_flight, -r.waiting, r.username)
    )
    return result


def images_by_status() -> dict[str, int]:
    """Every image by status, each status present (0 when none). One query."""
    counts = dict.fromkeys(ImageStatus.values, 0)
    for row in ImageJob.objects.values("status").annotate(n=Count("id")).order_by():
        counts[row["status"]] = row["n"]
    return counts


@dataclass(frozen=True)
class MinuteRow:
    minute: dt.datetime
    attempts: int  # attempts RunPod ended in this minute (each has its ledger charge)
    failed: int
    succeeded: int
    cancelled: int


def attempts_per_minute(
    now: dt.datetime | None = None, minutes: int = ATTEMPT_MINUTES
) -> list[MinuteRow]:
    """Attempts ended and failed per minute over the last `minutes` (the current minute last,
    minutes without any included as zeros). One query.

    An attempt is counted when it is charged: every attempt that reached RunPod gets exactly
    one charge row when it ends, a job that never ran or was never confirmed a zero one.
    """
    now = now or timezone.now()
    first = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=minutes - 1)
    rows = (
        LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE, created_at__gte=first)
        .annotate(minute=TruncMinute("created_at"))
        .values("minute")
        .annotate(
            attempts=Count("id"),
            succeeded=Count("id", filter=_SUCCEEDED),
            cancelled=Count("id", filter=_CANCELLED),
            failed=Count("id", filter=_FAILED),
        )
        .order_by("minute")
    )
    by_minute = {row["minute"]: row for row in rows}
    result = []
    for step in range(minutes):
        minute = first + dt.timedelta(minutes=step)
        row = by_minute.get(minute, {})
        result.append(
            MinuteRow(
                minute=minute,
                attempts=row.get("attempts", 0),
                failed=row.get("failed", 0),
                succeeded=row.get("succeeded", 0),
                cancelled=row.get("cancelled", 0),
            )
        )
    return result


@dataclass(frozen=True)
class HourRow:
    hour: dt.datetime
    charges: int
    amounts: dict[str, Decimal] = field(default_factory=dict)  # by currency

    @property
    def amount(self) -> Decimal:
        return sum(self.amounts.values(), Decimal("0"))


def charges_per_hour(now: dt.datetime | None = None, hours: int = CHARGE_HOURS) -> list[HourRow]:
    """What the ledger charged per hour over the last `hours` (the current hour last, empty
    hours as zeros), by the budget's currency. One query."""
    now = now or timezone.now()
    first = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=hours - 1)
    rows = (
        LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE, created_at__gte=first)
        .annotate(hour=TruncHour("created_at"))
        .values("hour", currency=F("budget__currency"))
        .annotate(charges=Count("id"), amount=Sum("amount"))
        .order_by("hour")
    )
    counts: dict[dt.datetime, int] = {}
    amounts: dict[dt.datetime, dict[str, Decimal]] = {}
    for row in rows:
        counts[row["hour"]] = counts.get(row["hour"], 0) + row["charges"]
        amounts.setdefault(row["hour"], {})[row["currency"]] = row["amount"]
    result = []
    for step in range(hours):
        hour = first + dt.timedelta(hours=step)
        result.append(
            HourRow(hour=hour, charges=counts.get(hour, 0), amounts=amounts.get(hour, {}))
        )
    return result


def recent_errors(limit: int = RECENT_ERRORS, within_hours: int = 24) -> list[LedgerEntry]:
    """The newest failed attempts (of the last `within_hours`), newest first, with their image,
    batch and owner loaded. One query.

    A panel keeps the error of its latest attempt only: an attempt that failed before a later
    one completed the panel shows an empty `image.error` (the page says it then completed).
    """
    since = timezone.now() - dt.timedelta(hours=within_hours)
    return list(
        LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE, created_at__gte=since)
        .filter(_FAILED)
        .select_related("image", "batch", "batch__user")
        .order_by("-created_at", "-id")[:limit]
    )


# -- RunPod ---------------------------------------------------------------------------------


def runpod_endpoints() -> list[str]:
    """The endpoints this deployment sends work to: RUNPOD_ENDPOINT_ID, and every endpoint of
    RUNPOD_ENDPOINTS (catalogue model -> endpoint) once that setting exists."""
    endpoints = [settings.RUNPOD_ENDPOINT_ID]
    for endpoint in dict(getattr(settings, "RUNPOD_ENDPOINTS", {}) or {}).values():
        if endpoint and endpoint not in endpoints:
            endpoints.append(str(endpoint))
    return endpoints


def _fetch_runpod_health(endpoint: str) -> dict[str, Any]:
    from batches.runpod import RunPodClient
    from comicgen.health import describe_error

    checked_at = timezone.now().isoformat()
    client = RunPodClient(
        settings.RUNPOD_BASE_URL,
        endpoint,
        settings.RUNPOD_API_KEY,
        connect_timeout=RUNPOD_CONNECT_TIMEOUT,
        read_timeout=RUNPOD_READ_TIMEOUT,
    )
    try:
        health = client.health()
    except Exception as error:  # shown to staff as the endpoint's state, never raised
        return {"endpoint": endpoint, "error": describe_error(error), "checked_at": checked_at}
    finally:
        client.close()
    return {
        "endpoint": endpoint,
        "jobs": {k: v for k, v in dict(health.get("jobs") or {}).items() if _is_count(v)},
        "workers": {k: v for k, v in dict(health.get("workers") or {}).items() if _is_count(v)},
        "error": "",
        "checked_at": checked_at,
    }


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def runpod_health() -> list[dict[str, Any]]:
    """Each endpoint's RunPod `/health` (`jobs`: inQueue, inProgress, ...; `workers`: idle,
    running, initializing, ...), or its `error`, at most RUNPOD_HEALTH_CACHE_SECONDS old.

    Cached in the shared cache (Redis), so every web process and scraper together ask RunPod at
    most once per endpoint per period; an unreachable RunPod is cached too, so it costs one
    timeout per period, not one per caller. This is the one place the monitor reads RunPod:
    swap its body for a shared health reading when there is one.
    """
    result = []
    for endpoint in runpod_endpoints():
        key = f"monitoring:runpod-health:{endpoint}"
        try:
            cached = cache.get(key)
        except Exception:  # the cache is Redis: down, ask RunPod directly
            logger.warning("cache unavailable for RunPod health", exc_info=True)
            cached = None
        if cached is None:
            cached = _fetch_runpod_health(endpoint)
            try:
                cache.set(key, cached, RUNPOD_HEALTH_CACHE_SECONDS)
            except Exception:
                logger.warning("cache unavailable for RunPod health", exc_info=True)
        result.append(cached)
    return result
