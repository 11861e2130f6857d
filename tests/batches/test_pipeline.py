"""The whole pipeline on real processes: API -> Celery chord -> emulator -> PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from PIL import Image

from batches.models import Batch, BatchStatus, ImageStatus
from budgets.books import check_books
from budgets.models import LedgerEntry
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def submit(api: Any, prompts: list[str], **extra: Any) -> dict[str, Any]:
    body = {
        "title": "Chapter",
        "params": {"width": 128, "height": 128, "steps": 4},
        "images": [{"prompt": prompt} for prompt in prompts],
        **extra,
    }
    response = api.post("/api/v1/batches/", body, format="json")
    assert response.status_code == 202, response.json()
    return response.json()


def finished(batch_id: int) -> Batch | None:
    batch = Batch.objects.get(pk=batch_id)
    return batch if batch.is_terminal else None


def test_a_twenty_image_batch_completes_with_twenty_stored_pngs(live: Any, api: Any) -> None:
    created = submit(api, [f"panel {n}" for n in range(20)])
    assert created["status"] == "queued"
    assert created["counts"]["total"] == 20

    batch = wait_for(lambda: finished(created["id"]), timeout=60)

    assert batch.status == BatchStatus.COMPLETED
    images = list(batch.images.order_by("index"))
    assert [image.status for image in images] == [ImageStatus.COMPLETED] * 20
    for image in images:
        with Image.open(image.image.path) as png:
            assert png.format == "PNG"
            assert png.size == (128, 128)
    stats = live.emulator.stats()
    assert stats["runs_per_input"]["duplicates"] == 0
    assert stats["jobs"].get("COMPLETED") == 20
    charges = LedgerEntry.objects.filter(batch=batch, kind="charge")
    assert charges.count() == 20
    assert sum(charge.amount for charge in charges) == batch.actual_cost
    assert batch.reserved == Decimal("0")
    detail = api.get(f"/api/v1/batches/{batch.pk}/").json()
    assert detail["counts"]["completed"] == 20
    assert all(image["image_url"] for image in detail["images"])


def test_failing_images_are_retried_and_the_rest_untouched(live: Any, api: Any) -> None:
    created = submit(api, ["steady one", "flaky [fail:2]", "steady two", "doomed [fail:always]"])

    batch = wait_for(lambda: finished(created["id"]), timeout=60)

    assert batch.status == BatchStatus.PARTIAL
    images = {image.prompt: image for image in batch.images.all()}
    assert images["flaky [fail:2]"].status == ImageStatus.COMPLETED
    assert images["flaky [fail:2]"].attempts == 3
    assert images["steady one"].attempts == 1
    assert images["steady two"].attempts == 1
    doomed = images["doomed [fail:always]"]
    assert doomed.status == ImageStatus.FAILED
    assert doomed.attempts == 3
    assert "gave up after 3 attempts" in doomed.error
    assert live.emulator.stats()["runs_per_input"]["duplicates"] == 0


def test_a_hundred_images_run_in_chunks_within_the_in_flight_limit(live: Any, api: Any) -> None:
    live.emulator.configure(latency=0.1, workers=16)
    created = submit(api, [f"crowd scene {n}" for n in range(100)])

    batch = wait_for(lambda: finished(created["id"]), timeout=120)

    assert batch.status == BatchStatus.COMPLETED
    assert batch.chunk_size == 10
    stats = live.emulator.stats()
    assert stats["jobs"]["COMPLETED"] == 100
    assert 1 < stats["max_in_flight"] <= 12  # RUNPOD_MAX_IN_FLIGHT of the worker
    assert stats["runs_per_input"]["duplicates"] == 0


def test_rate_limit_and_server_error_storms_slow_a_batch_but_do_not_fail_it(
    live: Any, api: Any
) -> None:
    # A 500 from /run may come after RunPod took the job: such an attempt waits out its grace
    # (5 s + the 20 s attempt timeout here) before it starts again, so the batch takes minutes.
    live.emulator.configure(rate_limit_run=8, rate_limit_status=8, http_error_rate=0.2)
    created = submit(api, [f"stormy night {n}" for n in range(12)])

    batch = wait_for(lambda: finished(created["id"]), timeout=240)

    assert batch.status == BatchStatus.COMPLETED
    # A 500 from /run may come after RunPod took the job: such an attempt waits for its webhook
    # and, with none, ends uncharged without counting against the image. No image was retried
    # for its own sake, and the books balance.
    assert all(image.attempts_this_round == 1 for image in batch.images.all())
    assert check_books() == []
    stats = live.emulator.stats()
    refused = sum(
        count
        for operation in stats["requests"].values()
        for code, count in operation.items()
        if code in ("429", "500")
    )
    print(f"injected: {refused} HTTP 429/500 answers")
    assert refused > 0
    assert stats["runs_per_input"]["duplicates"] == 0


def test_lost_webhooks_are_covered_by_status_polling(live: Any, api: Any) -> None:
    live.emulator.configure(drop_webhooks=1.0)
    created = submit(api, ["quiet panel one", "quiet panel two"])

    batch = wait_for(lambda: finished(created["id"]), timeout=60)

    assert batch.status == BatchStatus.COMPLETED
    stats = live.emulator.stats()
    assert stats["webhooks"]["dropped"] >= 2
    assert stats["requests"]["status"].get("200", 0) >= 2


def test_a_high_priority_batch_overtakes_normal_work(live: Any, api: Any, user: Any) -> None:
    from django.contrib.auth.models import Permission

    user.user_permissions.add(Permission.objects.get(codename="submit_high_priority"))
    live.emulator.configure(latency=0.3, workers=12)
    busy = submit(api, [f"background panel {n}" for n in range(80)])
    wait_for(lambda: Batch.objects.get(pk=busy["id"]).status == BatchStatus.RUNNING, timeout=30)

    urgent = submit(api, ["urgent cover"], priority="high")

    urgent_batch = wait_for(lambda: finished(urgent["id"]), timeout=60)
    busy_batch = wait_for(lambda: finished(busy["id"]), timeout=120)
    assert urgent_batch.status == BatchStatus.COMPLETED
    assert urgent_batch.finished_at < busy_batch.finished_at
    panel = urgent_batch.images.get()
    # Normal panels that took a RunPod slot after the urgent one was submitted and before it got
    # one: with priority, only those already on their way; FIFO would have let ~60 pass.
    overtaken_by = busy_batch.images.filter(
        submitted_at__gt=urgent_batch.created_at, submitted_at__lt=panel.submitted_at
    ).count()
    waited = (panel.finished_at - urgent_batch.created_at).total_seconds()
    queued = (panel.submitted_at - urgent_batch.created_at).total_seconds()
    print(
        f"high batch done in {waited:.2f}s (slot after {queued:.2f}s); "
        f"{overtaken_by} normal panels took a slot before it"
    )
    assert overtaken_by <= 24  # twice RUNPOD_MAX_IN_FLIGHT; without priority about 60
