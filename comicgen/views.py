from __future__ import annotations

from django.utils.cache import add_never_cache_headers
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from comicgen.health import health_report

HEALTH_DOC = (
    '`{"status": "up"}` or `{"status": "down"}` for anyone. Staff (session or token) also '
    "get `down`, `components` (database, redis, celery, runpod: status, latency_ms, error, "
    "details), `checked_at` and `age_seconds`: the report is shared and refreshed every few "
    "seconds."
)


class HealthView(APIView):
    """Database, Redis, Celery workers and the RunPod endpoint: 200 when all are up, else 503.
    Anonymous callers learn only up or down; the details (hosts, errors, workers) are staff's."""

    permission_classes = [AllowAny]
    # An answer costs one Redis GET (the shared report), so a flood is cheap; and a load
    # balancer's probe must never read a 429 as "down".
    throttle_classes: list[type] = []

    @extend_schema(
        description=HEALTH_DOC,
        responses={
            200: OpenApiResponse(description="Every component is up."),
            503: OpenApiResponse(description="At least one component is down."),
        },
    )
    def get(self, request: Request) -> Response:
        report = health_report()
        status = 200 if report["status"] == "up" else 503
        body = report if request.user.is_staff else {"status": report["status"]}
        response = Response(body, status=status)
        add_never_cache_headers(response)  # a cached "up" from a proxy would hide an outage
        return response
