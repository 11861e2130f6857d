"""The event sender's coalescing: what a backlog may drop and what it must keep."""

from __future__ import annotations

from batches.events import InOrder, latest_only


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


def test_the_higher_seq_is_kept_even_when_it_was_queued_first() -> None:
    # Events are queued after their transactions commit: two threads of one worker may queue
    # an image's seq 11 before its seq 10. The client must get 11, in seq order.
    events = [image_event(1, 11), image_event(2, 9), image_event(1, 10)]

    kept = latest_only(events)

    assert [(event["image"]["id"], event["seq"]) for event in kept] == [(2, 9), (1, 11)]


def bundle(*seqs: int, covered: list[int] | None = None) -> dict:
    events = [image_event(seq, seq) for seq in seqs]
    return {"type": "batch.events", "events": events, "seqs": covered or list(seqs)}


def seqs_of(events: list[dict]) -> list[int]:
    return [event["seq"] for event in events]


def test_in_order_passes_events_on_in_seq_order_whatever_order_bundles_arrive_in() -> None:
    order = InOrder(after=10)

    assert seqs_of(order.accept(bundle(13, 14))) == []  # 11 and 12 are still on their way
    assert order.waiting
    assert seqs_of(order.accept(bundle(11))) == [11]
    assert seqs_of(order.accept(bundle(12, 15))) == [12, 13, 14, 15]
    assert not order.waiting


def test_in_order_counts_superseded_events_a_bundle_left_out() -> None:
    order = InOrder(after=0)

    # A bundle covering 1-3 that kept only 3 (1 and 2 were older updates of the same image).
    assert seqs_of(order.accept(bundle(3, covered=[1, 2, 3]))) == [3]
    assert not order.waiting


def test_in_order_drops_what_the_snapshot_already_showed() -> None:
    order = InOrder(after=20)

    assert seqs_of(order.accept(bundle(19, 20, 21))) == [21]


def test_a_reset_after_a_lost_message_releases_what_follows_the_snapshot() -> None:
    order = InOrder(after=0)
    assert seqs_of(order.accept(bundle(3, 4, 6))) == []  # 1 and 2 were lost

    # The consumer sent a snapshot taken at seq 4: 6 still waits for 5.
    assert seqs_of(order.reset(4)) == []
    assert seqs_of(order.accept(bundle(5))) == [5, 6]
