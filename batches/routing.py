from __future__ import annotations

from django.urls import path

from batches import consumers

websocket_urlpatterns = [
    path("ws/batches/<int:batch_id>/", consumers.BatchConsumer.as_asgi()),
    # The HTML flavour for the htmx pages: rendered fragments, out-of-band swaps.
    path("ws/batches/<int:batch_id>/page/", consumers.BatchPageConsumer.as_asgi()),
]
