"""The event sender's coalescing: what a backlog may drop and what it must keep."""

from __future__ import annotations

from batches.events import latest_only


def image_event(image_id: int, seq: int) -> dict:
    return {"type": "image.updated", "seq": seq, "image": {"id": image_id}}


def test_an_images_older_update_is_dropped_when_a_newer_one_is_queued() -> None:
    events = [
        image_event(1, 1),
        image_event(2, 2),
        {"type": "batch.updated", "seq": 3},
        image_event(1, 4),
        {"type": "batch.updated", "seq": 5},
    ]

    kept = latest_only(events)

    assert [event["seq"] for event in kept] == [2, 4, 5]


def test_nothing_is_dropped_without_a_newer_update() -> None:
    events = [image_event(1, 1), image_event(2, 2), {"type": "batch.updated", "seq": 3}]

    assert latest_only(events) == events
