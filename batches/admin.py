from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from batches.models import Batch, ImageJob


class ImageJobInline(admin.TabularInline):
    model = ImageJob
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("index", "prompt", "seed", "status", "attempts", "error", "cost", "thumbnail")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Image")
    def thumbnail(self, image: ImageJob) -> str:
        if not image.image:
            return "—"
        return format_html('<img src="{}" alt="" style="height:48px">', image.image.url)


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = (
        "id", "title", "user", "status", "priority", "progress", "estimated_cost",
        "actual_cost", "created_at", "finished_at",
    )
    list_filter = ("status", "priority", "created_at", "user")
    search_fields = ("title", "user__username", "id")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    readonly_fields = (
        "user", "status", "estimated_cost", "actual_cost", "reserved", "currency",
        "idempotency_key", "request_hash", "seq", "created_at", "started_at", "finished_at",
        "cancel_reason",
    )
    inlines = [ImageJobInline]

    @admin.display(description="Progress")
    def progress(self, batch: Batch) -> str:
        counts = batch.status_counts()
        done = counts["completed"] + counts["failed"] + counts["cancelled"]
        return f"{done}/{counts['total']}"


@admin.register(ImageJob)
class ImageJobAdmin(admin.ModelAdmin):
    list_display = ("id", "batch", "index", "status", "attempts", "runpod_job_id", "cost", "updated_at")
    list_filter = ("status",)
    search_fields = ("prompt", "runpod_job_id", "batch__title")
    list_select_related = ("batch",)
    raw_id_fields = ("batch",)
    readonly_fields = ("seq", "created_at", "submitted_at", "finished_at", "updated_at")
