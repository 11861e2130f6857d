"""Batches for the authors' tools tests, moved through the real money services (reserve, hold,
charge, finalize) without RunPod: each finished panel is a real PNG in storage."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import F
from PIL import Image

from batches import panels, services
from batches.models import Batch, ImageJob, ImageStatus
from budgets import pricing
from budgets import services as budget_services
from tests.web.conftest import make_batch


def png(colour: tuple[int, int, int], size: tuple[int, int] = (128, 128)) -> bytes:
    """A panel-like PNG: a colour field with a white square, so it is not blank."""
    image = Image.new("RGB", size, colour)
    image.paste((255, 255, 255), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def submitted(user: Any, prompts: list[str], **extra: Any) -> Batch:
    """A batch submitted through the real service (validated, priced, reserved)."""
    return make_batch(user, prompts, **extra)


def complete_image(image: ImageJob, colour: tuple[int, int, int], execution_ms: int = 900) -> None:
    """One attempt of `image` held, charged and completed, as the chunk loop does it."""
    max_cost = pricing.attempt_max_cost(image.params)
    assert budget_services.hold_for_attempt(image.batch_id, max_cost)
    ImageJob.objects.filter(pk=image.pk).update(
        status=ImageStatus.RUNNING, attempts=F("attempts") + 1, hold=max_cost
    )
    image.refresh_from_db()
    cost = budget_services.billable_cost(image, execution_ms)
    job_id = f"job-{image.pk}-{image.attempts}"
    name = default_storage.save(panels.panel_storage_name(), ContentFile(png(colour)))
    ImageJob.objects.filter(pk=image.pk).update(
        status=ImageStatus.COMPLETED, image=name, hold=Decimal("0"), execution_ms=execution_ms,
        runpod_job_id=job_id,
    )  # fmt: skip
    budget_services.charge_attempt(
        image, image.attempts, cost, max_cost, job_id=job_id, billed_ms=execution_ms
    )


def finished(user: Any, prompts: list[str], **extra: Any) -> Batch:
    """A batch whose panels all completed (each a different colour), finalized."""
    batch = submitted(user, prompts, **extra)
    for n, image in enumerate(batch.images.order_by("index")):
        complete_image(image, ((40 * n) % 256, 90, 160))
    services.finalize_batch(batch.pk)
    batch.refresh_from_db()
    return batch
