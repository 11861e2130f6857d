"""Template context shared by every page: the signed-in user's budget, for the top nav."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject


def budget(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}

    def load() -> Any:
        from budgets.services import get_budget

        return get_budget(user)

    # Lazy: only pages that show the budget (ours, not the admin's) pay for the query.
    return {"nav_budget": SimpleLazyObject(load)}
