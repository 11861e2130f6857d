"""`?token=<key>` authentication for WebSocket API clients, on top of the session middleware."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from rest_framework.authtoken.models import Token


@database_sync_to_async
def _user_for_token(key: str) -> Any | None:
    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


class TokenAuthMiddleware(BaseMiddleware):
    """Authenticates by `?token=` when given; otherwise leaves the session user in place.

    A token that is given but wrong leaves the connection anonymous, so the consumer refuses it
    rather than silently falling back to a browser session.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        keys = query.get("token")
        if keys:
            from django.contrib.auth.models import AnonymousUser

            user = await _user_for_token(keys[0][:64])
            scope = dict(scope, user=user or AnonymousUser())
        return await super().__call__(scope, receive, send)
