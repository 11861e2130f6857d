from __future__ import annotations

from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    """The staff queue page and /metrics: read-only views over batches, images and the ledger."""

    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        from django.contrib import admin

        # The admin's index extends itself with a link to the queue page (the template extends
        # "admin/index.html", so any other override of that template still applies).
        admin.site.index_template = "monitoring/admin_index.html"
