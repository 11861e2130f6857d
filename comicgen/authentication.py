"""How an API request proves who it is: an API token as `Authorization: Token <key>` (DRF's own
scheme) or `Authorization: Bearer <key>` (what most HTTP tooling sends by default). The WebSocket
takes the same header, or `?token=<key>` for clients that cannot set headers
(comicgen/websocket_auth.py).

Every way reads the key through `clean_key`, so a hostile value (a NUL byte, which PostgreSQL
refuses in text, or a kilobyte of junk) is refused as a wrong token and never reaches the
database.

This module imports nothing of DRF's views: settings name these classes, and DRF imports them
while it defines APIView.
"""

from __future__ import annotations

import re
from typing import Any

from rest_framework import authentication, exceptions

# DRF's keys are 40 hex characters; anything else cannot be a token. Checked before any query.
_KEY = re.compile(r"[0-9a-fA-F]{40}")
SCHEMES = (b"token", b"bearer")


def clean_key(key: str) -> str | None:
    """The key if it has a token's shape, else None (never queried)."""
    return key if _KEY.fullmatch(key) else None


def key_from_authorization(header: bytes) -> str | None:
    """The key of an `Authorization: Token <key>` or `Bearer <key>` header value, or None."""
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() not in SCHEMES:
        return None
    try:
        return clean_key(parts[1].decode("ascii"))
    except UnicodeDecodeError:
        return None


def user_for_key(key: str | None) -> Any | None:
    """The active user a key belongs to, or None."""
    from rest_framework.authtoken.models import Token

    if key is None:
        return None
    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's `Authorization: Token <key>`, with the key's shape checked before the query."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        if clean_key(key) is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(key)


class BearerAuthentication(TokenAuthentication):
    """The same tokens as `Authorization: Bearer <key>`."""

    keyword = "Bearer"
