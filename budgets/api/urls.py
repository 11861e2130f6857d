from __future__ import annotations

from django.urls import path

from budgets.api.views import BudgetView

urlpatterns = [path("budget/", BudgetView.as_view(), name="budget")]
