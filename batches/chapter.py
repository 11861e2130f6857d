"""The chapter text format, one panel per line: what the new-batch form, `manage.py generate`
and the `comicgen` CLI all read. Plain Python (no Django), so the remote CLI uses this very
parser without the server's settings.

Blank lines and lines starting with `#` are skipped; `42 | prompt` fixes the panel's seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# `42 | prompt`: an explicit seed, so a panel can be reproduced exactly. ASCII digits only
# (`\d` would take other scripts' digits too).
SEEDED_LINE = re.compile(r"^\s*(-?[0-9]+)\s*\|\s*(.*)$")
# No valid seed has more digits than this (the largest is 4294967295). A longer one is read as
# a number just as far out of range, so the line gets the usual range message; int() of a few
# thousand digits would raise (and takes quadratic time before that).
MAX_SEED_DIGITS = 20


@dataclass(frozen=True)
class PanelLine:
    line_number: int
    prompt: str
    seed: int | None


def parse_panels(text: str) -> list[PanelLine]:
    """One panel per non-blank, non-comment line; `<seed> | <prompt>` sets the seed."""
    panels = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = SEEDED_LINE.match(line)
        if match:
            panels.append(PanelLine(number, match.group(2).strip(), _seed(match.group(1))))
        else:
            panels.append(PanelLine(number, line, None))
    return panels


def _seed(digits: str) -> int:
    significant = digits.lstrip("-").lstrip("0") or "0"
    value = int(significant) if len(significant) <= MAX_SEED_DIGITS else 10**MAX_SEED_DIGITS
    return -value if digits.startswith("-") else value


def submit_body(
    *,
    panels: list[PanelLine],
    title: str = "",
    style: str = "",
    negative_prompt: str = "",
    priority: str = "",
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The API's submit body. Empty values are left out so the serializer's defaults apply."""
    body: dict[str, Any] = {
        "images": [
            {"prompt": panel.prompt, **({"seed": panel.seed} if panel.seed is not None else {})}
            for panel in panels
        ]
    }
    if title.strip():
        body["title"] = title.strip()
    if style:
        body["style"] = style
    if negative_prompt:
        body["negative_prompt"] = negative_prompt
    if priority:
        body["priority"] = priority
    cleaned_params = {
        key: value for key, value in (params or {}).items() if value not in (None, "")
    }
    if cleaned_params:
        body["params"] = cleaned_params
    return body


def serializer_messages(errors: Any) -> list[str]:
    """Flatten DRF error details (lists, nested dicts) into plain messages."""
    if isinstance(errors, dict):
        return [message for value in errors.values() for message in serializer_messages(value)]
    if isinstance(errors, list | tuple):
        return [message for value in errors for message in serializer_messages(value)]
    return [str(errors)]


def error_lines(errors: Any, panels: list[PanelLine]) -> list[str]:
    """The submit serializer's field errors (or the API's `fields`, the same shape in JSON) as
    `where: message` lines, a panel's named by its line in the chapter file."""
    if not isinstance(errors, dict):
        return serializer_messages(errors)
    lines: list[str] = []
    for key, detail in errors.items():
        if key == "images" and isinstance(detail, dict):
            for index, panel_errors in detail.items():
                position = int(index) if str(index).isdigit() else -1
                where = (
                    f"line {panels[position].line_number}"
                    if 0 <= position < len(panels)
                    else f"panel {index}"
                )
                lines.extend(f"{where}: {message}" for message in serializer_messages(panel_errors))
        elif isinstance(detail, dict):
            for name, value in detail.items():
                lines.extend(f"{name}: {message}" for message in serializer_messages(value))
        else:
            lines.extend(f"{key}: {message}" for message in serializer_messages(detail))
    return lines
