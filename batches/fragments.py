"""The HTML fragments of a batch page, built one way for every place that shows them.

The batch page, its polling endpoint, the admin change page and the WebSocket consumer all
render the same named partials of `batches/batch_detail.html` from the contexts built here, so
a tile pushed live is byte-for-byte the tile the page would have rendered on reload.

Tiles are rendered from the API's image payload (ImageJobSerializer), which is also what the
`image.updated` event carries: the consumer needs no query to render one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.template.defaultfilters import pluralize
from django.template.loader import render_to_string
from django.urls import reverse

from batches.api.serializers import BatchSummarySerializer, ImageJobSerializer
from batches.models import Batch, BatchStatus, ImageStatus

PAGE_TEMPLATE = "batches/batch_detail.html"

# Progress bar segments, in the order they are drawn; running work is shown after what is done.
_SEGMENTS = (
    (ImageStatus.COMPLETED, "Completed"),
    (ImageStatus.FAILED, "Failed"),
    (ImageStatus.CANCELLED, "Cancelled"),
    (ImageStatus.RUNNING, "Rendering"),
    (ImageStatus.SUBMITTED, "Queued at RunPod"),
    (ImageStatus.RETRYING, "Waiting to retry"),
)
# What an author reads for each status. `submitted` is a job RunPod accepted but has not started
# (it waits in RunPod's own queue for a GPU): only `running` is rendering.
_IMAGE_LABELS = {
    ImageStatus.PENDING: "Waiting",
    ImageStatus.SUBMITTED: "Queued at RunPod",
    ImageStatus.RUNNING: "Rendering",
    ImageStatus.RETRYING: "Waiting to retry",
}
_BATCH_STATUS_LABELS = dict(BatchStatus.choices)
_IMAGE_STATUS_LABELS = dict(ImageStatus.choices) | _IMAGE_LABELS


def status_label(status: str) -> str:
    """A batch's status in words ("Running": a batch runs while its panels render)."""
    return str(_BATCH_STATUS_LABELS.get(status, status.title()))


def image_status_label(status: str) -> str:
    """A panel's status in words ("Queued at RunPod", "Rendering", "Waiting to retry")."""
    return str(_IMAGE_STATUS_LABELS.get(status, status.title()))


def progress(counts: dict[str, int]) -> dict[str, Any]:
    """Counts turned into what a progress bar shows: segments in percent, done and total.

    `done` counts every panel that has ended (completed, failed or cancelled: the bar's filled
    part); `completed` is what the author has. The words never call a cancelled panel done."""
    total = counts.get("total", 0)
    done = sum(
        counts.get(status, 0)
        for status in (ImageStatus.COMPLETED, ImageStatus.FAILED, ImageStatus.CANCELLED)
    )
    segments = []
    for status, label in _SEGMENTS:
        count = counts.get(status, 0)
        if count and total:
            segments.append(
                {"status": status, "label": label, "count": count, "percent": count * 100 / total}
            )
    completed = counts.get(ImageStatus.COMPLETED, 0)
    failed = counts.get(ImageStatus.FAILED, 0)
    cancelled = counts.get(ImageStatus.CANCELLED, 0)
    return {
        "total": total,
        "done": done,
        "completed": completed,
        "failed": failed,
        "cancelled": cancelled,
        "rendering": counts.get(ImageStatus.RUNNING, 0),
        "queued": counts.get(ImageStatus.SUBMITTED, 0),
        "retrying": counts.get(ImageStatus.RETRYING, 0),
        "pending": counts.get(ImageStatus.PENDING, 0),
        "percent": round(done * 100 / total) if total else 0,
        "segments": segments,
        "summary": summary_in_words(total, completed, failed, cancelled),
    }


def summary_in_words(total: int, completed: int, failed: int, cancelled: int) -> str:
    """ "8 of 40 panels done, 32 cancelled": what the author has, then what ended without an
    image. A cancelled or failed panel is never counted as done."""
    text = f"{completed} of {total} panel{pluralize(total)} done"
    if failed:
        text += f", {failed} failed"
    if cancelled:
        text += f", {cancelled} cancelled"
    return text


def retry_in_words(failed: int, cancelled: int) -> str:
    """The retry button names what it requeues: "Retry 3 failed and 29 cancelled panels"."""
    if failed and cancelled:
        return f"Retry {failed} failed and {cancelled} cancelled panels"
    if failed:
        return f"Retry {failed} failed panel{pluralize(failed)}"
    return f"Retry {cancelled} cancelled panel{pluralize(cancelled)}"


# Below this many seconds a count ("about 3 s") would read as a promise to the second.
FEW_SECONDS = 10


def humanize_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    if seconds < FEW_SECONDS:
        return "a few seconds left"
    if seconds < 60:
        return f"about {seconds} s left"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return (
            f"about {minutes} min {rest:02d} s left"
            if minutes < 10
            else f"about {minutes} min left"
        )
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes:02d} min left"


def tile_context(image: dict[str, Any], batch_id: int) -> dict[str, Any]:
    """A tile from an image payload (the API's / the event's shape)."""
    return {
        **image,
        "batch_id": batch_id,
        "panel_number": image["index"] + 1,
        "status_label": image_status_label(image["status"]),
        "is_active": image["status"]
        in (ImageStatus.SUBMITTED, ImageStatus.RUNNING, ImageStatus.RETRYING),
        "url": reverse("panel-detail", args=[batch_id, image["index"]]),
    }


def tiles(batch: Batch) -> list[dict[str, Any]]:
    images = batch.images.order_by("index")
    return [tile_context(data, batch.pk) for data in ImageJobSerializer(images, many=True).data]


def header_context(
    batch: Batch, *, csrf_token: str = "", next_url: str = "", seq: int | None = None
) -> dict[str, Any]:
    """Status, progress, ETA, cost and the actions that apply now. `seq` is the event number
    the header stands for (default: the batch's own, as read with it)."""
    summary = BatchSummarySerializer()
    counts = summary.get_counts(batch)
    bar = progress(counts)
    retryable = bar["failed"] + bar["cancelled"]
    context = {
        "batch": batch,
        "batch_id": batch.pk,
        "status_label": status_label(batch.status),
        "progress": bar,
        "eta": humanize_eta(summary.get_eta_seconds(batch)),
        "estimated_cost": batch.estimated_cost,
        "actual_cost": batch.actual_cost,
        "cost_percent": _cost_percent(batch.actual_cost, batch.estimated_cost),
        "can_cancel": not batch.is_terminal,
        "can_retry": batch.is_terminal and retryable > 0,
        "retryable": retryable,
        "retry_label": retry_in_words(bar["failed"], bar["cancelled"]),
        "can_download": bar["completed"] > 0,
        "seq": batch.seq if seq is None else seq,
        "next_url": next_url,
    }
    if csrf_token:
        # Rendered outside a request by the consumer, so the token is handed in explicitly;
        # left out otherwise, so a view's own (request) token is the one used.
        context["csrf_token"] = csrf_token
    return context


def _cost_percent(actual: Decimal, estimate: Decimal) -> int:
    if estimate <= 0:
        return 0
    return min(100, round(actual * 100 / estimate))


def page_context(batch: Batch, *, csrf_token: str = "", next_url: str = "") -> dict[str, Any]:
    return {
        **header_context(batch, csrf_token=csrf_token, next_url=next_url),
        "images": tiles(batch),
    }


def render_tile(image: dict[str, Any], batch_id: int) -> str:
    """One tile, as an out-of-band swap (the consumer's answer to `image.updated`)."""
    context = {"image": tile_context(image, batch_id), "batch_id": batch_id, "oob": True}
    return render_to_string(f"{PAGE_TEMPLATE}#tile", context)


def render_header(
    batch: Batch, *, csrf_token: str = "", next_url: str = "", seq: int | None = None
) -> str:
    """The progress header, as an out-of-band swap (the answer to `batch.updated`)."""
    context = {
        **header_context(batch, csrf_token=csrf_token, next_url=next_url, seq=seq),
        "oob": True,
    }
    return render_to_string(f"{PAGE_TEMPLATE}#progress", context)


def render_live(batch: Batch, *, csrf_token: str = "", next_url: str = "") -> str:
    """Header and every tile as out-of-band swaps: the (re)connection snapshot."""
    context = {**page_context(batch, csrf_token=csrf_token, next_url=next_url), "oob": True}
    return render_to_string(f"{PAGE_TEMPLATE}#live", context)


def may_watch(user: Any, batch_id: int) -> bool:
    return Batch.objects.visible_to(user).filter(pk=batch_id).exists()
