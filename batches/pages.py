"""A chapter laid out as comic pages: the pages view, the PDF and the CBZ all read this.

Panels go onto pages in reading order (panel order), a page at a time, in one of a few classic
layouts chosen per chapter (Batch.page_layout): a 2 x 2 grid, three tiers, 2 + 1 (two panels
over one wide one) and the splash page (one panel per page). Each layout is a list of frames
in fractions of the page's live area, so the HTML view and the composed page images draw the
same thing.

Each panel shows its chosen take (authoring.chosen_take: the selected one, else the latest).
A panel with no take (not drawn, failed) or whose file expired (retention.py) keeps its frame,
with a caption saying why, so the page count and order never depend on which files remain.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from xml.sax.saxutils import escape

from django.core.files.storage import default_storage
from PIL import Image, ImageDraw, ImageFont, ImageOps

from batches.authoring import Take, chosen_take
from batches.models import Batch, ImageJob, ImageStatus, PageLayout

# A frame: left, top, width, height, in fractions of the live area (inside the margins).
Frame = tuple[float, float, float, float]

LAYOUTS: dict[str, list[Frame]] = {
    PageLayout.GRID: [
        (0, 0, 0.5, 0.5),
        (0.5, 0, 0.5, 0.5),
        (0, 0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5, 0.5),
    ],
    PageLayout.TIERS: [(0, 0, 1, 1 / 3), (0, 1 / 3, 1, 1 / 3), (0, 2 / 3, 1, 1 / 3)],
    PageLayout.TWO_ONE: [(0, 0, 0.5, 0.5), (0.5, 0, 0.5, 0.5), (0, 0.5, 1, 0.5)],
    PageLayout.SPLASH: [(0, 0, 1, 1)],
}

# The composed page: 2:3 like a printed comic (at 150 dpi, 8 x 12 inches), white paper.
PAGE_WIDTH, PAGE_HEIGHT = 1200, 1800
PAGE_DPI = 150
MARGIN = 60
GUTTER = 24
BORDER = 4
JPEG_QUALITY = 90


@dataclass
class Slot:
    """One frame of a page and what goes in it."""

    image: ImageJob
    frame: Frame
    take: Take | None
    # Why the frame is empty, in words for the reader ("" when it shows a take).
    missing: str


@dataclass
class Page:
    number: int
    slots: list[Slot]


def missing_reason(image: ImageJob, take: Take | None) -> str:
    if take is not None and take.file_name:
        return ""
    if image.status == ImageStatus.COMPLETED or (take is not None and not take.file_name):
        return "image expired"
    if image.status == ImageStatus.FAILED:
        return "failed"
    if image.status == ImageStatus.CANCELLED:
        return "cancelled"
    return "not drawn yet"


def layout_pages(batch: Batch, layout: str | None = None) -> list[Page]:
    """The chapter's pages in reading order, in `layout` (default: the batch's own)."""
    frames = LAYOUTS.get(layout or batch.page_layout, LAYOUTS[PageLayout.GRID])
    images = list(batch.images.order_by("index").prefetch_related("versions"))
    pages: list[Page] = []
    for start in range(0, len(images), len(frames)):
        slots = []
        for image, frame in zip(images[start : start + len(frames)], frames, strict=False):
            take = chosen_take(image)
            slots.append(Slot(image, frame, take, missing_reason(image, take)))
        pages.append(Page(len(pages) + 1, slots))
    return pages


def missing_panels(pages: list[Page]) -> list[Slot]:
    return [slot for page in pages for slot in page.slots if slot.missing]


# --- composing page images -------------------------------------------------------------------


def _frame_box(frame: Frame) -> tuple[int, int, int, int]:
    """A frame's pixel box on the page, gutters taken off each inner edge."""
    live_w, live_h = PAGE_WIDTH - 2 * MARGIN, PAGE_HEIGHT - 2 * MARGIN
    left, top, width, height = frame
    x0 = MARGIN + round(left * live_w) + (GUTTER // 2 if left > 0 else 0)
    y0 = MARGIN + round(top * live_h) + (GUTTER // 2 if top > 0 else 0)
    x1 = MARGIN + round((left + width) * live_w) - (GUTTER // 2 if left + width < 1 else 0)
    y1 = MARGIN + round((top + height) * live_h) - (GUTTER // 2 if top + height < 1 else 0)
    return x0, y0, x1, y1


def compose_page(page: Page) -> Image.Image:
    """The page as an RGB image: each take scaled to fit its frame whole and centred in it,
    inked borders, and a caption in frames with no image."""
    sheet = Image.new("RGB", (PAGE_WIDTH, PAGE_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=28)
    for slot in page.slots:
        x0, y0, x1, y1 = _frame_box(slot.frame)
        size = (x1 - x0, y1 - y0)
        art = _open_take(slot)
        if art is None:
            draw.rectangle((x0, y0, x1, y1), fill=(235, 235, 235))
            text = f"Panel {slot.image.panel_number}: {slot.missing or 'image missing'}"
            draw.text(((x0 + x1) // 2, (y0 + y1) // 2), text, fill=(90, 90, 90), font=font,
                      anchor="mm")  # fmt: skip
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline="black", width=BORDER)
            continue
        with art:
            # Scaled to fit whole (an author's panel is never cropped), centred in its frame,
            # the ink border drawn around the art itself.
            fitted = ImageOps.contain(art.convert("RGB"), size)
        left = x0 + (size[0] - fitted.width) // 2
        top = y0 + (size[1] - fitted.height) // 2
        sheet.paste(fitted, (left, top))
        draw.rectangle(
            (left, top, left + fitted.width - 1, top + fitted.height - 1),
            outline="black",
            width=BORDER,
        )
    return sheet


def _open_take(slot: Slot) -> Image.Image | None:
    """The take's stored file, or None when there is none or it is gone from storage (the
    slot then says so)."""
    if slot.take is None or not slot.take.file_name:
        return None
    try:
        with default_storage.open(slot.take.file_name, "rb") as handle:
            image = Image.open(io.BytesIO(handle.read()))
            image.load()
            return image
    except (OSError, ValueError):
        slot.missing = "image file missing"
        return None


def page_jpeg(page: Page) -> bytes:
    buffer = io.BytesIO()
    compose_page(page).save(buffer, "JPEG", quality=JPEG_QUALITY, dpi=(PAGE_DPI, PAGE_DPI))
    return buffer.getvalue()


# --- exports ---------------------------------------------------------------------------------


def export_name(batch: Batch, extension: str) -> str:
    """A file name after the title, in safe characters only (letters, digits, - and _)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", batch.title).strip("-")[:80] or f"batch-{batch.pk}"
    return f"{stem}.{extension}"


def pdf_bytes(pages: list[Page]) -> bytes:
    """The pages as one PDF: img2pdf embeds each JPEG as it is (no re-encoding, lossless)."""
    # Imported on the first export, not at start: img2pdf loads pikepdf, 19 MB in every web and
    # worker process that would otherwise never export.
    import img2pdf

    data = img2pdf.convert([page_jpeg(page) for page in pages])
    assert isinstance(data, bytes)
    return data


def comic_info(batch: Batch, pages: list[Page]) -> str:
    """ComicInfo.xml (the Anansi schema comic readers read): title, page count, each page."""
    cover = ' Type="FrontCover"'
    entries = "\n".join(
        f'    <Page Image="{index}"{cover if index == 0 else ""} '
        f'ImageWidth="{PAGE_WIDTH}" ImageHeight="{PAGE_HEIGHT}" />'
        for index in range(len(pages))
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<ComicInfo xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema">\n'
        f"  <Title>{escape(batch.title)}</Title>\n"
        f"  <PageCount>{len(pages)}</PageCount>\n"
        "  <Notes>Made with comicgen.</Notes>\n"
        f"  <Pages>\n{entries}\n  </Pages>\n"
        "</ComicInfo>\n"
    )


def cbz_stream(batch: Batch, pages: list[Page]) -> Iterator[bytes]:
    """A CBZ (a ZIP of the pages in order, page-001.jpg ..., plus ComicInfo.xml), streamed:
    each page is composed only when the stream reaches it, so memory stays at one page."""
    from zipstream import ZIP_STORED, ZipStream

    archive = ZipStream(compress_type=ZIP_STORED)
    width = max(3, len(str(len(pages))))
    for page in pages:
        archive.add(_lazy(page), arcname=f"page-{page.number:0{width}d}.jpg")
    archive.add(comic_info(batch, pages).encode(), arcname="ComicInfo.xml")
    return iter(archive)


def _lazy(page: Page) -> Iterator[bytes]:
    yield page_jpeg(page)
