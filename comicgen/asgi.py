"""ASGI entry point: HTTP through Django (RunPod's webhooks through an ASGI application of
their own), WebSockets through Channels."""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comicgen.settings")
django_asgi_app: Any = get_asgi_application()

from django.conf import settings  # noqa: E402

if settings.COMICGEN_SERVE_STATIC:
    # The pages' CSS and htmx come from the app's own static files (no CDN); daphne serves
    # none by itself, so without this the dev stack and the browser tests get bare HTML.
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

# Imported after Django is set up: these modules touch models.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from batches.routing import websocket_urlpatterns  # noqa: E402
from batches.webhooks import WEBHOOK_PATH, asgi_webhook  # noqa: E402
from comicgen.websocket_auth import TokenAuthMiddleware  # noqa: E402


async def http_application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """RunPod's webhooks to their own ASGI application (batches.webhooks.asgi_webhook says
    why), every other request to Django."""
    if WEBHOOK_PATH.fullmatch(scope["path"]):
        await asgi_webhook(scope, receive, send)
    else:
        await django_asgi_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)
