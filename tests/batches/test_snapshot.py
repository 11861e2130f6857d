"""The batch.snapshot event a WebSocket gets first: built a page of images at a time as JSON
text, it says exactly what BatchSerializer says of the batch, with the batch's seq."""

from __future__ import annotations

import json

import pytest

from batches import events
from batches.api.serializers import BatchSerializer
from batches.models import Batch
from tests.factories import make_batch, make_image

pytestmark = pytest.mark.django_db


def test_a_snapshot_built_page_by_page_is_what_the_batch_serializer_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events, "SNAPSHOT_PAGE", 2)
    batch = make_batch()
    for index in (3, 0, 4, 1, 2):
        make_image(batch=batch, index=index, prompt=f'panel "{index}" \u00e9')
    Batch.objects.take_seqs(batch.pk, 7)

    snapshot = events.snapshot_event(batch.pk)

    assert snapshot is not None
    whole = BatchSerializer(Batch.objects.with_images().get(pk=batch.pk)).data
    expected = {"type": "batch.snapshot", "seq": 7, "batch": json.loads(json.dumps(whole))}
    assert json.loads(snapshot.text) == expected
    assert snapshot.seq == 7
    assert [image["index"] for image in expected["batch"]["images"]] == [0, 1, 2, 3, 4]


def test_a_batch_without_images_has_an_empty_list_and_a_gone_one_no_snapshot() -> None:
    batch = make_batch()

    snapshot = events.snapshot_event(batch.pk)

    assert snapshot is not None
    assert json.loads(snapshot.text)["batch"]["images"] == []
    assert snapshot.seq == 0
    assert events.snapshot_event(batch.pk + 1000) is None
