"""Staff views of batches: a list with progress, live progress on the change page, and the
same cancel / retry workflows the authors have (batches.services).

Money and state belong to the services, so the admin edits neither: a batch is created only by
the submit service (priced and reserved), its images and costs are read-only, and only a
finished batch can be deleted (an unfinished one still holds a reservation and RunPod jobs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from batches import fragments, panels, services
from batches.authoring import kept_take_files
from batches.models import Batch, ImageJob
from batches.views import counts_of, with_counts
from budgets import estimates, pricing
from budgets import services as budget_services
from budgets.services import BudgetExceeded
from comicgen.admin import ViewOnlyAdmin

logger = logging.getLogger(__name__)


def delete_refusal(batch: Batch) -> str | None:
    """Why a batch may not be deleted now, or None when it may."""
    if batch.is_terminal:
        return None
    return (
        f"Batch #{batch.pk} is {batch.get_status_display().lower()}: it still holds a "
        "reservation on its owner's budget and may have jobs on RunPod. Cancel it first "
        "(Cancel on its page, or the action “Cancel selected batches”); once it has finished "
        "it can be deleted."
    )


def lock_for_delete(batch_ids: list[int]) -> list[Batch]:
    """Lock batches to delete them, their images first: image rows before batch rows is the
    order every writer takes them in (a chunk's pass, a redraw, a retry), and a delete writes
    both. Batch first deadlocked with a retry reopening the batch's failed panels."""
    ImageJob.objects.filter(batch_id__in=batch_ids).lock_rows()
    return list(Batch.objects.select_for_update().filter(pk__in=batch_ids).order_by("pk"))


def delete_finished_batches(batches: Iterable[Batch], note: str) -> int:
    """Delete finished batches, releasing anything still reserved for them first, and remove
    their panel files once the deletion is committed. Call inside a transaction holding the
    rows (select_for_update), so no retry reopens a batch between the check and the delete.

    The ledger keeps its rows (their batch and image become NULL), so the books still add up.
    """
    finished = [batch for batch in batches if batch.is_terminal]
    if not finished:
        return 0
    ids = [batch.pk for batch in finished]
    for batch in finished:
        # Normally zero once a batch has finished; never let a deletion lock money away.
        budget_services.release_batch(batch, note=f"batch #{batch.pk} deleted by staff: {note}")
    file_names = list(
        ImageJob.objects.filter(batch_id__in=ids).exclude(image="").values_list("image", flat=True)
    )
    file_names += kept_take_files(ids)  # authors' tools: the earlier takes' files too
    Batch.objects.filter(pk__in=ids).delete()
    storage = ImageJob._meta.get_field("image").storage
    transaction.on_commit(lambda: _delete_files(storage, file_names))
    return len(finished)


def _delete_files(storage: Any, names: list[str]) -> None:
    for name in names:
        try:
            storage.delete(name)
        except OSError:  # a file already gone or unreadable must not stop the others
            logger.warning("could not delete panel file %s", name, exc_info=True)


def render_live_facts(batch: Batch, *, refreshed: bool = False) -> str:
    """Status, counts, money and times as they are now. While the batch runs the block fetches
    itself again every few seconds (htmx); a finished batch's block stops asking."""
    batch = Batch.objects.get(pk=batch.pk)  # fresh, whatever the caller holds
    header = fragments.header_context(batch)
    poll_url = (
        None if batch.is_terminal else reverse("admin:batches_batch_live_facts", args=[batch.pk])
    )
    return render_to_string(
        "admin/batches/batch/_live_facts.html",
        # Asked again by the polling block: the page around it was loaded while it ran.
        {"batch": batch, "header": header, "poll_url": poll_url, "was_running": refreshed},
    )


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


class EstimateBasisFilter(admin.SimpleListFilter):
    """Batches priced from measured history, from the catalogue, or both (several models)."""

    title = "estimate basis"
    parameter_name = "basis"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("measured", "Measured"), ("catalogue", "Catalogue"), ("mixed", "Mixed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Batch]) -> QuerySet[Batch]:
        if self.value():
            return queryset.filter(estimate_basis__kind=self.value())
        return queryset


class EstimateModelFilter(admin.SimpleListFilter):
    """Batches with panels on one catalogue model, to read its estimate error over time."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in pricing.model_names()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Batch]) -> QuerySet[Batch]:
        if self.value():
            return queryset.filter(estimate_basis__models__has_key=self.value())
        return queryset


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "title",
        "user",
        "status_badge",
        "progress",
        "cost",
        "estimate_error",
        "created_at",
    )
    list_display_links = ("id", "title")
    list_filter = (
        "status",
        "priority",
        "created_at",
        "user",
        EstimateBasisFilter,
        EstimateModelFilter,
    )
    search_fields = ("title", "user__username", "id")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    list_per_page = 50
    # Only the title is editable (a label for people). The rest is the request as it was priced
    # and reserved, or state and money that the engine (chunk tasks, finalize) and the ledger
    # own: staff act on those through the actions (cancel, retry, delete), never by editing.
    readonly_fields = (
        "user",
        "priority",
        "style",
        "negative_prompt",
        "params",
        "created_at",
        "live_facts",
        "estimated_cost",
        "expected_cost",
        "estimate_basis",
        "endpoint_id",
        "currency",
        "chunk_size",
        "idempotency_key",
        "request_hash",
    )
    fieldsets = (
        (
            "Request",
            {
                "fields": (
                    "title",
                    "user",
                    "priority",
                    "style",
                    "negative_prompt",
                    "params",
                    "created_at",
                ),
                "description": "Editable: the title only, at any time (it is a label). The "
                "rest is the request as it was priced and reserved; changing it would make the "
                "estimate, the reservation and the panels disagree.",
            },
        ),
        (
            "State and money",
            {
                "fields": ("live_facts",),
                "description": "Owned by the engine and the ledger, never edited here; "
                "refreshed every few seconds while the batch runs. To act on it: Cancel batch "
                "(above) while it runs; Retry and Delete once it has finished.",
            },
        ),
        (
            "Estimate at submit",
            {
                "fields": (
                    "estimated_cost",
                    "expected_cost",
                    "estimate_basis",
                    "endpoint_id",
                    "currency",
                    "chunk_size",
                ),
            },
        ),
        (
            "Idempotency",
            {"fields": ("idempotency_key", "request_hash"), "classes": ("collapse",)},
        ),
    )
    inlines = [ImageJobInline]
    actions = ["cancel_selected", "retry_failed", "delete_selected"]
    change_form_template = "admin/batches/batch/change_form.html"

    class Media:
        css = {"all": ("css/app.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Batch]:
        # Counts per status in the list's own query, for the progress column.
        return with_counts(super().get_queryset(request))

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A raw form would skip pricing and the budget reservation: batches come only from the
        # submit service (the authors' form, the API, `manage.py generate`).
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Hides the Delete link of an unfinished batch; delete_view says why to a direct request.
        if obj is not None and not obj.is_terminal:
            return False
        return super().has_delete_permission(request, obj)

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[Any, int], set[str], list[Any]]:
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Panels go with their batch: ImageJobAdmin refuses deleting one panel on its own only.
        perms_needed.discard(str(ImageJob._meta.verbose_name))
        return deleted, model_count, perms_needed, protected

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        batch = self.get_object(request, unquote(object_id))
        if batch is None:
            return super().delete_view(request, object_id, extra_context)
        with transaction.atomic():
            # The row stays locked through the delete, so a retry cannot reopen it meanwhile.
            rows = lock_for_delete([batch.pk])
            if not rows:  # deleted meanwhile: Django's view says so
                return super().delete_view(request, object_id, extra_context)
            reason = delete_refusal(rows[0])
            if reason:
                self.message_user(request, f"Not deleted. {reason}", messages.ERROR)
                return HttpResponseRedirect(reverse("admin:batches_batch_change", args=[batch.pk]))
            return super().delete_view(request, object_id, extra_context)

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        delete_finished_batches(
            [Batch.objects.select_for_update().get(pk=obj.pk)], str(request.user)
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        locked = Batch.objects.select_for_update().filter(pk__in=queryset.values("pk"))
        delete_finished_batches(locked.order_by("pk"), str(request.user))

    @admin.action(description="Delete selected batches (finished ones)", permissions=["delete"])
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[Batch]) -> Any:
        """Django's delete action (confirmation page, then delete) for the finished batches
        only; the unfinished ones are named and left alone."""
        with transaction.atomic():
            ids = list(queryset.values_list("pk", flat=True))
            locked = lock_for_delete(ids)
            unfinished = [batch for batch in locked if not batch.is_terminal]
            if unfinished:
                names = ", ".join(
                    f"#{batch.pk} ({batch.get_status_display().lower()})" for batch in unfinished
                )
                self.message_user(
                    request,
                    f"Not deleted, still unfinished: {names}. An unfinished batch holds a "
                    "reservation and may have jobs on RunPod: cancel it first, then delete it "
                    "once it has finished.",
                    messages.WARNING,
                )
            finished = Batch.objects.filter(
                pk__in=[batch.pk for batch in locked if batch.is_terminal]
            )
            if not finished.exists():
                return None
            return django_delete_selected(self, request, finished)

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

    @admin.display(description="Estimate error", ordering="expected_cost")
    def estimate_error(self, batch: Batch) -> str:
        """Actual against the expected cost (before the retry allowance), once it has ended."""
        if not batch.is_terminal or not batch.expected_cost:
            return "—"
        error = batch.actual_cost / batch.expected_cost - 1
        basis = batch.estimate_basis if isinstance(batch.estimate_basis, dict) else {}
        return f"{error:+.0%} ({basis.get('kind', '-')}, {estimates.batch_model(basis)})"

    @admin.display(description="Now")
    def live_facts(self, batch: Batch) -> str:
        return render_live_facts(batch)

    def get_urls(self) -> list[URLPattern]:
        accuracy = path(
            "estimates/",
            self.admin_site.admin_view(self.estimate_accuracy_view),
            name="batches_batch_estimates",
        )
        live = path(
            "<path:object_id>/live-facts/",
            self.admin_site.admin_view(self.live_facts_view),
            name="batches_batch_live_facts",
        )
        return [accuracy, live, *super().get_urls()]

    def live_facts_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's "State and money" values, fetched again while the batch runs."""
        batch = self.get_object(request, unquote(object_id))
        if batch is None or not self.has_view_permission(request, batch):
            raise PermissionDenied
        # admin_view adds never_cache.
        return HttpResponse(render_live_facts(batch, refreshed=True))

    def estimate_accuracy_view(self, request: HttpRequest) -> HttpResponse:
        """Staff: how far the estimates were off, by model and week."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Estimate accuracy",
            "rows": [
                {
                    "model": row.model,
                    "week": row.week,
                    "batches": row.batches,
                    "measured": row.measured,
                    "mean_error": f"{row.mean_error:+.1%}",
                    "mean_abs_error": f"{row.mean_abs_error:.1%}",
                    "worst_error": f"{row.worst_error:+.1%}",
                    "over_reserved": f"{row.over_reserved:+.1%}",
                }
                for row in estimates.estimate_accuracy()
            ],
            "min_samples": estimates.MIN_SAMPLES,
        }
        return TemplateResponse(request, "admin/batches/batch/estimate_accuracy.html", context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        batch = self.get_object(request, unquote(object_id))
        if batch is not None:
            here = reverse("admin:batches_batch_change", args=[batch.pk])
            live = fragments.page_context(
                Batch.objects.with_images().get(pk=batch.pk), next_url=here
            )
            extra_context = {
                **(extra_context or {}),
                "live": live,
                "live_next": here,
                "delete_refusal": delete_refusal(batch),
            }
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

    @admin.action(description="Retry failed and cancelled panels of the selected batches")
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
class ImageJobAdmin(ViewOnlyAdmin):
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

    # View only (ViewOnlyAdmin): an image's status, attempts, job id, file, cost and hold are
    # written by the chunk loop with the ledger. Images come and go with their batch.

    # The stored file name is not a URL anyone can open: link the panel through its signed URL.
    exclude = ("image",)
    readonly_fields = ("panel_file",)

    @admin.display(description="Panel file")
    def panel_file(self, image: ImageJob) -> str:
        url = panels.panel_url(image)
        if url is None:
            return "—"
        return format_html('<a href="{}"><img src="{}" alt="" style="height:96px"></a>', url, url)


# --- authors' tools: pause and resume (batches/authoring.py) ---------------------------------


def _each_batch(
    modeladmin: BatchAdmin, request: HttpRequest, queryset: QuerySet[Batch], act: Any, verb: str
) -> None:
    done, skipped = 0, []
    for batch in queryset:
        try:
            act(batch)
        except services.StateConflict as error:
            skipped.append(f"#{batch.pk}: {error}")
        else:
            done += 1
    if done:
        modeladmin.message_user(request, f"{verb} {done} batch(es).", messages.SUCCESS)
    for problem in skipped:
        modeladmin.message_user(request, problem, messages.WARNING)


@admin.action(description="Pause selected batches (running jobs finish)")
def pause_batches(modeladmin: BatchAdmin, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
    from batches import authoring

    _each_batch(modeladmin, request, queryset, authoring.pause_batch, "Paused")


@admin.action(description="Resume selected paused batches")
def resume_batches(modeladmin: BatchAdmin, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
    from batches import authoring

    _each_batch(modeladmin, request, queryset, authoring.resume_batch, "Resumed")


BatchAdmin.actions = [*BatchAdmin.actions, pause_batches, resume_batches]
# The authors' own settings and the retention's stamp are not staff's to edit here.
BatchAdmin.readonly_fields = (  # type: ignore[assignment]
    *BatchAdmin.readonly_fields,
    "page_layout",
    "panels_expired_at",
)
