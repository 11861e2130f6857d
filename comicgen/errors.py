"""One JSON error shape for the whole API: {"code", "detail", ...}.

DRF's own handler already maps its exceptions to the right status; this wraps its body so every
error has a machine-readable `code` and a sentence a person can act on, and field errors stay
under `fields`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404
from django.urls import Resolver404, resolve
from rest_framework import exceptions, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler

logger = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """An error with a code, a status and extra JSON fields (e.g. `estimated_cost`)."""

    def __init__(self, code: str, detail: str, status_code: int, **extra: Any) -> None:
        super().__init__(detail=detail, code=code)
        self.status_code = status_code
        self.error_code = code
        self.extra = extra


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApiError):
        return Response(
            {"code": exc.error_code, "detail": str(exc.detail), **exc.extra},
            status=exc.status_code,
        )
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            {
                "code": "payload_too_large",
                "detail": (
                    f"The request body is over {limit} bytes; split the batch into smaller ones."
                ),
            },
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    # Django's own exceptions, as DRF would turn them, but with their codes (`not_found`,
    # `permission_denied`) rather than the `error` an Http404 has no code for.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(
            "Nothing here: it does not exist, or it is not yours."
            if not exc.args or "matches the given query" in str(exc.args[0])
            else str(exc.args[0])
        )
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "code": "invalid",
            "detail": "The request has invalid fields; see `fields` for what to change.",
            "fields": exc.detail,
        }
        response.status_code = status.HTTP_400_BAD_REQUEST
        return response
    if isinstance(exc, exceptions.Throttled):
        # Whole seconds, at least one (DRF leaves the header out for a wait under a second).
        wait = max(1, math.ceil(getattr(exc, "wait", None) or 0))
        response["Retry-After"] = str(wait)
        response.data = {
            "code": "throttled",
            "detail": f"Too many requests of this kind; try again in {wait} s.",
        }
        return response
    detail = response.data.get("detail", "") if isinstance(response.data, dict) else response.data
    code = getattr(getattr(exc, "detail", None), "code", None) or getattr(
        exc, "default_code", "error"
    )
    response.data = {"code": str(code), "detail": str(detail)}
    return response


class ApiNotFoundView(APIView):
    """Every /api/v1/ path no route matches, whatever the method: the API's JSON 404, never
    Django's HTML page. Open to anyone (it reveals nothing), and it names the path with a
    trailing slash when that one exists, since the API's paths all end with one."""

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []
    throttle_classes: list[type] = []
    schema = None  # not an operation of the API

    def not_found(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        path = request.path
        detail = f"No API endpoint at {path[:200]}; see /api/v1/docs/ for the list."
        if not path.endswith("/"):
            try:
                match = resolve(path + "/")
            except Resolver404:
                match = None
            if match is not None and getattr(match.func, "view_class", None) is not ApiNotFoundView:
                detail = f"No API endpoint at {path[:200]}; did you mean {path[:200]}/ ?"
        raise exceptions.NotFound(detail)

    # Every method lands here: a path that does not exist has no methods to list in a 405.
    get = post = put = patch = delete = head = options = trace = not_found
