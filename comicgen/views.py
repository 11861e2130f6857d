from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from comicgen.health import run_health_checks


class HealthView(APIView):
    """Database, Redis, Celery workers and the RunPod endpoint: 200 when all are up, else 503."""

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []

    @extend_schema(responses={200: dict, 503: dict})
    def get(self, request: Request) -> Response:
        report = run_health_checks()
        return Response(report, status=200 if report["status"] == "up" else 503)
