"""The authors' tools in the pages: pause and resume buttons, a tile's redraw form and takes,
the chapter laid out as comic pages, and the files of earlier takes.

Thin like batches/views.py: scope to the user, call one service in batches/authoring.py, say
what happened (messages) and go back where the author was. Forms post normally (the pages work
without JavaScript) and also by htmx from a live tile, which then reloads the page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRefresh
from rest_framework.exceptions import AuthenticationFailed

from batches import authoring, pages, panels, services, takes
from batches.models import PageLayout
from batches.views import _back, _caller, user_batch
from budgets.services import BudgetExceeded


def _done(request: HttpRequest, batch: Any) -> HttpResponse:
    if getattr(request, "htmx", False):
        return HttpResponseClientRefresh()
    return _back(request, batch)


@login_required
@require_POST
def batch_pause(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = user_batch(request, batch_id)
    try:
        authoring.pause_batch(batch)
    except services.StateConflict as error:
        messages.error(request, str(error))
    else:
        messages.success(
            request,
            f"“{batch.title}” is paused: panels already rendering finish, nothing new starts "
            "until you resume.",
        )
    return _done(request, batch)


@login_required
@require_POST
def batch_resume(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = user_batch(request, batch_id)
    try:
        authoring.resume_batch(batch)
    except services.StateConflict as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"“{batch.title}” is running again.")
    return _done(request, batch)


@login_required
@require_POST
def image_redraw(request: HttpRequest, batch_id: int, index: int) -> HttpResponse:
    """A tile's redraw form: the prompt (edited or not), a new seed unless the author unticks
    it (then the panel's own seed is kept)."""
    batch = user_batch(request, batch_id)
    image = get_object_or_404(batch.images, index=index)
    prompt = request.POST.get("prompt", "").strip()
    if not prompt or len(prompt) > 2000:
        messages.error(request, "Not redrawn: the prompt must be 1 to 2000 characters.")
        return _done(request, batch)
    if "\x00" in prompt:  # PostgreSQL text cannot hold a NUL byte
        messages.error(request, "Not redrawn: the prompt contains a NUL character.")
        return _done(request, batch)
    keep_seed = request.POST.get("new_seed") != "on"
    redraw = authoring.RedrawRequest(prompt=prompt, seed=image.seed if keep_seed else None)
    try:
        authoring.redraw_image(batch, image, redraw)
    except services.StateConflict as error:
        messages.error(request, str(error))
    except BudgetExceeded as error:
        messages.error(request, f"Not redrawn: {error}")
    else:
        messages.success(
            request,
            f"Panel {image.panel_number} is being redrawn; its current take is kept and can "
            "be picked back.",
        )
    return _done(request, batch)


@login_required
@require_POST
def image_select(request: HttpRequest, batch_id: int, index: int) -> HttpResponse:
    batch = user_batch(request, batch_id)
    image = get_object_or_404(batch.images, index=index)
    try:
        version = int(request.POST.get("version", ""))
        authoring.select_version(image, version)
    except ValueError as error:
        messages.error(request, str(error) if "take" in str(error) else "Pick a take by number.")
    else:
        messages.success(
            request, f"Panel {image.panel_number}: take {version} is used for the ZIP and pages."
        )
    return _done(request, batch)


@login_required
@require_GET
def batch_pages(request: HttpRequest, batch_id: int) -> HttpResponse:
    """The chapter as comic pages. `?layout=` changes the chapter's layout and remembers it
    (the export uses the same)."""
    batch = user_batch(request, batch_id)
    layout = request.GET.get("layout", "")
    if layout in pages.LAYOUTS and layout != batch.page_layout:
        type(batch).objects.filter(pk=batch.pk).update(page_layout=layout)
        batch.page_layout = layout
    laid_out = pages.layout_pages(batch)
    sheets = []
    for page in laid_out:
        slots = []
        for slot in page.slots:
            url = takes.take_url(slot.image, slot.take) if slot.take else None
            params = slot.take.params if slot.take else slot.image.params
            ratio = params.get("width", 1) / max(1, params.get("height", 1))
            left, top, width, height = slot.frame
            slots.append(
                {
                    "slot": slot,
                    "url": url,
                    # The art as large as its frame allows at its own proportions (container
                    # units), so the ink border hugs it as on the exported page.
                    "art_style": f"width:min(100cqw, calc(100cqh * {ratio:.5f}))",
                    "style": (
                        f"left:{left * 100:.3f}%;top:{top * 100:.3f}%;"
                        f"width:{width * 100:.3f}%;height:{height * 100:.3f}%"
                    ),
                }
            )
        sheets.append({"number": page.number, "slots": slots})
    context = {
        "batch": batch,
        "sheets": sheets,
        "layouts": PageLayout.choices,
        "missing": len(pages.missing_panels(laid_out)),
        "expired": batch.panels_expired_at is not None,
    }
    return render(request, "batches/pages.html", context)


def take_file(request: HttpRequest, version_id: int) -> HttpResponseBase:
    """An earlier take's PNG, on the same terms as a panel's file (batches/takes.py)."""
    token = request.GET.get(panels.SIGNATURE_PARAM)
    try:
        user = _caller(request)
    except AuthenticationFailed:
        user = AnonymousUser()  # a signed link stands on its own; without one, 401 below
    try:
        version = takes.find_take(user, version_id, token)
        return takes.file_response(version)
    except panels.PanelRefused as refusal:
        return JsonResponse({"code": refusal.code, "detail": refusal.detail}, status=refusal.status)
