"""A deterministic comic-panel sketch renderer: the worker's stand-in for a diffusion model.

It draws a plausible ink panel (frame, scene, figures, a speech balloon, the prompt as a caption)
in a few milliseconds with Pillow alone, so the whole pipeline can run end to end on a laptop or
in CI, and a given input always yields the same bytes, which lets tests compare images.
"""

from __future__ import annotations

import hashlib
import io
import random
import textwrap
from functools import lru_cache
from math import cos, sin, tau

from PIL import Image, ImageDraw, ImageFont

INK = 0
PAPER = 255
# Grays of an ink wash; a grayscale ("L") image encodes about three times faster than RGB.
WASHES = (225, 200, 170, 140)

SCENES = ("city", "landscape", "interior", "closeup", "action")
# A few words steer the composition so a chapter's panels look like what they say; any other
# prompt gets a scene picked by its hash.
SCENE_WORDS = {
    "closeup": ("face", "close-up", "closeup", "portrait", "eyes", "smile"),
    "interior": ("room", "kitchen", "office", "inside", "vault", "hall", "bar", "lab"),
    "city": ("city", "street", "town", "rooftop", "building", "alley", "night"),
    "landscape": ("mountain", "desert", "field", "forest", "sea", "beach", "dawn", "rider"),
    "action": ("fight", "run", "explosion", "crash", "chase", "jump", "punch", "fly"),
}

# Fast PNG: the output is mostly flat areas, so level 1 is nearly as small as level 6.
PNG_COMPRESS_LEVEL = 1


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _scene_rng(prompt: str, negative_prompt: str, seed: int) -> tuple[random.Random, str]:
    digest = hashlib.sha256(f"{prompt}\x00{negative_prompt}".encode()).digest()
    prompt_bits = int.from_bytes(digest[:8], "big")
    words = prompt.lower()
    scene = next(
        (kind for kind, hints in SCENE_WORDS.items() if any(hint in words for hint in hints)),
        SCENES[digest[8] % len(SCENES)],
    )
    return random.Random(prompt_bits ^ (seed & 0xFFFFFFFFFFFFFFFF)), scene


def render_panel(
    prompt: str,
    *,
    seed: int,
    width: int,
    height: int,
    negative_prompt: str = "",
    steps: int = 25,
    guidance: float = 7.5,
) -> bytes:
    """Render one comic panel as PNG bytes of exactly ``width`` x ``height``.

    The prompt (and negative prompt) pick the kind of scene, the seed places everything in it,
    ``steps`` sets how dense the hatching is and ``guidance`` how heavy the ink lines are.
    The same arguments always give the same bytes.
    """
    if width < 16 or height < 16:
        raise ValueError("a panel is at least 16x16 pixels")
    rng, scene_kind = _scene_rng(prompt, negative_prompt, seed)
    short = min(width, height)
    margin = max(3, short // 40)
    border = max(2, short // 80)
    line = max(1, round(short / 256 * (0.6 + min(guidance, 20.0) / 12.0)))

    panel = Image.new("L", (width, height), PAPER)
    draw = ImageDraw.Draw(panel)

    font_size = max(9, short // 22)
    font = _font(font_size)
    inner_left, inner_top = margin + border, margin + border
    inner_right, inner_bottom = width - margin - border, height - margin - border
    caption_lines = _caption_lines(prompt, font, inner_right - inner_left - 2 * margin, short)
    line_height = font_size + max(2, font_size // 4)
    caption_height = len(caption_lines) * line_height + margin if caption_lines else 0

    # Drawing the scene on its own image clips every shape to the panel for free.
    scene_size = (inner_right - inner_left, inner_bottom - inner_top)
    scene = Image.new("L", scene_size, PAPER)
    _draw_scene(
        ImageDraw.Draw(scene), scene_size, rng, scene_kind, line, steps, caption_height, font
    )
    panel.paste(scene, (inner_left, inner_top))

    draw.rectangle(
        (margin, margin, width - 1 - margin, height - 1 - margin), outline=INK, width=border
    )
    if caption_lines:
        box_top = inner_bottom - caption_height
        draw.rectangle(
            (inner_left, box_top, inner_right - 1, inner_bottom - 1),
            fill=PAPER,
            outline=INK,
            width=max(1, border // 2),
        )
        y = box_top + margin // 2 + 1
        for text in caption_lines:
            draw.text((inner_left + margin, y), text, fill=INK, font=font)
            y += line_height

    buffer = io.BytesIO()
    panel.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _caption_lines(
    prompt: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, box_width: int, short: int
) -> list[str]:
    text = " ".join(prompt.split())
    if not text or box_width < 20:
        return []
    char_width = max(1.0, float(font.getlength("n")))
    chars_per_line = max(6, int(box_width / char_width))
    # A caption taller than about a quarter of the panel would hide the picture.
    max_lines = max(1, min(4, short // 96))
    lines = textwrap.wrap(text, chars_per_line, max_lines=max_lines, placeholder=" ...")
    # Wrapping by character count is approximate for a proportional font: trim what overflows.
    fitted = []
    for candidate in lines:
        while len(candidate) > 4 and font.getlength(candidate) > box_width:
            candidate = candidate[:-5] + "..."
        fitted.append(candidate)
    return fitted


def _draw_scene(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    rng: random.Random,
    kind: str,
    line: int,
    steps: int,
    caption_height: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    width, height = size
    usable = max(8, height - caption_height)
    horizon = int(usable * rng.uniform(0.45, 0.7))
    # More steps, finer hatching: a visible nod to the parameter without costing time.
    spacing = max(3, int(min(width, height) / (6 + min(steps, 150) / 4)))

    if kind == "closeup":
        draw.rectangle((0, 0, width, height), fill=rng.choice(WASHES))
        _hatch(draw, (0, 0, width, usable), spacing * 2, line, rng)
        _face(draw, width // 2, int(usable * 0.55), int(min(width, usable) * 0.42), line, rng)
    elif kind == "interior":
        _room(draw, width, usable, line, rng)
        _figures(draw, width, int(usable * 0.92), usable, line, rng, count=rng.randint(1, 2))
    else:
        _sky(draw, width, horizon, spacing, line, rng)
        if kind == "city":
            _buildings(draw, width, horizon, usable, line, rng)
        elif kind == "landscape":
            _mountains(draw, width, horizon, line, rng)
        else:
            _speed_lines(draw, width, usable, line, rng)
        draw.line((0, horizon, width, horizon), fill=INK, width=line)
        _figures(draw, width, horizon + (usable - horizon) // 2, usable, line, rng)

    if rng.random() < 0.75:
        _balloon(draw, width, usable, line, rng, font)


def _hatch(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    spacing: int,
    line: int,
    rng: random.Random,
) -> None:
    x0, y0, x1, y1 = box
    span = y1 - y0
    direction = rng.choice((1, -1))
    for x in range(x0 - span, x1 + span, spacing):
        draw.line((x, y0, x + direction * span, y1), fill=INK, width=max(1, line // 2))


def _sky(
    draw: ImageDraw.ImageDraw,
    width: int,
    horizon: int,
    spacing: int,
    line: int,
    rng: random.Random,
) -> None:
    if rng.random() < 0.5:
        draw.rectangle((0, 0, width, horizon), fill=rng.choice(WASHES))
    else:
        _hatch(draw, (0, 0, width, horizon), spacing * 2, line, rng)
    radius = max(4, int(min(width, horizon) * rng.uniform(0.08, 0.16)))
    cx = rng.randint(radius, max(radius, width - radius))
    cy = rng.randint(radius, max(radius, horizon - radius))
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=PAPER, outline=INK)


def _buildings(
    draw: ImageDraw.ImageDraw,
    width: int,
    horizon: int,
    usable: int,
    line: int,
    rng: random.Random,
) -> None:
    x = -rng.randint(0, max(1, width // 10))
    while x < width:
        building_width = max(8, int(width * rng.uniform(0.08, 0.2)))
        top = int(horizon * rng.uniform(0.15, 0.7))
        shade = rng.choice((PAPER, *WASHES))
        draw.rectangle((x, top, x + building_width, horizon), fill=shade, outline=INK, width=line)
        window = max(2, building_width // 6)
        for wy in range(top + window, horizon - window, window * 2):
            for wx in range(x + window, x + building_width - window, window * 2):
                if rng.random() < 0.6:
                    draw.rectangle((wx, wy, wx + window - 1, wy + window - 1), fill=INK)
        x += building_width + rng.randint(0, max(1, width // 30))
    draw.rectangle((0, horizon, width, usable), fill=rng.choice(WASHES))


def _mountains(
    draw: ImageDraw.ImageDraw, width: int, horizon: int, line: int, rng: random.Random
) -> None:
    peaks = [(0, horizon)]
    x = 0
    while x < width:
        x += max(6, int(width * rng.uniform(0.1, 0.3)))
        peaks.append((x, int(horizon * rng.uniform(0.2, 0.8))))
    peaks.append((width, horizon))
    draw.polygon(peaks, fill=rng.choice(WASHES), outline=INK, width=line)


def _speed_lines(
    draw: ImageDraw.ImageDraw, width: int, usable: int, line: int, rng: random.Random
) -> None:
    cx, cy = rng.randint(0, width), rng.randint(0, usable)
    reach = width + usable
    count = rng.randint(18, 36)
    for index in range(count):
        angle = index / count * tau + rng.uniform(-0.05, 0.05)
        inner = rng.uniform(0.15, 0.35) * min(width, usable)
        draw.line(
            (
                cx + cos(angle) * inner,
                cy + sin(angle) * inner,
                cx + cos(angle) * reach,
                cy + sin(angle) * reach,
            ),
            fill=INK,
            width=line,
        )


def _room(
    draw: ImageDraw.ImageDraw, width: int, usable: int, line: int, rng: random.Random
) -> None:
    # One-point perspective: a back wall and four receding edges.
    inset_x, inset_y = int(width * rng.uniform(0.2, 0.3)), int(usable * rng.uniform(0.15, 0.25))
    back = (inset_x, inset_y, width - inset_x, usable - inset_y)
    draw.rectangle((0, 0, width, usable), fill=rng.choice(WASHES))
    draw.rectangle(back, fill=PAPER, outline=INK, width=line)
    for corner_from, corner_to in (
        ((0, 0), back[:2]),
        ((width, 0), (back[2], back[1])),
        ((0, usable), (back[0], back[3])),
        ((width, usable), back[2:]),
    ):
        draw.line((*corner_from, *corner_to), fill=INK, width=line)
    window_w = (back[2] - back[0]) // 3
    wx = back[0] + rng.randint(0, max(0, (back[2] - back[0]) - window_w))
    draw.rectangle(
        (wx, back[1] + window_w // 3, wx + window_w, back[1] + window_w),
        fill=rng.choice(WASHES),
        outline=INK,
        width=line,
    )


def _figures(
    draw: ImageDraw.ImageDraw,
    width: int,
    ground: int,
    usable: int,
    line: int,
    rng: random.Random,
    count: int | None = None,
) -> None:
    count = rng.randint(1, 3) if count is None else count
    for _ in range(count):
        scale = max(6, int(usable * rng.uniform(0.25, 0.5)))
        x = rng.randint(scale // 3, max(scale // 3, width - scale // 3))
        _figure(draw, x, min(ground, usable - 1), scale, line, rng)


def _figure(
    draw: ImageDraw.ImageDraw, x: int, feet: int, tall: int, line: int, rng: random.Random
) -> None:
    head = max(2, tall // 8)
    neck = feet - tall + 2 * head
    hips = feet - tall // 2 + head // 2
    stroke = line + 1
    draw.ellipse(
        (x - head, neck - 2 * head, x + head, neck),
        fill=rng.choice((PAPER, *WASHES)),
        outline=INK,
        width=stroke,
    )
    draw.line((x, neck, x, hips), fill=INK, width=stroke)
    spread = tall // 5
    for side in (-1, 1):
        draw.line(
            (x, hips, x + side * rng.randint(spread // 3, spread), feet), fill=INK, width=stroke
        )
        hand_y = neck + rng.randint(-head, tall // 3)
        draw.line(
            (x, neck + head // 2, x + side * rng.randint(spread // 2, spread), hand_y),
            fill=INK,
            width=stroke,
        )


def _face(
    draw: ImageDraw.ImageDraw, cx: int, cy: int, radius: int, line: int, rng: random.Random
) -> None:
    stroke = line + 1
    draw.ellipse(
        (cx - radius, cy - radius, cx + radius, cy + int(radius * 1.15)),
        fill=PAPER,
        outline=INK,
        width=stroke + 1,
    )
    eye_y = cy - radius // 5
    eye = max(2, radius // 8)
    for side in (-1, 1):
        ex = cx + side * radius // 3
        draw.ellipse((ex - eye, eye_y - eye, ex + eye, eye_y + eye), fill=INK)
        draw.line(
            (
                ex - eye * 2,
                eye_y - eye * 3 + side * rng.randint(-eye, eye),
                ex + eye * 2,
                eye_y - eye * 3,
            ),
            fill=INK,
            width=stroke,
        )
    mouth_w = radius // 3
    mouth_y = cy + radius // 2
    if rng.random() < 0.5:
        draw.arc(
            (cx - mouth_w, mouth_y - mouth_w // 2, cx + mouth_w, mouth_y + mouth_w // 2),
            10,
            170,
            fill=INK,
            width=stroke,
        )
    else:
        draw.ellipse(
            (cx - mouth_w // 3, mouth_y - mouth_w // 4, cx + mouth_w // 3, mouth_y + mouth_w // 3),
            fill=INK,
        )


def _balloon(
    draw: ImageDraw.ImageDraw,
    width: int,
    usable: int,
    line: int,
    rng: random.Random,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    balloon_w = int(width * rng.uniform(0.3, 0.45))
    balloon_h = max(10, int(usable * rng.uniform(0.14, 0.2)))
    left = rng.randint(line, max(line, width - balloon_w - line))
    top = rng.randint(line, max(line, usable // 4))
    tail_x = left + balloon_w // 2 + rng.randint(-balloon_w // 4, balloon_w // 4)
    tail = [
        (tail_x - balloon_w // 10, top + balloon_h - 2),
        (tail_x + balloon_w // 10, top + balloon_h - 2),
        (tail_x + rng.randint(-balloon_w // 3, balloon_w // 3), top + balloon_h * 2),
    ]
    draw.polygon(tail, fill=PAPER, outline=INK, width=line)
    draw.ellipse(
        (left, top, left + balloon_w, top + balloon_h), fill=PAPER, outline=INK, width=line + 1
    )
    # Scribbled "lettering": real words would compete with the caption for the reader's eye.
    rows = max(1, balloon_h // 14)
    for row in range(rows):
        y = top + balloon_h * (row + 1) // (rows + 1)
        half = int(balloon_w * (0.32 - 0.08 * abs(row - (rows - 1) / 2)))
        x = left + balloon_w // 2 - half
        while x < left + balloon_w // 2 + half:
            word = rng.randint(3, max(4, balloon_w // 8))
            draw.line(
                (x, y, min(x + word, left + balloon_w // 2 + half), y), fill=INK, width=max(1, line)
            )
            x += word + max(2, line * 2)
