"""Staff views of budgets and the ledger. Money moves only through budgets.services (ledger
rows and conditional UPDATEs): the admin shows it, and changes a limit or a period only through
the actions below. Nothing here edits an amount or deletes a ledger row."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from budgets import services
from budgets.models import Budget, LedgerEntry
from comicgen.admin import ViewOnlyAdmin


class SetLimitForm(forms.Form):
    limit = forms.DecimalField(
        max_digits=12,
        decimal_places=6,
        min_value=Decimal("0"),
        help_text="The new monthly limit. It cannot be below what is already spent and reserved.",
    )
    note = forms.CharField(
        max_length=200, required=False, help_text="Why (kept in the ledger), e.g. “pro plan”."
    )


# How many of a budget's latest ledger rows its page shows; the whole ledger is one link away
# (a user who has run a few chapters already has hundreds of rows).
LEDGER_PREVIEW_ROWS = 10


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = (
        "user",
        "limit",
        "spent",
        "reserved",
        "remaining",
        "currency",
        "period_start",
        "period_end",
    )
    search_fields = ("user__username", "user__email")
    list_select_related = ("user",)
    # Money moves only through the services (ledger rows, conditional updates): read-only here.
    readonly_fields = (
        "user",
        "limit_with_action",
        "spent",
        "reserved",
        "remaining",
        "currency",
        "period_start",
        "period_end",
        "updated_at",
        "ledger",
    )
    fieldsets = (
        (
            None,
            {
                "fields": ("user", "limit_with_action", "spent", "reserved", "remaining"),
                "description": "Nothing on this page is edited in place: money moves only with "
                "a ledger row. Change the limit with “Set limit” (beside the limit, or the action "
                "on the list); start a new period with the list's action.",
            },
        ),
        ("Period", {"fields": ("currency", "period_start", "period_end", "updated_at")}),
        ("Ledger", {"fields": ("ledger",)}),
    )
    actions = ["set_limit", "start_new_period"]
    change_form_template = "admin/budgets/budget/change_form.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # created with the default limit on a user's first use

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a budget would take its ledger with it (and any open reservation).
        return False

    @admin.display(description="Remaining")
    def remaining(self, budget: Budget) -> str:
        return f"{budget.remaining:.4f}"

    @admin.display(description="Monthly limit")
    def limit_with_action(self, budget: Budget) -> str:
        url = reverse("admin:budgets_budget_set_limit", args=[budget.pk])
        return format_html(
            '{} {} <a class="button" href="{}" id="set-limit-link">Set limit</a>',
            budget.limit,
            budget.currency,
            url,
        )

    @admin.display(description="Ledger")
    def ledger(self, budget: Budget) -> str:
        """The latest rows and a link to all of them, filtered to this budget and paginated."""
        entries = LedgerEntry.objects.filter(budget=budget)
        count = entries.count()
        url = reverse("admin:budgets_ledgerentry_changelist") + f"?budget__id__exact={budget.pk}"
        latest = entries.select_related("batch").order_by("-created_at", "-id")[
            :LEDGER_PREVIEW_ROWS
        ]
        return render_to_string(
            "admin/budgets/budget/_ledger_preview.html",
            {
                "entries": latest,
                "count": count,
                "url": url,
                "shown": len(latest),
                "per_page": LedgerEntryAdmin.list_per_page,
            },
        )

    def get_urls(self) -> list[URLPattern]:
        set_limit = path(
            "<path:object_id>/set-limit/",
            self.admin_site.admin_view(self.set_limit_view),
            name="budgets_budget_set_limit",
        )
        return [set_limit, *super().get_urls()]

    def set_limit_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Set one budget's limit from its own page (the same service as the list's action)."""
        budget = self.get_object(request, object_id)
        if budget is None or not self.has_change_permission(request, budget):
            raise PermissionDenied
        form = SetLimitForm(request.POST or None, initial={"limit": budget.limit})
        if request.method == "POST" and form.is_valid():
            limit = form.cleaned_data["limit"]
            try:
                services.set_limit(budget, limit, form.cleaned_data["note"])
            except ValueError as error:
                form.add_error("limit", str(error))  # shown on the form, beside the value
            else:
                self.message_user(
                    request, f"Monthly limit of {budget.user} set to {limit}.", messages.SUCCESS
                )
                return HttpResponseRedirect(
                    reverse("admin:budgets_budget_change", args=[budget.pk])
                )
        return self._limit_page(request, [budget], form, single=True)

    @admin.action(description="Set the monthly limit of the selected budgets")
    def set_limit(self, request: HttpRequest, queryset: QuerySet[Budget]) -> HttpResponse | None:
        form = SetLimitForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            self._apply_limit(request, queryset, form)
            return None
        return self._limit_page(request, list(queryset), form, single=False)

    def _apply_limit(
        self, request: HttpRequest, queryset: QuerySet[Budget], form: SetLimitForm
    ) -> None:
        """Set the limit on each budget; one message per outcome: a success naming the budgets
        changed (if any), an error naming each refusal (if any), never "0 changed"."""
        limit = form.cleaned_data["limit"]
        changed, refused = [], []
        for budget in queryset.select_related("user"):
            try:
                services.set_limit(budget, limit, form.cleaned_data["note"])
            except ValueError as error:
                refused.append(f"{budget.user} ({error})")
            else:
                changed.append(str(budget.user))
        if changed:
            self.message_user(
                request,
                f"Monthly limit set to {limit} for {', '.join(changed)}.",
                messages.SUCCESS,
            )
        if refused:
            self.message_user(
                request, f"Limit not changed for {'; '.join(refused)}", messages.ERROR
            )

    def _limit_page(
        self, request: HttpRequest, budgets: list[Budget], form: SetLimitForm, *, single: bool
    ) -> HttpResponse:
        return render(
            request,
            "admin/budgets/budget/set_limit.html",
            {
                **self.admin_site.each_context(request),
                "budgets": budgets,
                "form": form,
                "single": single,
                "title": "Set the monthly limit",
                "opts": self.model._meta,
                "original": budgets[0] if single else None,
            },
        )

    @admin.action(description="Start a new period now (spent back to zero)")
    def start_new_period(self, request: HttpRequest, queryset: QuerySet[Budget]) -> None:
        reset = sum(services.start_new_period(budget) for budget in queryset)
        self.message_user(request, f"New period started for {reset} budget(s).", messages.SUCCESS)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ViewOnlyAdmin):
    list_display = (
        "created_at", "budget", "kind", "amount", "batch", "image", "attempt", "runpod_job_id",
        "billed_ms", "note",
    )  # fmt: skip
    list_filter = ("kind", "created_at")
    list_per_page = 100  # a user's ledger runs to hundreds of rows: pages, not one long page
    search_fields = ("budget__user__username", "batch__title", "batch__id", "note")
    list_select_related = ("budget__user", "batch", "image")
    date_hierarchy = "created_at"
