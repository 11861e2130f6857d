"""Panels that finished in the past, for the estimates to learn from (budgets.estimates)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from batches.models import Batch, BatchStatus, ImageJob, ImageStatus
from tests.factories import UserFactory


def record_history(
    panels: int,
    *,
    model: str = "sdxl",
    width: int = 768,
    height: int = 768,
    steps: int = 25,
    seconds: float | Callable[[int], float] = 1.0,
    attempts: int = 1,
    status: str = ImageStatus.COMPLETED,
    endpoint: str | None = None,
    user: Any = None,
) -> Batch:
    """A finished batch of `panels` panels that took `seconds` each (or `seconds(index)`) in
    `attempts` attempts, newer than any recorded before it. No money moves: the estimates read
    only statuses, attempts, times and params."""
    now = timezone.now()
    batch = Batch.objects.create(
        user=user or UserFactory(),
        title="history",
        status=BatchStatus.COMPLETED,
        endpoint_id=settings.RUNPOD_ENDPOINT_ID if endpoint is None else endpoint,
        finished_at=now,
    )
    params = {"model": model, "width": width, "height": height, "steps": steps, "guidance": 7.5}
    ImageJob.objects.bulk_create(
        ImageJob(
            batch=batch,
            index=index,
            prompt=f"history {index}",
            seed=index,
            params=params,
            status=status,
            attempts=attempts,
            execution_ms=(
                round(1000 * (seconds(index) if callable(seconds) else seconds))
                if status == ImageStatus.COMPLETED
                else None
            ),
            # In panel order, the last one newest.
            finished_at=now - timedelta(milliseconds=panels - index),
        )
        for index in range(panels)
    )
    return batch
