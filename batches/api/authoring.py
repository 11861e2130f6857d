"""The authors' tools in the API: pause, resume, redraw a panel, pick a take, export pages.

Thin like the other API views: scope the batch to the caller (404 for another user's), validate
the body (400 with field errors), call one service in batches/authoring.py or batches/pages.py,
answer. A state that does not allow the action is a 409 `conflict`; a redraw that does not fit
the budget a 402 `budget_exceeded`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from batches import authoring, pages, services
from batches.api.serializers import (
    MAX_PROMPT_CHARS,
    BatchSummarySerializer,
    GenerationParamsSerializer,
    ImageJobSerializer,
    StrictSerializer,
)
from batches.api.views import budget_exceeded_error, get_user_batch
from batches.models import Batch, ImageJob
from budgets.services import BudgetExceeded
from comicgen.errors import ApiError
from comicgen.streaming import streaming_response


class RedrawSerializer(StrictSerializer):
    """Everything optional: with an empty body, the same prompt and params and a new seed."""

    prompt = serializers.CharField(
        max_length=MAX_PROMPT_CHARS, trim_whitespace=True, required=False
    )
    seed = serializers.IntegerField(
        min_value=0,
        max_value=2**32 - 1,
        required=False,
        allow_null=True,
        help_text="Leave out (or null) for a new random seed.",
    )
    params = GenerationParamsSerializer(required=False)


class SelectSerializer(StrictSerializer):
    version = serializers.IntegerField(min_value=1, max_value=2**31 - 1)


def conflict(error: Exception) -> ApiError:
    return ApiError("conflict", str(error), status.HTTP_409_CONFLICT)


def user_image(request: Request, batch_id: int, index: int) -> tuple[Batch, ImageJob]:
    """The caller's batch and its panel at `index` (from 0); 404 for either missing."""
    batch = get_user_batch(request, batch_id)
    return batch, get_object_or_404(ImageJob.objects.filter(batch=batch), index=index)


class BatchPauseView(APIView):
    @extend_schema(request=None, responses={202: BatchSummarySerializer, 409: dict})
    def post(self, request: Request, batch_id: int) -> Response:
        """Stop submitting new jobs; jobs already on RunPod finish and are stored."""
        batch = get_user_batch(request, batch_id)
        try:
            authoring.pause_batch(batch)
        except services.StateConflict as error:
            raise conflict(error) from None
        batch.refresh_from_db()
        return Response(BatchSummarySerializer(batch).data, status=status.HTTP_202_ACCEPTED)


class BatchResumeView(APIView):
    @extend_schema(request=None, responses={202: BatchSummarySerializer, 409: dict})
    def post(self, request: Request, batch_id: int) -> Response:
        """Go on with a paused batch."""
        batch = get_user_batch(request, batch_id)
        try:
            authoring.resume_batch(batch)
        except services.StateConflict as error:
            raise conflict(error) from None
        batch.refresh_from_db()
        return Response(BatchSummarySerializer(batch).data, status=status.HTTP_202_ACCEPTED)


class ImageRedrawView(APIView):
    @extend_schema(
        request=RedrawSerializer,
        responses={202: ImageJobSerializer, 400: dict, 402: dict, 404: dict, 409: dict},
    )
    def post(self, request: Request, batch_id: int, index: int) -> Response:
        """Draw a new take of a finished panel (priced and reserved like a submit); the take
        it replaces is kept in `versions`."""
        batch, image = user_image(request, batch_id, index)
        serializer = RedrawSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        redraw = authoring.RedrawRequest(
            prompt=data.get("prompt"), seed=data.get("seed"), params=data.get("params")
        )
        try:
            image = authoring.redraw_image(batch, image, redraw)
        except services.StateConflict as error:
            raise conflict(error) from None
        except BudgetExceeded as error:
            raise budget_exceeded_error(error) from None
        return Response(ImageJobSerializer(image).data, status=status.HTTP_202_ACCEPTED)


class ImageSelectView(APIView):
    @extend_schema(request=SelectSerializer, responses={200: ImageJobSerializer, 400: dict})
    def post(self, request: Request, batch_id: int, index: int) -> Response:
        """Pick the take (`version`) that the ZIP and the export use."""
        _batch, image = user_image(request, batch_id, index)
        serializer = SelectSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            image = authoring.select_version(image, serializer.validated_data["version"])
        except ValueError as error:
            raise ApiError(
                "invalid", str(error), status.HTTP_400_BAD_REQUEST, fields={"version": [str(error)]}
            ) from None
        image.refresh_from_db()
        return Response(ImageJobSerializer(image).data)


EXPORT_FORMATS = {"pdf": "application/pdf", "cbz": "application/vnd.comicbook+zip"}


class ExportNegotiation(DefaultContentNegotiation):
    """`?format=` names the export here, not a DRF renderer (DRF would answer 404 for "pdf"):
    errors are JSON whatever it says."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class BatchExportView(APIView):
    content_negotiation_class = ExportNegotiation

    @extend_schema(
        parameters=[
            OpenApiParameter("format", OpenApiTypes.STR, enum=list(EXPORT_FORMATS)),
            OpenApiParameter("layout", OpenApiTypes.STR, required=False),
        ],
        responses={
            (200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY),
            (200, "application/vnd.comicbook+zip"): OpenApiResponse(OpenApiTypes.BINARY),
            400: dict,
            409: dict,
        },
    )
    def get(self, request: Request, batch_id: int) -> Any:
        """The chapter laid out as pages (its page layout, or `layout`): a PDF, or a CBZ with
        ComicInfo.xml. Panels with no image keep their frame, captioned."""
        batch = get_user_batch(request, batch_id)
        kind = request.query_params.get("format", "")
        if kind not in EXPORT_FORMATS:
            raise ApiError(
                "invalid",
                "Choose the export with ?format=pdf or ?format=cbz.",
                status.HTTP_400_BAD_REQUEST,
                fields={"format": ["Must be pdf or cbz."]},
            )
        layout = request.query_params.get("layout") or batch.page_layout
        if layout not in pages.LAYOUTS:
            raise ApiError(
                "invalid",
                "Unknown layout; choose one of " + ", ".join(pages.LAYOUTS) + ".",
                status.HTTP_400_BAD_REQUEST,
                fields={"layout": ["Unknown layout."]},
            )
        laid_out = pages.layout_pages(batch, layout)
        if not any(slot.take and slot.take.file_name for page in laid_out for slot in page.slots):
            detail = (
                "This chapter's images expired (retention); nothing is left to export."
                if batch.panels_expired_at
                else "No finished panels to export yet."
            )
            raise ApiError("not_ready", detail, status.HTTP_409_CONFLICT)
        if kind == "pdf":
            body: Any = iter([pages.pdf_bytes(laid_out)])
        else:
            body = pages.cbz_stream(batch, laid_out)
        response = streaming_response(request, body, EXPORT_FORMATS[kind])
        name = pages.export_name(batch, kind)
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["X-Comicgen-Pages"] = str(len(laid_out))
        response["X-Comicgen-Missing-Panels"] = str(len(pages.missing_panels(laid_out)))
        return response
