"""Who may ask for what, beyond owning a batch."""

from __future__ import annotations

from typing import Any

# Granted in the admin (a user's or a group's permissions); staff have it by being staff.
SUBMIT_HIGH_PRIORITY = "batches.submit_high_priority"

PRIORITY_NOT_ALLOWED = (
    "High priority is reserved for staff and the authors they allow: submit this batch with "
    "priority normal or low, or ask staff for the “Can submit high-priority batches” permission."
)


def may_submit_high_priority(user: Any) -> bool:
    """High-priority work overtakes everyone else's on the shared GPUs, so it is a privilege."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    return bool(user.is_staff or user.has_perm(SUBMIT_HIGH_PRIORITY))
