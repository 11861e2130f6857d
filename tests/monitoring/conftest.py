"""Batches, images and ledger charges in known states, written directly (no RunPod, no Celery):
the monitor only reads them, so each test lays out exactly the rows whose figures it checks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
import responses
from django.conf import settings
from django.test import Client
from django.utils import timezone

from batches.models import Batch, BatchStatus, ImageJob
from budgets.models import LedgerEntry
from budgets.services import get_budget
from monitoring import queries
from tests.factories import UserFactory

HEALTH = {
    "jobs": {"completed": 12, "failed": 1, "inProgress": 2, "inQueue": 5, "retried": 0},
    "workers": {"idle": 1, "initializing": 1, "running": 2, "ready": 3, "throttled": 0,
                "unhealthy": 0},
}  # fmt: skip


def make_batch(user: Any, statuses: list[str], **fields: Any) -> Batch:
    """A running batch whose panels have the given statuses, in order."""
    fields.setdefault("endpoint_id", "ep-sdxl")
    fields.setdefault("status", BatchStatus.RUNNING)
    batch = Batch.objects.create(user=user, title=fields.pop("title", "Chapter"), **fields)
    ImageJob.objects.bulk_create(
        ImageJob(
            batch=batch,
            index=index,
            prompt=f"panel {index}",
            seed=index,
            params={"model": "sdxl", "width": 512, "height": 512, "steps": 4},
            status=status,
        )
        for index, status in enumerate(statuses)
    )
    return batch


def charge(
    image: ImageJob, attempt: int, at: dt.datetime, amount: str = "0.010000", **fields: Any
) -> LedgerEntry:
    """The ledger row an ended attempt leaves, at a chosen time."""
    return LedgerEntry.objects.create(
        budget=get_budget(image.batch.user),
        kind=LedgerEntry.Kind.CHARGE,
        amount=Decimal(amount),
        batch_id=image.batch_id,
        image=image,
        attempt=attempt,
        runpod_job_id=fields.pop("runpod_job_id", f"job-{image.pk}-{attempt}"),
        billed_ms=1000,
        created_at=at,
        **fields,
    )


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> dt.datetime:
    """A fixed "now", mid-minute, that the monitor's queries also take as now: a test whose
    rows sit "a few seconds ago" must not see them slip into the previous minute or hour
    because the clock turned while it ran."""
    fixed = timezone.now().replace(second=30, microsecond=0)
    monkeypatch.setattr(queries, "timezone", SimpleNamespace(now=lambda: fixed))
    return fixed


@pytest.fixture
def staff_client(db: Any) -> Client:
    client = Client()
    client.force_login(UserFactory(username="operator", is_staff=True))
    return client


@pytest.fixture
def runpod_health() -> Iterator[responses.RequestsMock]:
    """RunPod's /health for the configured endpoint, answered by `responses`."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        mocked.get(f"{settings.RUNPOD_BASE_URL}/{settings.RUNPOD_ENDPOINT_ID}/health", json=HEALTH)
        yield mocked


@pytest.fixture
def author_client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client
