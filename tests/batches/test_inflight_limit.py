"""The shared in-flight limiter on real Redis: it counts jobs across callers per endpoint, serves
high before normal before low and, within a priority, the user holding the fewest slots first;
it wakes the waiter next in line, and a Redis that restarted empty counts again, from
PostgreSQL, the jobs that are still running."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from batches import capacity, flow, limiter
from batches.models import ImageStatus
from tests.budgets.test_budget_services import make_batch


@pytest.fixture(autouse=True)
def _no_health(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests set the target themselves: no /health is read."""
    monkeypatch.setattr(capacity, "follow", lambda endpoint: None)


@pytest.fixture
def endpoint(settings: Any) -> Iterator[str]:
    """An endpoint of this test's own, so the session's Celery worker never shares its keys."""
    settings.RUNPOD_MAX_IN_FLIGHT = 1000
    yield f"ep-{uuid.uuid4().hex[:8]}"
    client = flow.get_redis()
    for key in client.scan_iter("waiter:*"):
        client.delete(key)


def acquire(endpoint: str, image: int, priority: str = "normal", user: int = 1) -> bool:
    return (
        limiter.acquire_slots(endpoint, [image], priority, user, f"waiter:{user}:{priority}") == 1
    )


def doorbells(*waiters: str) -> dict[str, int]:
    client = flow.get_redis()
    return {waiter: int(client.llen(waiter)) for waiter in waiters}


@pytest.mark.django_db
def test_the_ceiling_holds_across_callers(settings: Any, endpoint: str) -> None:
    settings.RUNPOD_MAX_IN_FLIGHT = 2
    assert acquire(endpoint, 1)
    assert acquire(endpoint, 2)
    assert not acquire(endpoint, 3)
    limiter.release_slots([1])
    assert acquire(endpoint, 3)


@pytest.mark.django_db
def test_a_published_target_below_the_ceiling_is_the_limit(endpoint: str) -> None:
    limiter.publish_target(endpoint, 2)
    assert acquire(endpoint, 1)
    assert acquire(endpoint, 2)
    assert not acquire(endpoint, 3)
    assert limiter.snapshot(endpoint)["in_flight"] == 2


@pytest.mark.django_db
def test_a_published_target_above_the_ceiling_is_capped(settings: Any, endpoint: str) -> None:
    settings.RUNPOD_MAX_IN_FLIGHT = 1
    limiter.publish_target(endpoint, 50)
    assert acquire(endpoint, 1)
    assert not acquire(endpoint, 2)


@pytest.mark.django_db
def test_endpoints_are_limited_independently(endpoint: str) -> None:
    other = endpoint + "-other"
    limiter.publish_target(endpoint, 1)
    limiter.publish_target(other, 1)
    assert acquire(endpoint, 1)
    assert not acquire(endpoint, 2)
    assert acquire(other, 2)
    limiter.release_slots([2])  # found at `other` by its holder record
    assert limiter.snapshot(other)["in_flight"] == 0
    assert limiter.snapshot(endpoint)["in_flight"] == 1


@pytest.mark.django_db
def test_an_image_that_holds_a_slot_keeps_it(endpoint: str) -> None:
    limiter.publish_target(endpoint, 1)
    assert acquire(endpoint, 1)
    assert acquire(endpoint, 1)
    assert limiter.snapshot(endpoint)["in_flight"] == 1


@pytest.mark.django_db
def test_high_is_served_before_normal_and_normal_before_low(endpoint: str) -> None:
    limiter.publish_target(endpoint, 1)
    assert acquire(endpoint, 1, "normal", user=1)
    assert not acquire(endpoint, 2, "low", user=2)
    assert not acquire(endpoint, 3, "normal", user=3)
    assert not acquire(endpoint, 4, "high", user=4)
    limiter.release_slots([1])
    # The high waiter is rung, and the others are refused while it waits.
    assert doorbells("waiter:4:high", "waiter:3:normal", "waiter:2:low") == {
        "waiter:4:high": 1, "waiter:3:normal": 0, "waiter:2:low": 0,
    }  # fmt: skip
    assert not acquire(endpoint, 2, "low", user=2)
    assert not acquire(endpoint, 3, "normal", user=3)
    assert acquire(endpoint, 4, "high", user=4)
    limiter.release_slots([4])
    assert not acquire(endpoint, 2, "low", user=2)
    assert acquire(endpoint, 3, "normal", user=3)
    limiter.release_slots([3])
    assert acquire(endpoint, 2, "low", user=2)


@pytest.mark.django_db
def test_a_user_holding_fewer_slots_takes_each_freed_slot_first(endpoint: str) -> None:
    """A's big batch holds every slot; B asks. Every slot A frees goes to B, whoever asks first,
    until B holds as many as A."""
    limiter.publish_target(endpoint, 4)
    assert all(acquire(endpoint, n, user=1) for n in (1, 2, 3, 4))
    assert not acquire(endpoint, 100, user=2)  # B waits
    assert not acquire(endpoint, 5, user=1)  # A waits too

    limiter.release_slots([1])
    assert doorbells("waiter:2:normal", "waiter:1:normal") == {
        "waiter:2:normal": 1, "waiter:1:normal": 0,
    }  # fmt: skip
    assert not acquire(endpoint, 5, user=1)  # A asks first, but B holds fewer
    assert acquire(endpoint, 100, user=2)  # B 1, A 3
    assert not acquire(endpoint, 101, user=2)

    limiter.release_slots([2])
    assert not acquire(endpoint, 5, user=1)  # A would hold 3 again, B only 1
    assert acquire(endpoint, 101, user=2)  # B 2, A 2

    limiter.release_slots([3])
    assert not acquire(endpoint, 102, user=2)  # as many each: A was served less recently
    assert acquire(endpoint, 5, user=1)


@pytest.mark.django_db
def test_a_user_behind_takes_every_slot_freed_together_until_its_share_catches_up(
    endpoint: str,
) -> None:
    """A holds all 6 slots; B's chunk waits for 3 panels. A frees 4 at once and asks again:
    B, 2 behind A's 2, is owed 2 of them and then B and A take turns, so A's own request gets
    one slot, not the three it got when B counted as one."""
    limiter.publish_target(endpoint, 6)
    assert limiter.acquire_slots(endpoint, [1, 2, 3, 4, 5, 6], "normal", 1, "waiter:1:normal") == 6
    assert limiter.acquire_slots(endpoint, [100, 101, 102], "normal", 2, "waiter:2:normal") == 0

    limiter.release_slots([1, 2, 3, 4])
    # A's chunk asks first (its pass runs on while B's wakes up): one slot, not three.
    assert limiter.acquire_slots(endpoint, [7, 8, 9, 10], "normal", 1, "waiter:1:normal") == 1
    assert limiter.acquire_slots(endpoint, [100, 101, 102], "normal", 2, "waiter:2:normal") == 3
    held = flow.get_redis().hgetall(limiter.endpoint_key(endpoint, "held"))
    assert held == {b"1": b"3", b"2": b"3"}


@pytest.mark.django_db
def test_a_waiter_that_left_the_line_holds_nothing_back_and_wakes_the_next(endpoint: str) -> None:
    """A's chunk, waiting for 5, hands its thread over: B's freed slots go back to B at once,
    not after A's waiter expires."""
    limiter.publish_target(endpoint, 6)
    assert limiter.acquire_slots(endpoint, [1, 2, 3, 4, 5, 6], "normal", 2, "waiter:2:normal") == 6
    assert (
        limiter.acquire_slots(endpoint, [10, 11, 12, 13, 14], "normal", 1, "waiter:1:normal") == 0
    )
    assert not acquire(endpoint, 7, user=2)  # B waits too, behind A
    limiter.release_slots([1, 2, 3, 4])

    limiter.forget_waiter("waiter:1:normal", "normal", [endpoint])

    assert doorbells("waiter:2:normal")["waiter:2:normal"] >= 1
    assert limiter.acquire_slots(endpoint, [7, 8, 9, 20], "normal", 2, "waiter:2:normal") == 4
    assert limiter.snapshot(endpoint)["waiting"]["normal"] == 0


@pytest.mark.django_db
def test_a_higher_priority_waiter_is_owed_every_slot_it_waits_for(endpoint: str) -> None:
    limiter.publish_target(endpoint, 5)
    assert limiter.acquire_slots(endpoint, [1, 2, 3, 4, 5], "normal", 1, "waiter:1:normal") == 5
    assert limiter.acquire_slots(endpoint, [10, 11, 12, 13], "high", 2, "waiter:2:high") == 0
    limiter.release_slots([1, 2, 3, 4, 5])

    # Five free, four owed to the high chunk: normal work gets the fifth only.
    assert limiter.acquire_slots(endpoint, [6, 7, 8], "normal", 1, "waiter:1:normal") == 1
    assert limiter.acquire_slots(endpoint, [10, 11, 12, 13], "high", 2, "waiter:2:high") == 4


@pytest.mark.django_db
def test_an_expired_waiter_s_need_goes_with_it(endpoint: str) -> None:
    limiter.publish_target(endpoint, 1)
    assert acquire(endpoint, 1, user=1)
    assert limiter.acquire_slots(endpoint, [2, 3], "normal", 2, "waiter:2:normal") == 0
    client = flow.get_redis()
    client.zadd(limiter.endpoint_key(endpoint, "waiters:normal"), {"waiter:2:normal": 0})

    limiter.release_slots([1])  # prunes what expired

    assert client.hlen(limiter.endpoint_key(endpoint, "wneed:normal")) == 0
    assert acquire(endpoint, 4, user=1)


@pytest.mark.django_db
def test_a_waiter_s_need_is_forgotten_once_it_is_served(endpoint: str) -> None:
    """Only the waiters still refused keep a need: B's, granted, is gone; A's, refused, is
    there."""
    limiter.publish_target(endpoint, 4)
    assert limiter.acquire_slots(endpoint, [1, 2, 3, 4], "normal", 1, "waiter:1:normal") == 4
    assert limiter.acquire_slots(endpoint, [100, 101], "normal", 2, "waiter:2:normal") == 0
    limiter.release_slots([1, 2, 3])
    assert limiter.acquire_slots(endpoint, [100, 101], "normal", 2, "waiter:2:normal") == 2
    assert limiter.acquire_slots(endpoint, [5, 6], "normal", 1, "waiter:1:normal") == 1
    client = flow.get_redis()
    assert client.hlen(limiter.endpoint_key(endpoint, "wneed:normal")) == 1  # A's, refused once


@pytest.mark.django_db
def test_freed_slots_wake_the_chunks_they_would_be_granted_to(endpoint: str) -> None:
    """A waits with two chunks (for 1 and 5 panels), B with one, B holding every slot. B frees
    2: both go to A, which holds fewer, so both of A's chunks are woken and B's is not (woken,
    it would only be refused, and A's second chunk would find its slot after its next look)."""
    limiter.publish_target(endpoint, 10)
    every = list(range(100, 110))
    assert limiter.acquire_slots(endpoint, every, "normal", 2, "waiter:2:normal") == 10
    assert limiter.acquire_slots(endpoint, [1], "normal", 1, "waiter:1:first") == 0
    assert limiter.acquire_slots(endpoint, [2, 3, 4, 5, 6], "normal", 1, "waiter:1:second") == 0
    assert limiter.acquire_slots(endpoint, [110], "normal", 2, "waiter:2:normal") == 0

    limiter.release_slots([100, 101])

    rung = doorbells("waiter:1:first", "waiter:1:second", "waiter:2:normal")
    assert rung == {"waiter:1:first": 1, "waiter:1:second": 1, "waiter:2:normal": 0}
    assert limiter.acquire_slots(endpoint, [1], "normal", 1, "waiter:1:first") == 1
    assert limiter.acquire_slots(endpoint, [2, 3, 4, 5, 6], "normal", 1, "waiter:1:second") == 1


@pytest.mark.django_db
def test_users_holding_as_many_take_turns(endpoint: str) -> None:
    limiter.publish_target(endpoint, 2)
    assert acquire(endpoint, 1, user=1)
    assert acquire(endpoint, 100, user=2)
    assert not acquire(endpoint, 2, user=1)
    assert not acquire(endpoint, 101, user=2)

    limiter.release_slots([1])  # A 0, B 1: A's turn
    assert not acquire(endpoint, 101, user=2)
    assert acquire(endpoint, 2, user=1)
    limiter.release_slots([100])  # A 1, B 0: B's turn
    assert not acquire(endpoint, 3, user=1)
    assert acquire(endpoint, 101, user=2)


@pytest.mark.django_db
def test_a_user_who_stopped_waiting_holds_no_one_back(endpoint: str) -> None:
    """B got every slot it asked for: A, alone in line, takes the next free one at once."""
    limiter.publish_target(endpoint, 2)
    assert acquire(endpoint, 1, user=1)
    assert acquire(endpoint, 2, user=1)
    assert not acquire(endpoint, 100, user=2)  # full for now: B waits
    limiter.release_slots([2])
    assert acquire(endpoint, 100, user=2)  # B holds 1 and needs no more
    assert not acquire(endpoint, 3, user=1)
    limiter.release_slots([1])
    assert acquire(endpoint, 3, user=1)  # B, holding fewer but not waiting, is not ahead


@pytest.mark.django_db
def test_each_user_share_is_counted_off_when_a_lease_runs_out(endpoint: str) -> None:
    limiter.publish_target(endpoint, 2)
    assert acquire(endpoint, 1, user=1)
    assert acquire(endpoint, 2, user=1)
    assert not acquire(endpoint, 100, user=2)
    client = flow.get_redis()
    client.zadd(limiter.endpoint_key(endpoint, "slots"), {"1": 0})  # image 1's lease is over
    assert acquire(endpoint, 100, user=2)
    assert client.hgetall(limiter.endpoint_key(endpoint, "held")) == {b"1": b"1", b"2": b"1"}


@pytest.mark.django_db
def test_one_user_alone_takes_every_free_slot(endpoint: str) -> None:
    limiter.publish_target(endpoint, 3)
    assert [acquire(endpoint, n, user=1) for n in range(4)] == [True, True, True, False]


@pytest.mark.django_db
def test_a_larger_target_wakes_as_many_waiters_as_it_makes_room_for(endpoint: str) -> None:
    limiter.publish_target(endpoint, 1)
    assert acquire(endpoint, 1, user=1)
    assert not acquire(endpoint, 2, user=2)
    assert not acquire(endpoint, 3, user=3)
    assert not acquire(endpoint, 4, user=4)
    limiter.publish_target(endpoint, 3)
    rung = doorbells("waiter:2:normal", "waiter:3:normal", "waiter:4:normal")
    assert sorted(rung.values()) == [0, 1, 1]


@pytest.mark.django_db
def test_after_redis_loses_its_keys_jobs_still_running_are_counted_again(
    user: Any, settings: Any, endpoint: str
) -> None:
    settings.RUNPOD_MAX_IN_FLIGHT = 2
    batch = make_batch(user, images=3)
    batch.endpoint_id = endpoint
    batch.save(update_fields=["endpoint_id"])
    running, submitted, waiting = batch.images.order_by("index")
    running.status, submitted.status = ImageStatus.RUNNING, ImageStatus.SUBMITTED
    running.save(update_fields=["status"])
    submitted.save(update_fields=["status"])
    assert acquire(endpoint, running.pk)
    assert acquire(endpoint, submitted.pk)

    flow.get_redis().flushdb()  # as a Redis restarted with no data

    assert not acquire(endpoint, waiting.pk, user=2)
    limiter.release_slots([running.pk])  # its job ended
    assert acquire(endpoint, waiting.pk, user=2)


@pytest.mark.django_db
def test_a_rebuild_counts_only_the_jobs_of_its_endpoint(user: Any, endpoint: str) -> None:
    batch = make_batch(user, images=1)
    batch.images.update(status=ImageStatus.RUNNING)
    batch.endpoint_id = endpoint + "-other"
    batch.save(update_fields=["endpoint_id"])
    assert limiter.rebuild_slots(endpoint) is True
    assert limiter.snapshot(endpoint)["in_flight"] == 0


@pytest.mark.django_db
def test_a_rebuild_counts_each_job_at_its_own_endpoint_in_a_batch_of_several_models(
    user: Any, endpoint: str
) -> None:
    batch = make_batch(user, images=2)
    batch.endpoint_id = "mixed"  # what a batch of several models records
    batch.save(update_fields=["endpoint_id"])
    batch.images.update(status=ImageStatus.RUNNING, endpoint_id=endpoint)

    assert limiter.rebuild_slots(endpoint) is True
    assert limiter.snapshot(endpoint)["in_flight"] == 2


@pytest.mark.django_db
def test_a_rebuild_happens_once_however_many_callers_race_for_it(endpoint: str) -> None:
    assert limiter.rebuild_slots(endpoint) is True
    assert limiter.rebuild_slots(endpoint) is False


@pytest.mark.django_db
def test_a_refused_waiter_stops_counting_once_it_stops_asking(endpoint: str) -> None:
    limiter.publish_target(endpoint, 1)
    assert acquire(endpoint, 1, user=1)
    assert not acquire(endpoint, 2, "high", user=2)
    assert limiter.snapshot(endpoint)["waiting"]["high"] == 1
    client = flow.get_redis()
    # Its registration runs out (as WAITER_TTL_SECONDS after its last ask).
    client.zadd(limiter.endpoint_key(endpoint, "waiters:high"), {"waiter:2:high": 0})
    assert limiter.snapshot(endpoint)["waiting"]["high"] == 1
    limiter.release_slots([1])
    assert limiter.snapshot(endpoint)["waiting"]["high"] == 0
    assert acquire(endpoint, 3, "normal", user=1)


@pytest.mark.django_db
def test_a_slot_whose_lease_ran_out_is_free_again(endpoint: str) -> None:
    """A worker that died holding slots frees them when their leases run out."""
    limiter.publish_target(endpoint, 2)
    assert acquire(endpoint, 1)
    assert acquire(endpoint, 2)
    client = flow.get_redis()
    client.zadd(limiter.endpoint_key(endpoint, "slots"), {"1": 0, "2": 0})  # leases over
    assert acquire(endpoint, 3)
    assert acquire(endpoint, 4)
    assert client.hget(limiter.HOLDERS_KEY, "1") is None


@pytest.mark.django_db
def test_a_request_for_several_slots_gets_what_the_target_allows_and_waits_for_the_rest(
    endpoint: str,
) -> None:
    limiter.publish_target(endpoint, 3)
    waiter = "waiter:1:normal"

    assert limiter.acquire_slots(endpoint, [1, 2, 3, 4, 5], "normal", 1, waiter) == 3

    assert limiter.snapshot(endpoint)["in_flight"] == 3
    assert limiter.snapshot(endpoint)["waiting"]["normal"] == 1
    limiter.release_slots([1, 2])
    assert doorbells(waiter)[waiter] >= 1
    assert limiter.acquire_slots(endpoint, [4, 5], "normal", 1, waiter) == 2


@pytest.mark.django_db
def test_each_slot_granted_counts_to_the_user_s_share_before_the_next_is_weighed(
    endpoint: str,
) -> None:
    limiter.publish_target(endpoint, 2)
    assert limiter.acquire_slots(endpoint, [1, 2], "normal", 1, "waiter:1:normal") == 2
    assert not acquire(endpoint, 10, user=2)  # user 2 waits, holding nothing
    limiter.release_slots([1, 2])

    # Two slots are free: user 1 gets one, and then holds more than user 2, whose turn it is.
    assert limiter.acquire_slots(endpoint, [3, 4], "normal", 1, "waiter:1:normal") == 1
    assert acquire(endpoint, 10, user=2)


@pytest.mark.django_db
def test_slots_released_together_are_freed_at_each_endpoint_that_held_them(endpoint: str) -> None:
    other = endpoint + "-other"
    for name in (endpoint, other):
        limiter.publish_target(name, 5)
    assert limiter.acquire_slots(endpoint, [1, 2], "normal", 1, "waiter:1:normal") == 2
    assert limiter.acquire_slots(other, [3, 4], "normal", 1, "waiter:1:normal") == 2

    limiter.release_slots([1, 3, 4])

    assert limiter.snapshot(endpoint)["in_flight"] == 1
    assert limiter.snapshot(other)["in_flight"] == 0
