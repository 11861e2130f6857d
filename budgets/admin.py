"""Staff views of budgets and the ledger. Money moves only through budgets.services (ledger
rows and conditional UPDATEs): the admin shows it, and changes a limit or a period only through
the actions below. Nothing here edits an amount or deletes a ledger row."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from budgets import services
from budgets.models import Budget, LedgerEntry
from comicgen.admin import ViewOnlyAdmin


class LedgerEntryInline(admin.TabularInline):
    model = LedgerEntry
    extra = 0
    can_delete = False
    fields = ("created_at", "kind", "amount", "batch", "image", "attempt", "note")
    readonly_fields = fields
    ordering = ("-created_at",)
    max_num = 0
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[LedgerEntry]:
        return super().get_queryset(request).select_related("batch", "image")


class SetLimitForm(forms.Form):
    limit = forms.DecimalField(max_digits=12, decimal_places=6, min_value=Decimal("0"))
    note = forms.CharField(max_length=200, required=False)


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
        "limit",
        "spent",
        "reserved",
        "currency",
        "period_start",
        "period_end",
        "updated_at",
    )
    inlines = [LedgerEntryInline]
    actions = ["set_limit", "start_new_period"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # created with the default limit on a user's first use

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a budget would take its ledger with it (and any open reservation).
        return False

    @admin.display(description="Remaining")
    def remaining(self, budget: Budget) -> str:
        return f"{budget.remaining:.4f}"

    @admin.action(description="Set the monthly limit of the selected budgets")
    def set_limit(self, request: HttpRequest, queryset: QuerySet[Budget]) -> HttpResponse | None:
        form = SetLimitForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            changed = 0
            for budget in queryset:
                try:
                    services.set_limit(
                        budget, form.cleaned_data["limit"], form.cleaned_data["note"]
                    )
                    changed += 1
                except ValueError as error:
                    self.message_user(request, f"{budget.user}: {error}", messages.ERROR)
            self.message_user(request, f"Limit set on {changed} budget(s).", messages.SUCCESS)
            return None
        return render(
            request,
            "admin/budgets/budget/set_limit.html",
            {
                **self.admin_site.each_context(request),
                "budgets": queryset,
                "form": form,
                "title": "Set the monthly limit",
                "opts": self.model._meta,
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
    search_fields = ("budget__user__username", "batch__title", "batch__id", "note")
    list_select_related = ("budget__user", "batch", "image")
    date_hierarchy = "created_at"
