from __future__ import annotations

from django.urls import path

from batches.api import views
from batches.webhooks import runpod_webhook

urlpatterns = [
    path("batches/", views.BatchListView.as_view(), name="batch-list"),
    path("batches/estimate/", views.EstimateView.as_view(), name="batch-estimate"),
    path("batches/<int:batch_id>/", views.BatchDetailView.as_view(), name="api-batch-detail"),
    path("batches/<int:batch_id>/cancel/", views.BatchCancelView.as_view(), name="batch-cancel"),
    path("batches/<int:batch_id>/retry/", views.BatchRetryView.as_view(), name="batch-retry"),
    path(
        "batches/<int:batch_id>/download/", views.BatchDownloadView.as_view(), name="batch-download"
    ),
    # Plain segments: the view checks the numbers itself, so a malformed or huge one gets the
    # API's JSON 404 rather than the resolver's page.
    path(
        "runpod/webhook/<str:batch_id>/<str:chunk_no>/<str:image_id>/<str:attempt>/<str:token>/",
        runpod_webhook,
        name="runpod-webhook",
    ),
]
