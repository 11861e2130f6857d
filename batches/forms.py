"""The new-batch form. It only turns what was typed into the API's submit body: the rules live in
BatchSubmitSerializer, whose errors are shown back on the form fields, so a batch the page
accepts is exactly a batch the API accepts."""

from __future__ import annotations

from typing import Any

from django import forms

from batches.api.serializers import DEFAULT_PARAMS, BatchSubmitSerializer, default_params
from batches.chapter import PanelLine, parse_panels, serializer_messages, submit_body
from batches.models import Priority
from batches.permissions import PRIORITY_NOT_ALLOWED, may_submit_high_priority
from budgets import pricing

SIDES = [512, 640, 768, 896, 1024]
PANELS_HELP = (
    "One panel per line, in reading order. Blank lines and lines starting with # are skipped. "
    "To fix a panel's seed, start its line with the seed and a bar: "
    "<code>42 | Mara opens the vault door</code>."
)


class BatchForm(forms.Form):
    title = forms.CharField(
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "Chapter 3: The vault", "autofocus": True}),
    )
    style = forms.CharField(
        required=False,
        help_text="Added to every panel's prompt.",
        widget=forms.TextInput(attrs={"placeholder": "ink comic, high contrast, halftone"}),
    )
    negative_prompt = forms.CharField(
        required=False, widget=forms.TextInput(attrs={"placeholder": "blurry, extra fingers"})
    )
    # Plain fields with select widgets: the serializer, not the widget, decides what is valid.
    # A blank one falls back to the API's default, as an omitted key does.
    model = forms.CharField(required=False, initial=DEFAULT_PARAMS["model"], widget=forms.Select())
    width = forms.IntegerField(
        required=False,
        initial=DEFAULT_PARAMS["width"],
        widget=forms.Select(choices=[(s, f"{s} px") for s in SIDES]),
    )
    height = forms.IntegerField(
        required=False,
        initial=DEFAULT_PARAMS["height"],
        widget=forms.Select(choices=[(s, f"{s} px") for s in SIDES]),
    )
    steps = forms.IntegerField(
        required=False,
        initial=DEFAULT_PARAMS["steps"],
        widget=forms.NumberInput(attrs={"min": 1, "max": 150}),
    )
    priority = forms.CharField(
        required=False,
        initial=Priority.NORMAL,
        help_text="High batches are never stuck behind normal or low work.",
        widget=forms.Select(choices=Priority.choices),
    )
    panels = forms.CharField(
        label="Panels",
        help_text=PANELS_HELP,
        widget=forms.Textarea(
            attrs={
                "rows": 12,
                "spellcheck": "false",
                "placeholder": "Mara opens the vault door\nclose-up of her face, shocked\n"
                "42 | the vault is empty except for a single feather",
            }
        ),
    )

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only the models an endpoint renders (RUNPOD_ENDPOINTS): the others are not offered.
        self.fields["model"].widget.choices = [(name, name) for name in pricing.offered_models()]
        self.fields["model"].initial = default_params()["model"]
        # High priority is offered, and accepted, only to those the API accepts it from.
        self.may_use_high_priority = may_submit_high_priority(user)
        if not self.may_use_high_priority:
            self.fields["priority"].widget.choices = [
                (value, label) for value, label in Priority.choices if value != Priority.HIGH
            ]
        self.serializer: BatchSubmitSerializer | None = None
        self.panel_lines: list[PanelLine] = []

    def clean_priority(self) -> str:
        priority = str(self.cleaned_data.get("priority") or "")
        if priority == Priority.HIGH and not self.may_use_high_priority:
            raise forms.ValidationError(PRIORITY_NOT_ALLOWED, code="priority_not_allowed")
        return priority

    def body(self) -> dict[str, Any]:
        data = self.cleaned_data
        self.panel_lines = parse_panels(data.get("panels") or "")
        return submit_body(
            panels=self.panel_lines,
            title=data.get("title") or "",
            style=data.get("style") or "",
            negative_prompt=data.get("negative_prompt") or "",
            priority=data.get("priority") or "",
            params={
                "model": data.get("model"),
                "width": data.get("width"),
                "height": data.get("height"),
                "steps": data.get("steps"),
            },
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        if not parse_panels(cleaned.get("panels") or ""):
            self.add_error("panels", "Write at least one panel prompt (one per line).")
            return cleaned
        serializer = BatchSubmitSerializer(data=self.body())
        if not serializer.is_valid():
            self._show_serializer_errors(serializer.errors)
        else:
            self.serializer = serializer
        return cleaned

    def _show_serializer_errors(self, errors: dict[str, Any]) -> None:
        for key, detail in errors.items():
            if key == "params" and isinstance(detail, dict):
                for param, messages in detail.items():
                    field = param if param in self.fields else None
                    for message in serializer_messages(messages):
                        self.add_error(field, message if field else f"{param}: {message}")
            elif key == "images":
                for message in self._image_messages(detail):
                    self.add_error("panels", message)
            else:
                field = key if key in self.fields else None
                for message in serializer_messages(detail):
                    self.add_error(field, message)

    def _image_messages(self, detail: Any) -> list[str]:
        """Per-panel errors name the line they came from, so a long chapter is easy to fix."""
        if isinstance(detail, dict):
            messages = []
            for index, panel_errors in sorted(detail.items(), key=lambda item: int(item[0])):
                position = int(index)
                where = (
                    f"Line {self.panel_lines[position].line_number}"
                    if position < len(self.panel_lines)
                    else f"Panel {position + 1}"
                )
                if isinstance(panel_errors, dict):
                    for name, value in panel_errors.items():
                        for message in serializer_messages(value):
                            messages.append(f"{where} ({name}): {message}")
                else:
                    messages.extend(f"{where}: {m}" for m in serializer_messages(panel_errors))
            return messages
        return serializer_messages(detail)
