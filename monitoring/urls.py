"""The staff queue page and the Prometheus endpoint (monitoring/views.py)."""

from __future__ import annotations

from django.urls import URLPattern, path

from monitoring import views

urlpatterns: list[URLPattern] = [
    path("staff/queue/", views.queue_page, name="monitoring-queue"),
    path("metrics", views.metrics_view, name="monitoring-metrics"),
]
