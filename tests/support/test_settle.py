"""tests/support/settle.py on the real stack: a test that walks away from a running batch
leaves the workers nothing of it, and the signal settling waits on sees the work."""

from __future__ import annotations

from typing import Any

import pytest

from batches.models import Batch, BatchStatus
from tests.batches.test_pipeline import submit
from tests.conftest import WORKER_SETTINGS, wait_for
from tests.support.settle import REPORT, leftover_work, settle_stack

pytestmark = pytest.mark.integration


def test_a_batch_left_running_is_cancelled_and_the_workers_end_idle(live: Any, api: Any) -> None:
    live.emulator.configure(latency=3.0, workers=2)
    created = submit(api, [f"slow panel {n}" for n in range(12)])
    # The chunk tasks run (leases held, tasks delivered and unacknowledged): settling sees it.
    seen = wait_for(lambda: (left := leftover_work())["leases"] and left)
    assert seen["unacked"] >= 1
    restarts = len(REPORT.restarts)

    settle_stack(live, "test_settle")

    assert leftover_work() == {"queued": 0, "unacked": 0, "leases": 0}
    batch = Batch.objects.get(pk=created["id"])
    assert batch.status == BatchStatus.CANCELLED
    assert len(REPORT.restarts) == restarts  # settled by the cancel, not by a restart


@pytest.mark.django_db(transaction=True)
def test_the_sweeper_leaves_a_non_integration_tests_queued_batch_alone() -> None:
    """Meaningful after an integration test started the session's stack (the one above, in
    file order): its sweeper runs every COMICGEN_SWEEP_INTERVAL (2 s) and would take this
    committed, queued batch with no task for a lost one and run it."""
    import time

    from tests.budgets.test_budget_services import make_batch
    from tests.factories import UserFactory

    batch = make_batch(UserFactory(), images=2)
    time.sleep(3 * float(WORKER_SETTINGS["COMICGEN_SWEEP_INTERVAL"]))

    batch.refresh_from_db()
    assert batch.status == BatchStatus.QUEUED
    assert list(batch.images.values_list("attempts", flat=True)) == [0, 0]
