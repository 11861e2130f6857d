from __future__ import annotations

from django.urls import path

from batches.api import authoring, views
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
    # Authors' tools (batches/api/authoring.py).
    path("batches/<int:batch_id>/pause/", authoring.BatchPauseView.as_view(), name="batch-pause"),
    path(
        "batches/<int:batch_id>/resume/", authoring.BatchResumeView.as_view(), name="batch-resume"
    ),
    path(
        "batches/<int:batch_id>/images/<int:index>/redraw/",
        authoring.ImageRedrawView.as_view(),
        name="image-redraw",
    ),
    path(
        "batches/<int:batch_id>/images/<int:index>/select/",
        authoring.ImageSelectView.as_view(),
        name="image-select",
    ),
    path(
        "batches/<int:batch_id>/export/", authoring.BatchExportView.as_view(), name="batch-export"
    ),
    # Plain segments: the view checks the numbers itself, so a malformed or huge one gets the
    # API's JSON 404 rather than the resolver's page.
    path(
        "runpod/webhook/<str:batch_id>/<str:chunk_no>/<str:image_id>/<str:attempt>/<str:token>/",
        runpod_webhook,
        name="runpod-webhook",
    ),
]
