from __future__ import annotations

from django.contrib import admin

from budgets.models import Budget, LedgerEntry


class LedgerEntryInline(admin.TabularInline):
    model = LedgerEntry
    extra = 0
    can_delete = False
    fields = ("created_at", "kind", "amount", "batch", "image", "note")
    readonly_fields = fields
    ordering = ("-created_at",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ("user", "limit", "spent", "reserved", "remaining", "currency", "period_start", "period_end")
    search_fields = ("user__username", "user__email")
    readonly_fields = ("spent", "reserved", "updated_at")
    inlines = [LedgerEntryInline]

    @admin.display(description="Remaining")
    def remaining(self, budget: Budget) -> str:
        return f"{budget.remaining:.4f}"


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    list_display = ("created_at", "budget", "kind", "amount", "batch", "image", "note")
    list_filter = ("kind", "created_at")
    search_fields = ("budget__user__username", "batch__title", "note")
    raw_id_fields = ("budget", "batch", "image")
    date_hierarchy = "created_at"
