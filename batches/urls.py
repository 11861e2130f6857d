"""The authors' pages (the API is under /api/v1/, see batches/api/urls.py)."""

from __future__ import annotations

from django.urls import URLPattern, path

from batches import authoring_views, views

urlpatterns: list[URLPattern] = [
    path("", views.dashboard, name="dashboard"),
    path("batches/new/", views.batch_new, name="batch-new"),
    path("batches/new/estimate/", views.batch_estimate, name="batch-new-estimate"),
    path("batches/<int:batch_id>/", views.batch_detail, name="batch-detail"),
    path("batches/<int:batch_id>/cancel/", views.batch_cancel, name="batch-cancel-action"),
    path("batches/<int:batch_id>/retry/", views.batch_retry, name="batch-retry-action"),
    path("batches/<int:batch_id>/panels/<int:index>/", views.panel_detail, name="panel-detail"),
    # Authors' tools (batches/authoring_views.py).
    path("batches/<int:batch_id>/pause/", authoring_views.batch_pause, name="batch-pause-action"),
    path(
        "batches/<int:batch_id>/resume/", authoring_views.batch_resume, name="batch-resume-action"
    ),
    path(
        "batches/<int:batch_id>/panels/<int:index>/redraw/",
        authoring_views.image_redraw,
        name="image-redraw-action",
    ),
    path(
        "batches/<int:batch_id>/panels/<int:index>/select/",
        authoring_views.image_select,
        name="image-select-action",
    ),
    path("batches/<int:batch_id>/pages/", authoring_views.batch_pages, name="batch-pages"),
    path("panels/takes/<int:version_id>.png", authoring_views.take_file, name="take-file"),
    # A panel's PNG, private (batches/panels.py); `image_url` is this path, signed.
    path("panels/<int:image_id>.png", views.panel_file, name="panel-file"),
]
