"""API tokens for people: `POST /api/v1/auth/token/` (what `comicgen login` calls) and the
"Your API token" page where an author sees, copies and rotates theirs. How a request presents a
token is comicgen/authentication.py.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from batches.api.throttles import SettingsRateThrottle
from comicgen.errors import ApiError

logger = logging.getLogger(__name__)


class BearerScheme(OpenApiAuthenticationExtension):
    """Documents the Bearer form next to drf-spectacular's own `tokenAuth`."""

    target_class = "comicgen.authentication.BearerAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The same API token as `tokenAuth`, sent as `Bearer <key>`.",
        }


# --- getting a token -------------------------------------------------------------------------


class LoginThrottle(SettingsRateThrottle):
    """Password guesses are limited per client address, whoever they name (the caller is
    anonymous, so a per-user count would let one address try every account)."""

    scope = "login"
    rate_setting = "COMICGEN_THROTTLE_LOGIN"

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class ObtainTokenView(APIView):
    """`POST /api/v1/auth/token/` `{"username", "password"}` -> `{"token", "username"}`:
    what `comicgen login` calls. The same token as the "Your API token" page shows."""

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []
    throttle_classes = [LoginThrottle]

    @extend_schema(
        request=AuthTokenSerializer,
        responses={
            200: inline_serializer(
                "ApiToken",
                {"token": serializers.CharField(), "username": serializers.CharField()},
            ),
            400: dict,
            429: dict,
        },
    )
    def post(self, request: Request) -> Response:
        data = request.data if isinstance(request.data, dict) else {}
        serializer = AuthTokenSerializer(
            data={key: data.get(key) for key in ("username", "password") if key in data},
            context={"request": request},
        )
        if not serializer.is_valid():
            errors = serializer.errors
            if "non_field_errors" in errors:
                raise ApiError(
                    "invalid_credentials",
                    "Wrong username or password (or the account is disabled).",
                    status.HTTP_400_BAD_REQUEST,
                )
            raise exceptions.ValidationError(errors)
        user = serializer.validated_data["user"]
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key, "username": user.get_username()})


# --- the "Your API token" page ---------------------------------------------------------------


def rotate_token(user: Any) -> Token:
    """A new key for the user; the old one stops working at once (clients must log in again)."""
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        token = Token.objects.create(user=user)
    logger.info("user %s rotated their API token", user.pk)
    return token


@login_required
@require_http_methods(["GET", "POST"])
def api_token_page(request: HttpRequest) -> HttpResponse:
    """Shows the author's token (made on first visit), and rotates it on a confirmed POST."""
    if request.method == "POST":
        if request.POST.get("confirm") != "rotate":
            messages.error(request, "Tick the box to confirm: the old token stops working.")
            return redirect("api-token")
        rotate_token(request.user)
        messages.success(
            request, "New token made. The old one no longer works: update your scripts."
        )
        return redirect("api-token")
    token, _ = Token.objects.get_or_create(user=request.user)
    return render(
        request,
        "account/api_token.html",
        {"token": token, "api_url": request.build_absolute_uri("/").rstrip("/")},
    )
