"""ASGI entry point: HTTP through Django (RunPod's webhooks through an ASGI application of
their own), WebSockets through Channels."""

from __future__ import annotations

import os
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler, with its middleware and views run as under WSGI: one synchronous
    chain, entered with one hop from the event loop to the request's thread.

    Django's ASGIHandler builds an asynchronous middleware chain. Every middleware class in
    settings.MIDDLEWARE is synchronous underneath (MiddlewareMixin), so each one hopped from
    the event loop to the request's thread and back, before the view and again after it: 17
    hops for the admin's login page (tests/comicgen/test_asgi_handler.py counts them; 3 here),
    every view here being synchronous too. Each hop is a future, a context copy and two thread
    switches; py-spy showed them as the larger part of the web processes' CPU. Exceptions still
    become responses in each layer, as under WSGI, and a 4xx or 5xx is still logged
    (BaseHandler.get_response)."""

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comicgen.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application does
django_asgi_app: Any = OneHopASGIHandler()

from django.conf import settings  # noqa: E402

if settings.COMICGEN_SERVE_STATIC:
    # The pages' CSS and htmx come from the app's own static files (no CDN); uvicorn serves
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
