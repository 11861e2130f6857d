"""The staff queue page (`/staff/queue/`) and the Prometheus endpoint (`/metrics`).

The page is one template with a named fragment (`queue.html#figures`) that htmx polls every
2 seconds; without JavaScript it is a plain page that is current when loaded.

Who may read /metrics (`metrics_allowed`):
- with `COMICGEN_METRICS_TOKEN` set: a request carrying `Authorization: Bearer <that token>`
  (Prometheus's `authorization` scrape setting), or a staff member's browser session;
- with it unset: callers on loopback (127.0.0.0/8, ::1), e.g. a Prometheus or an agent on the
  same machine, or a staff session.
Loopback is not trusted once a token is set, because behind a reverse proxy on the same host
every request arrives from loopback: production sets the token. The figures name users and
endpoints and show the queue's load, hence not public.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from typing import Any

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseClientRefresh
from prometheus_client import CONTENT_TYPE_LATEST

from batches.models import ImageStatus
from monitoring import metrics, pushlag, queries


def _on_loopback(request: HttpRequest) -> bool:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _bearer_token(request: HttpRequest) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def metrics_allowed(request: HttpRequest) -> tuple[bool, str]:
    """Whether this request may read /metrics, and if not, the refusal's code (see the module
    docstring for the rules and why). The session is read last: a scrape with the token costs
    no query."""
    expected = settings.COMICGEN_METRICS_TOKEN
    given = _bearer_token(request)
    if expected and given is not None:
        # Bytes: compare_digest refuses a str with non-ASCII characters.
        if hmac.compare_digest(given.encode(), expected.encode()):
            return True, ""
        return False, "bad_metrics_token"
    if not expected and _on_loopback(request):
        return True, ""
    if request.user.is_authenticated and request.user.is_staff:
        return True, ""
    return False, "not_authenticated"


REFUSALS = {
    "bad_metrics_token": (
        403,
        "That bearer token is not COMICGEN_METRICS_TOKEN. Check the scraper's credentials.",
    ),
    "not_authenticated": (
        401,
        "Send Authorization: Bearer <COMICGEN_METRICS_TOKEN>, or sign in as staff. "
        "Without a token set, /metrics is open to loopback callers only.",
    ),
}


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus's text format, read at this scrape (monitoring.metrics)."""
    allowed, code = metrics_allowed(request)
    if not allowed:
        status, detail = REFUSALS[code]
        refusal = JsonResponse({"code": code, "detail": detail}, status=status)
        if status == 401:
            refusal["WWW-Authenticate"] = 'Bearer realm="comicgen metrics"'
        return refusal
    response = HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)
    add_never_cache_headers(response)
    return response


def _bar(value: float, top: float) -> int:
    """A bar's width in percent of the largest value (0 for none, at least 2 to be seen)."""
    if not value or not top:
        return 0
    return max(2, round(100 * value / top))


def _lag_label(seconds: float | None) -> str:
    """A push-lag quantile as the page shows it: the bound of its histogram bucket."""
    if seconds is None:
        return "–"
    if math.isinf(seconds):
        return f"> {pushlag.BUCKETS[-1]:g} s"
    return f"≤ {seconds * 1000:g} ms" if seconds < 1 else f"≤ {seconds:g} s"


def queue_figures() -> dict[str, Any]:
    """Everything the page shows, read now: five SQL queries, RunPod's cached /health and the
    push-lag histogram from Redis."""
    rows = queries.in_flight()
    minutes = queries.attempts_per_minute()
    hours = queries.charges_per_hour()
    images = queries.images_by_status()
    lag = pushlag.read()
    top_minute = max((m.attempts for m in minutes), default=0)
    top_hour = max((h.amount for h in hours), default=0)
    lag_p50 = pushlag.quantile(lag, 0.5)
    lag_p95 = pushlag.quantile(lag, 0.95)
    return {
        "now": timezone.now(),
        "rows": rows,
        "totals": {
            "submitted": sum(r.submitted for r in rows),
            "running": sum(r.running for r in rows),
            "waiting": sum(r.waiting for r in rows),
            "in_flight": sum(r.in_flight for r in rows),
            "users": len({r.user_id for r in rows}),
        },
        "runpod": queries.runpod_health(),
        "images": [
            {"status": value, "label": label, "count": images[value]}
            for value, label in ImageStatus.choices
        ],
        "images_total": sum(images.values()),
        "minutes": [
            {
                "row": m,
                "attempts_pct": _bar(m.attempts, top_minute),
                "failed_pct": _bar(m.failed, top_minute),
            }
            for m in reversed(minutes)
        ],  # fmt: skip
        "attempts_total": sum(m.attempts for m in minutes),
        "failed_total": sum(m.failed for m in minutes),
        "hours": [
            {"row": h, "pct": _bar(float(h.amount), float(top_hour))}
            for h in reversed(hours)
            if h.charges
        ],
        "charged_total": sum((h.amount for h in hours), start=0),
        "charges_total": sum(h.charges for h in hours),
        "currency": settings.COMICGEN_CURRENCY,
        "errors": queries.recent_errors(),
        "lag": {
            "count": lag["count"],
            "mean_ms": 1000 * lag["sum"] / lag["count"] if lag["count"] else None,
            "p50_label": _lag_label(lag_p50),
            "p95_label": _lag_label(lag_p95),
        },
        "attempt_minutes": queries.ATTEMPT_MINUTES,
        "charge_hours": queries.CHARGE_HOURS,
    }


@require_GET
def queue_page(request: HttpRequest) -> HttpResponse:
    """Staff only (others go to the admin login). An htmx poll gets the figures fragment; when
    the session ended meanwhile, a full reload instead, so the login page is not swapped into
    the figures."""
    if getattr(request, "htmx", False) and not (
        request.user.is_authenticated and request.user.is_staff
    ):
        return HttpResponseClientRefresh()
    return _staff_queue_page(request)


@staff_member_required
def _staff_queue_page(request: HttpRequest) -> HttpResponse:
    template = "monitoring/queue.html"
    if getattr(request, "htmx", False):
        template += "#figures"
    response = render(request, template, queue_figures())
    add_never_cache_headers(response)
    return response
