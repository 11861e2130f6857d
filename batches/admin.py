"""Staff views of batches: a list with progress, live progress on the change page, and the
same cancel / retry workflows the authors have (batches.services)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html

from batches import fragments, panels, services
from batches.models import Batch, ImageJob
from batches.views import counts_of, with_counts
from budgets.services import BudgetExceeded


class ImageJobInline(admin.TabularInline):
    model = ImageJob
    extra = 0
    can_delete = False
    show_change_link = True
    classes = ("collapse",)  # the live tiles above show the same; the rows are for digging in
    fields = ("index", "prompt", "seed", "status", "attempts", "error", "cost", "thumbnail")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Image")
    def thumbnail(self, image: ImageJob) -> str:
        url = panels.panel_url(image)
        if url is None:
            return "—"
        return format_html('<img src="{}" alt="" style="height:48px">', url)


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "user", "status_badge", "progress", "cost", "created_at")
    list_display_links = ("id", "title")
    list_filter = ("status", "priority", "created_at", "user")
    search_fields = ("title", "user__username", "id")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    list_per_page = 50
    readonly_fields = (
        "user",
        "status",
        "estimated_cost",
        "actual_cost",
        "reserved",
        "currency",
        "idempotency_key",
        "request_hash",
        "seq",
        "created_at",
        "started_at",
        "finished_at",
        "cancel_reason",
        # Money and scheduling state belong to the services; staff change them through actions.
        "held",
        "chunk_size",
        "cancel_requested_at",
    )
    inlines = [ImageJobInline]
    actions = ["cancel_selected", "retry_failed"]
    change_form_template = "admin/batches/batch/change_form.html"

    class Media:
        css = {"all": ("css/app.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Batch]:
        # Counts per status in the list's own query, for the progress column.
        return with_counts(super().get_queryset(request))

    @admin.display(description="Status", ordering="status")
    def status_badge(self, batch: Batch) -> str:
        return format_html(
            '<span class="badge badge--{}">{}</span>', batch.status, batch.get_status_display()
        )

    @admin.display(description="Progress")
    def progress(self, batch: Batch) -> str:
        bar = fragments.progress(counts_of(batch))
        return render_to_string("admin/batches/batch/_progress_cell.html", {"progress": bar})

    @admin.display(description="Cost", ordering="actual_cost")
    def cost(self, batch: Batch) -> str:
        return f"{batch.actual_cost:.4f} of {batch.estimated_cost:.4f} {batch.currency}"

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        batch = self.get_object(request, object_id)
        if batch is not None:
            here = reverse("admin:batches_batch_change", args=[batch.pk])
            live = fragments.page_context(fragments.load_batch(batch.pk), next_url=here)
            extra_context = {**(extra_context or {}), "live": live, "live_next": here}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Cancel selected batches")
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        cancelled, skipped = 0, []
        for batch in queryset:
            try:
                services.cancel_batch(batch, reason=f"Cancelled by staff ({request.user}).")
            except services.StateConflict:
                skipped.append(f"#{batch.pk}")
            else:
                cancelled += 1
        if cancelled:
            self.message_user(request, f"Cancelling {cancelled} batch(es).", messages.SUCCESS)
        if skipped:
            self.message_user(
                request, f"Already finished, left alone: {', '.join(skipped)}.", messages.WARNING
            )

    @admin.action(description="Retry failed images")
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        requeued, problems = 0, []
        for batch in queryset:
            try:
                requeued += services.retry_batch(batch)
            except services.StateConflict as error:
                problems.append(f"#{batch.pk}: {error}")
            except BudgetExceeded as error:
                problems.append(f"#{batch.pk}: {error}")
        if requeued:
            self.message_user(request, f"{requeued} image(s) requeued.", messages.SUCCESS)
        for problem in problems:
            self.message_user(request, problem, messages.WARNING)


@admin.register(ImageJob)
class ImageJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "batch",
        "index",
        "status",
        "attempts",
        "runpod_job_id",
        "cost",
        "updated_at",
    )
    list_filter = ("status",)
    search_fields = ("prompt", "runpod_job_id", "batch__title")
    list_select_related = ("batch",)
    raw_id_fields = ("batch",)
    readonly_fields = ("seq", "created_at", "submitted_at", "finished_at", "updated_at")
