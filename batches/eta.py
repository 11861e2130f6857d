"""How long a running batch has left, as the API's `eta_seconds` and the pages' "about 2 min left".

The pace so far (seconds per finished panel, parallelism included) times the panels left is a
fair guess while panels flow. It is wrong in two cases an author notices at once:
- a panel waiting out a retry backoff (`next_attempt_at`) cannot finish before that moment, so
  "about 1 s left" while it waits 30 s is a false promise;
- a panel not yet rendering (waiting for a slot, queued at RunPod, or about to retry) needs at
  least one panel's render time once it starts.
So the estimate is never below the latest backoff still to wait, plus one panel's render time,
whenever a panel is still waiting.
"""

from __future__ import annotations

import datetime as dt

from django.db.models import Avg, Max, Q
from django.utils import timezone

from batches.models import Batch, ImageStatus

# Panels that have not started rendering yet.
WAITING = (ImageStatus.PENDING, ImageStatus.SUBMITTED, ImageStatus.RETRYING)


def eta_seconds(
    batch: Batch, counts: dict[str, int], now: dt.datetime | None = None
) -> float | None:
    """Seconds until the batch should be done, or None when there is nothing to base it on
    (not started, no panel finished yet) or nothing left (terminal, or finishing now)."""
    if batch.is_terminal or batch.started_at is None:
        return None
    now = now or timezone.now()
    finished = counts["completed"] + counts["failed"] + counts["cancelled"]
    left = counts["total"] - finished
    if left <= 0 or finished == 0:
        return None
    pace = (now - batch.started_at).total_seconds() / finished
    estimate = pace * left
    waiting = sum(counts.get(status, 0) for status in WAITING)
    if waiting:
        facts = batch.images.aggregate(
            latest_backoff=Max(
                "next_attempt_at",
                filter=Q(
                    status__in=[ImageStatus.PENDING, ImageStatus.RETRYING],
                    next_attempt_at__gt=now,
                ),
            ),
            render_ms=Avg("execution_ms", filter=Q(status=ImageStatus.COMPLETED)),
        )
        backoff = facts["latest_backoff"]
        backoff_left = (backoff - now).total_seconds() if backoff else 0.0
        # One panel's render time as measured on this batch (RunPod's executionTime), else
        # the pace so far.
        render = facts["render_ms"] / 1000 if facts["render_ms"] else pace
        estimate = max(estimate, backoff_left + render)
    return round(estimate, 1)
