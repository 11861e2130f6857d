"""The API's reference pages: Swagger UI (/api/v1/docs/) and ReDoc (/api/v1/redoc/), whose
scripts and styles come from drf-spectacular-sidecar's static files (SPECTACULAR_SETTINGS), so
they load with no internet access."""

from __future__ import annotations

from typing import Any

from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response


class JsonErrorsMixin:
    """The pages render HTML, but their errors (a POST: 405) are the API's JSON like any other
    /api/v1/ answer."""

    def handle_exception(self, exc: Exception) -> Response:
        response: Response = super().handle_exception(exc)  # type: ignore[misc]
        request: Any = self.request  # type: ignore[attr-defined]
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type
        return response


class SwaggerView(JsonErrorsMixin, SpectacularSwaggerView):
    pass


class RedocView(JsonErrorsMixin, SpectacularRedocView):
    pass
