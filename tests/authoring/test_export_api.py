"""GET /api/v1/batches/{id}/export/?format=pdf|cbz, and the pages view it matches."""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any
from xml.etree import ElementTree

import pytest
from django.test import Client
from PIL import Image
from rest_framework.test import APIClient

from batches import pages
from batches.models import Batch, ImageJob
from batches.retention import prune_panels
from tests.authoring.support import complete_image, finished, submitted
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def export(api: Any, batch: Batch, kind: str, **params: str) -> Any:
    query = "&".join(f"{key}={value}" for key, value in {"format": kind, **params}.items())
    return api.get(f"/api/v1/batches/{batch.pk}/export/?{query}")


def pdf_pages(data: bytes) -> list[tuple[float, float]]:
    """Each page's MediaBox size in points, in order (img2pdf writes one per image)."""
    boxes = re.findall(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    return [(float(width), float(height)) for width, height in boxes]


def panel_colour(page: Image.Image, frame: pages.Frame) -> tuple[int, ...]:
    """The colour just below and right of a frame's centre: a panel is fitted whole and
    centred, and each test panel is its own colour there (its white square ends at the
    centre)."""
    x0, y0, x1, y1 = pages._frame_box(frame)
    return page.getpixel(((x0 + x1) // 2 + 40, (y0 + y1) // 2 + 40))


def test_the_pdf_has_one_page_per_four_panels_in_order(api: Any, user: Any) -> None:
    batch = finished(user, [f"panel {n}" for n in range(6)], title="Chapter 3: The Vault!")

    response = export(api, batch, "pdf")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert 'filename="Chapter-3-The-Vault.pdf"' in response["Content-Disposition"]
    data = b"".join(response.streaming_content)
    assert data.startswith(b"%PDF")
    # Two pages of 1200 x 1800 pixels at 150 dpi: 8 x 12 inches, 576 x 864 points.
    assert pdf_pages(data) == [(576.0, 864.0), (576.0, 864.0)]
    assert response["X-Comicgen-Pages"] == "2"


def test_the_cbz_holds_the_pages_in_order_and_comic_info(api: Any, user: Any) -> None:
    batch = finished(user, [f"panel {n}" for n in range(5)], title="Chapter 3")

    response = export(api, batch, "cbz", layout="tiers")

    assert response.status_code == 200
    assert 'filename="Chapter-3.cbz"' in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.namelist() == ["page-001.jpg", "page-002.jpg", "ComicInfo.xml"]
    info = ElementTree.fromstring(archive.read("ComicInfo.xml"))
    assert info.findtext("Title") == "Chapter 3"
    assert info.findtext("PageCount") == "2"
    first = Image.open(io.BytesIO(archive.read("page-001.jpg")))
    second = Image.open(io.BytesIO(archive.read("page-002.jpg")))
    assert first.size == second.size == (pages.PAGE_WIDTH, pages.PAGE_HEIGHT)
    # Reading order: page 1 holds panels 1-3 top to bottom, page 2 panels 4-5.
    frames = pages.LAYOUTS["tiers"]
    colours = [panel_colour(first, frame) for frame in frames]
    colours += [panel_colour(second, frame) for frame in frames[:2]]
    expected = [((40 * n) % 256, 90, 160) for n in range(5)]
    for got, want in zip(colours, expected, strict=True):
        assert all(abs(a - b) <= 12 for a, b in zip(got, want, strict=True)), (got, want)


def test_the_export_uses_the_selected_take(api: Any, user: Any) -> None:
    batch = finished(user, ["only"])
    api.post(f"/api/v1/batches/{batch.pk}/images/0/redraw/", {}, format="json")
    complete_image(ImageJob.objects.get(batch=batch), (250, 0, 0))

    def first_colour() -> tuple[int, ...]:
        data = b"".join(export(api, batch, "cbz", layout="splash").streaming_content)
        page = Image.open(io.BytesIO(zipfile.ZipFile(io.BytesIO(data)).read("page-001.jpg")))
        return panel_colour(page, pages.LAYOUTS["splash"][0])

    assert first_colour()[0] > 200  # the new, red take
    api.post(f"/api/v1/batches/{batch.pk}/images/0/select/", {"version": 1}, format="json")
    assert first_colour()[0] < 20  # the first take, picked back
    zip_names = zipfile.ZipFile(
        io.BytesIO(b"".join(api.get(f"/api/v1/batches/{batch.pk}/download/").streaming_content))
    ).namelist()
    assert zip_names == ["panel-001.png"]


def test_a_failed_panel_keeps_its_frame_with_a_caption(api: Any, user: Any) -> None:
    batch = submitted(user, ["good", "bad"])
    complete_image(batch.images.get(index=0), (0, 0, 0))
    ImageJob.objects.filter(batch=batch, index=1).update(status="failed")

    laid_out = pages.layout_pages(Batch.objects.get(pk=batch.pk))

    assert [slot.missing for slot in laid_out[0].slots] == ["", "failed"]
    response = export(api, batch, "pdf")
    assert response.status_code == 200
    assert response["X-Comicgen-Missing-Panels"] == "1"


@pytest.mark.parametrize("query", ["format=doc", "format=", "format=pdf&layout=manga"])
def test_a_bad_format_or_layout_is_400(api: Any, user: Any, query: str) -> None:
    batch = finished(user, ["one"])

    response = api.get(f"/api/v1/batches/{batch.pk}/export/?{query}")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


def test_nothing_to_export_is_409_and_expired_images_say_so(api: Any, user: Any) -> None:
    waiting = submitted(user, ["not yet"])
    assert export(api, waiting, "pdf").status_code == 409

    batch = finished(user, ["one"])
    Batch.objects.filter(pk=batch.pk).update(finished_at="2020-01-01T00:00:00Z")
    prune_panels()

    response = export(api, batch, "cbz")
    assert response.status_code == 409
    assert "expired" in response.json()["detail"]


def test_export_is_owner_only(user: Any) -> None:
    batch = finished(user, ["one"])
    stranger = APIClient()
    stranger.force_authenticate(UserFactory())

    assert export(stranger, batch, "pdf").status_code == 404
    assert export(APIClient(), batch, "pdf").status_code == 401


def test_the_pages_view_lays_out_and_remembers_the_layout(user: Any) -> None:
    batch = finished(user, [f"panel {n}" for n in range(5)])
    client = Client()
    client.force_login(user)

    grid = client.get(f"/batches/{batch.pk}/pages/")
    splash = client.get(f"/batches/{batch.pk}/pages/?layout=splash")

    assert grid.status_code == 200
    assert grid.content.decode().count('data-testid="comic-page"') == 2
    assert splash.content.decode().count('data-testid="comic-page"') == 5
    assert Batch.objects.get(pk=batch.pk).page_layout == "splash"
    assert "@media print" in splash.content.decode()
    other = Client()
    other.force_login(UserFactory())
    assert other.get(f"/batches/{batch.pk}/pages/").status_code == 404
