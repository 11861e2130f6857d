"""The authors' pages: dashboard, new batch, batch progress, one panel; and panel files.

Thin, as the API views are: scope to the user, call one service, render. With htmx, a view
answers with the named fragment of its page template (`page.html#fragment`) instead of the
whole page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AnonymousUser
from django.core.paginator import Paginator
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling
from django_htmx.middleware import HtmxDetails
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request
from rest_framework.views import APIView

from batches import fragments, panels, services
from batches.api.throttles import SubmitThrottle, refuse_if_throttled
from batches.forms import BatchForm
from batches.models import IMAGE_TERMINAL, Batch, ImageStatus
from budgets.services import BudgetExceeded, get_budget


class HtmxHttpRequest(HttpRequest):
    """A request as django-htmx's middleware leaves it (for type checking)."""

    htmx: HtmxDetails


BATCHES_PER_PAGE = 20


def with_counts(batches: QuerySet[Batch]) -> QuerySet[Batch]:
    """Images by status in the same query as the batches (a list page would otherwise run one
    count query per row)."""
    annotations = {
        f"n_{status}": Count("images", filter=Q(images__status=status))
        for status in ImageStatus.values
    }
    return batches.annotate(n_total=Count("images"), **annotations)


def counts_of(batch: Batch) -> dict[str, int]:
    counts = {status: getattr(batch, f"n_{status}") for status in ImageStatus.values}
    counts["total"] = batch.n_total  # type: ignore[attr-defined]
    return counts


def user_batch(request: HttpRequest, batch_id: int) -> Batch:
    """404 for another user's batch, as for a missing one (staff see all)."""
    return get_object_or_404(Batch.objects.visible_to(request.user), pk=batch_id)


@login_required
@require_GET
def dashboard(request: HtmxHttpRequest) -> HttpResponse:
    batches = with_counts(
        Batch.objects.visible_to(request.user).select_related("user").order_by("-created_at", "-id")
    )
    page = Paginator(batches, BATCHES_PER_PAGE).get_page(request.GET.get("page"))
    rows = []
    for batch in page.object_list:
        counts = counts_of(batch)
        rows.append(
            {
                "batch": batch,
                "status_label": fragments.status_label(batch.status),
                "progress": fragments.progress(counts),
            }
        )
    context = {
        "page_obj": page,
        "rows": rows,
        # The list refreshes itself only while something on it is still moving.
        "any_active": any(not row["batch"].is_terminal for row in rows),
        "show_owner": request.user.is_staff,
        "budget": get_budget(request.user),
    }
    template = "batches/dashboard.html#batch_list" if request.htmx else "batches/dashboard.html"
    return render(request, template, context)


@login_required
@require_http_methods(["GET", "POST"])
def batch_new(request: HttpRequest) -> HttpResponse:
    form = BatchForm(request.POST or None, user=request.user)
    # The API's submit limit applies here too, or the form would be a way around it.
    if (
        request.method == "POST"
        and form.is_valid()
        and not refuse_if_throttled(SubmitThrottle, request, form)
    ):
        assert form.serializer is not None
        try:
            submission = services.submit_batch(
                request.user, form.serializer.validated_data, form.serializer.resolved_images()
            )
        except BudgetExceeded as error:
            form.add_error(None, f"Not submitted: {error} Remove some panels or lower the steps.")
        else:
            batch = submission.batch
            panels = len(form.panel_lines)
            messages.success(
                request,
                f"“{batch.title}” is queued: {panels} panel{pluralize(panels)}, "
                f"estimated {batch.estimated_cost:.4f} {batch.currency}.",
            )
            return redirect("batch-detail", batch_id=batch.pk)
    context = {"form": form, "budget": get_budget(request.user), **_estimate(request, form)}
    return render(request, "batches/batch_form.html", context)


@login_required
@require_POST
def batch_estimate(request: HttpRequest) -> HttpResponse:
    """The live estimate beside the form, re-rendered as the author types."""
    form = BatchForm(request.POST, user=request.user)
    form.is_valid()
    context = {"form": form, "budget": get_budget(request.user), **_estimate(request, form)}
    return render(request, "batches/batch_form.html#estimate", context)


def _estimate(request: HttpRequest, form: BatchForm) -> dict[str, Any]:
    if not form.is_bound:
        return {"estimate": None}
    if form.serializer is None:
        return {"estimate": None, "estimate_errors": True}
    estimate = services.estimate_batch(request.user, form.serializer.resolved_images())
    estimate["after"] = estimate["remaining"] - estimate["estimated_cost"]
    estimate["basis_text"] = basis_in_words(estimate["basis"])
    estimate["allowance_text"] = allowance_in_words(estimate["basis"])
    return {"estimate": estimate}


def basis_in_words(basis: dict[str, Any]) -> str:
    """What an estimate is based on, for the author deciding whether to run the batch:
    "Based on the last 240 panels on this model." or "From the catalogue (no history yet)."."""
    models: dict[str, dict[str, Any]] = basis.get("models", {})

    def words(entry: dict[str, Any], subject: str) -> str:
        if entry["kind"] == "measured":
            count = entry["samples"]
            return f"based on the last {count} panel{pluralize(count)} on {subject}"
        return "from the catalogue (no history yet)"

    if len(models) == 1:
        (entry,) = models.values()
        text = words(entry, "this model")
        return f"{text[0].upper()}{text[1:]}."
    return "; ".join(f"{name}: {words(entry, 'it')}" for name, entry in models.items()) + "."


def allowance_in_words(basis: dict[str, Any]) -> str:
    """Where the retry allowance comes from, when every model agrees on it."""
    rates = [entry["failure_rate"] for entry in basis.get("models", {}).values()]
    if rates and all(rate is None for rate in rates):
        return "the usual allowance until there is history"
    if len(rates) == 1 and rates[0] is not None:
        return f"{rates[0]:.0%} of recent attempts on this model failed"
    if rates and all(rate is not None for rate in rates):
        return "from the recent failure rates"
    return ""


@login_required
@require_GET
def batch_detail(request: HtmxHttpRequest, batch_id: int) -> HttpResponse:
    batch = Batch.objects.with_images().get(pk=user_batch(request, batch_id).pk)
    if request.htmx:
        # The polling fallback: every tile and the header as out-of-band swaps, so the page
        # keeps only what is newer than what it has (batch.js compares data-seq).
        context = {**fragments.page_context(batch), "oob": True}
        response = render(request, "batches/batch_detail.html#live", context)
        if batch.is_terminal:
            return HttpResponseStopPolling(response.content)
        return response
    context = {
        **fragments.page_context(batch),
        "show_owner": request.user.is_staff and batch.user_id != request.user.pk,
    }
    return render(request, "batches/batch_detail.html", context)


@login_required
@require_GET
def panel_detail(request: HttpRequest, batch_id: int, index: int) -> HttpResponse:
    batch = user_batch(request, batch_id)
    image = get_object_or_404(batch.images, index=index)
    total = batch.images.count()
    context = {
        "batch": batch,
        "image": image,
        "status_label": fragments.image_status_label(image.status),
        "previous_index": index - 1 if index > 0 else None,
        "next_index": index + 1 if index + 1 < total else None,
        "total": total,
        "is_terminal": image.status in IMAGE_TERMINAL,
        "image_url": panels.panel_url(image),
    }
    return render(request, "batches/panel_detail.html", context)


def panel_file(request: HttpRequest, image_id: int) -> HttpResponseBase:
    """A panel's PNG, for its batch's owner and staff (session or API token) or for anyone with
    a valid signed link; batches.panels holds the rules, including which wins when a request
    carries both. Refusals are JSON `{"code", "detail"}`."""
    if request.method not in ("GET", "HEAD"):
        response = _refusal(405, "method_not_allowed", "Panel files are read with GET.")
        response["Allow"] = "GET, HEAD"
        return response
    token = request.GET.get(panels.SIGNATURE_PARAM)
    try:
        user = _caller(request)
    except AuthenticationFailed as error:
        if token is None:
            response = _refusal(401, "authentication_failed", str(error.detail))
            response["WWW-Authenticate"] = "Token"
            return response
        user = AnonymousUser()  # a signed link stands on its own, whatever else was sent
    try:
        image, cacheable = panels.find_panel(user, image_id, token)
        return panels.file_response(image, cacheable=cacheable)
    except panels.PanelRefused as refusal:
        response = _refusal(refusal.status, refusal.code, refusal.detail)
        if refusal.status == 401:
            response["WWW-Authenticate"] = "Token"
        return response


def _caller(request: HttpRequest) -> Any:
    """Who is asking: the session's user, or an API client by the API's own authentication
    classes (`Authorization: Token <key>`), so the file view accepts what the API accepts."""
    return Request(request, authenticators=APIView().get_authenticators()).user


def _refusal(status: int, code: str, detail: str) -> JsonResponse:
    response = JsonResponse({"code": code, "detail": detail}, status=status)
    response["Cache-Control"] = "private, no-store"
    return response


@login_required
@require_POST
def batch_cancel(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = user_batch(request, batch_id)
    try:
        cancelled = services.cancel_batch(batch)
    except services.StateConflict as error:
        messages.error(request, str(error))
    else:
        messages.success(
            request,
            f"Cancelling “{batch.title}”: {cancelled} waiting panels cancelled; panels already "
            "rendering are being stopped.",
        )
    return _back(request, batch)


@login_required
@require_POST
def batch_retry(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = user_batch(request, batch_id)
    try:
        requeued = services.retry_batch(batch)
    except services.StateConflict as error:
        messages.error(request, str(error))
    except BudgetExceeded as error:
        messages.error(request, f"Not retried: {error}")
    else:
        messages.success(request, f"{requeued} panel{pluralize(requeued)} requeued.")
    return _back(request, batch)


def _back(request: HttpRequest, batch: Batch) -> HttpResponseRedirect:
    """Back where the action was taken (the batch page, or the admin), never off-site."""
    next_url = request.POST.get("next", "")
    if next_url and url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return HttpResponseRedirect(next_url)
    return HttpResponseRedirect(reverse("batch-detail", args=[batch.pk]))
