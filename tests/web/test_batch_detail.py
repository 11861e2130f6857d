"""The batch page `/batches/<id>/`, its polling fragment and the panel page."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from batches.models import BatchStatus, ImageStatus
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_it_needs_a_login(user: Any, batch_factory: Any) -> None:
    batch = batch_factory(user, ["a"])

    response = Client().get(f"/batches/{batch.pk}/")

    assert response.status_code == 302


def test_another_users_batch_is_not_found(author_client: Client, batch_factory: Any) -> None:
    other = batch_factory(UserFactory(), ["a"])

    assert author_client.get(f"/batches/{other.pk}/").status_code == 404
    assert author_client.get(f"/batches/{other.pk}/panels/0/").status_code == 404
    assert author_client.post(f"/batches/{other.pk}/cancel/").status_code == 404
    assert author_client.post(f"/batches/{other.pk}/retry/").status_code == 404


def test_staff_can_open_any_batch(staff_client: Client, user: Any, batch_factory: Any) -> None:
    batch = batch_factory(user, ["a"], title="Not staff's")

    response = staff_client.get(f"/batches/{batch.pk}/")

    assert response.status_code == 200
    assert f"by <strong>{user.username}</strong>" in response.content.decode()


def test_it_shows_progress_tiles_in_panel_order_and_a_cancel_button(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["first panel", "second panel", "third panel"])
    batch.images.filter(index=1).update(status=ImageStatus.RUNNING, attempts=1, seq=5)
    batch.images.filter(index=2).update(
        status=ImageStatus.FAILED, attempts=3, error="gave up after 3 attempts"
    )

    html = author_client.get(f"/batches/{batch.pk}/").content.decode()

    assert html.index("first panel") < html.index("second panel") < html.index("third panel")
    assert html.count('class="tile tile--') == 3
    second = batch.images.get(index=1)
    assert f'id="tile-{second.pk}" class="tile tile--running" data-seq="5"' in html
    assert "gave up after 3 attempts" in html
    assert "0 of 3 panels done, 1 failed" in html  # a failed panel is not "done"
    assert f'action="/batches/{batch.pk}/cancel/"' in html
    assert "Retry" not in html  # not while it runs
    assert "Download ZIP" not in html  # nothing finished yet
    assert f'ws-connect="/ws/batches/{batch.pk}/page/"' in html
    assert 'hx-trigger="every 3s [!window.comicgenSocketOpen]"' in html
    assert f'href="/batches/{batch.pk}/panels/0/"' in html


def test_a_finished_batch_offers_retry_and_download(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["ok", "bad"])
    batch.images.filter(index=0).update(status=ImageStatus.COMPLETED, image="panels/x.png")
    batch.images.filter(index=1).update(status=ImageStatus.FAILED, error="boom")
    batch.status = BatchStatus.PARTIAL
    batch.actual_cost = Decimal("0.001234")
    batch.save(update_fields=["status", "actual_cost"])

    html = author_client.get(f"/batches/{batch.pk}/").content.decode()

    assert "Cancel batch" not in html
    assert f'action="/batches/{batch.pk}/retry/"' in html
    assert "Retry 1 failed panel" in html
    assert f'href="/api/v1/batches/{batch.pk}/download/"' in html
    done = batch.images.get(index=0)
    assert re.search(rf'<img src="/panels/{done.pk}\.png\?sig=[^"]+" loading="lazy"', html)
    assert "/media/" not in html  # panels are private: no public file URL
    assert "0.0012" in html
    assert "every 3s" not in html  # a finished batch is not polled


def test_with_htmx_it_answers_with_out_of_band_fragments(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["a", "b"])

    response = author_client.get(f"/batches/{batch.pk}/", headers={"HX-Request": "true"})

    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.count('hx-swap-oob="true"') == 3  # the header and both tiles
    assert 'id="batch-progress"' in html


def test_polling_a_finished_batch_tells_htmx_to_stop(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["a"])
    batch.images.update(status=ImageStatus.FAILED)
    batch.status = BatchStatus.FAILED
    batch.save(update_fields=["status"])

    response = author_client.get(f"/batches/{batch.pk}/", headers={"HX-Request": "true"})

    assert response.status_code == 286
    assert 'hx-swap-oob="true"' in response.content.decode()


def test_the_panel_page_shows_the_full_image_and_its_details(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["the vault", "her face"])
    batch.images.filter(index=1).update(status=ImageStatus.COMPLETED, image="panels/y.png")
    image = batch.images.get(index=1)

    html = author_client.get(f"/batches/{batch.pk}/panels/1/").content.decode()

    assert "Panel 2" in html
    assert re.search(rf'<img src="/panels/{image.pk}\.png\?sig=[^"]+"', html)
    assert "/media/" not in html
    assert str(image.seed) in html
    assert f'href="/batches/{batch.pk}/panels/0/"' in html  # previous
    assert author_client.get(f"/batches/{batch.pk}/panels/2/").status_code == 404
