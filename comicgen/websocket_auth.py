"""Token authentication for WebSocket API clients, on top of the session middleware.

A client sends its API token as an `Authorization: Token <key>` (or `Bearer <key>`) header on
the upgrade request, as it does on every REST call, or as `?token=<key>` when its WebSocket
library cannot set headers (a browser's cannot). Both are read by comicgen/authentication.py's
rules.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware

from comicgen.authentication import clean_key, key_from_authorization, user_for_key


def presented_key(scope: dict[str, Any]) -> tuple[bool, str | None]:
    """(whether the connection presents a token at all, its key when well formed). The
    header wins over the query string."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            return True, key_from_authorization(value)
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    keys = query.get("token")
    if keys:
        return True, clean_key(keys[0])
    return False, None


class TokenAuthMiddleware(BaseMiddleware):
    """Authenticates by a presented token; otherwise leaves the session user in place.

    A token that is given but wrong (or an Authorization header of another scheme) leaves the
    connection anonymous, so the consumer refuses it (close code 4401) rather than silently
    falling back to a browser session.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        presented, key = presented_key(scope)
        if presented:
            from django.contrib.auth.models import AnonymousUser

            user = await database_sync_to_async(user_for_key)(key) if key else None
            scope = dict(scope, user=user or AnonymousUser())
        return await super().__call__(scope, receive, send)
