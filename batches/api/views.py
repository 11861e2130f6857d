"""The batches REST API: thin views that check, scope to the user, call one service."""

from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from zipstream import ZIP_STORED, ZipStream

from batches import authoring, services
from batches.api.serializers import (
    ACCEPTED_IMAGES_INLINE,
    BatchAcceptedSerializer,
    BatchSerializer,
    BatchSubmitSerializer,
    BatchSummarySerializer,
    EstimateSerializer,
    new_batch_counts,
)
from batches.api.throttles import EstimateThrottle, SubmitThrottle
from batches.models import Batch, ImageJob, Priority
from batches.permissions import PRIORITY_NOT_ALLOWED, may_submit_high_priority
from budgets.services import BudgetExceeded
from comicgen.errors import ApiError
from comicgen.streaming import streaming_response

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Replaying a submit with the same key returns the same batch.",
)


def budget_exceeded_error(error: BudgetExceeded) -> ApiError:
    """402 with the estimate and what remains, so a client can say what to change."""
    return ApiError(
        "budget_exceeded",
        str(error),
        status.HTTP_402_PAYMENT_REQUIRED,
        estimated_cost=str(error.estimated_cost),
        remaining=str(error.remaining),
        currency=error.currency,
    )


def check_priority_allowed(request: Request, data: dict[str, Any]) -> None:
    """403 `priority_not_allowed` for a high-priority body from a user not allowed it."""
    if data.get("priority") == Priority.HIGH and not may_submit_high_priority(request.user):
        raise ApiError("priority_not_allowed", PRIORITY_NOT_ALLOWED, status.HTTP_403_FORBIDDEN)


def idempotency_key(request: Request) -> str:
    """The Idempotency-Key header: printable ASCII (it is stored and compared as text; a NUL
    byte, for one, would not store), at most 255 characters."""
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > 255:
        raise ApiError("invalid", "Idempotency-Key is at most 255 characters.", 400)
    if not (key.isascii() and key.isprintable()):
        raise ApiError("invalid", "Idempotency-Key must be printable ASCII (e.g. a UUID).", 400)
    return key


def get_user_batch(request: Request, batch_id: int) -> Batch:
    """404 for another user's batch, as for a missing one (staff see all)."""
    return get_object_or_404(Batch.objects.visible_to(request.user), pk=batch_id)


def accepted_batch(submission: services.Submission) -> Batch:
    """The submitted batch, ready for BatchAcceptedSerializer: a new one answers from what
    the request created (every image pending, no read back); a replay reads the batch as it
    is now. Either lists its images only up to ACCEPTED_IMAGES_INLINE."""
    batch = submission.batch
    if submission.created:
        counts = new_batch_counts(submission.image_count)
        images: list[ImageJob] = submission.images
    else:
        counts = batch.status_counts()
        inline = counts["total"] <= ACCEPTED_IMAGES_INLINE
        images = list(batch.images.order_by("index")) if inline else []
    batch._counts_cache = counts  # type: ignore[attr-defined]
    inline = counts["total"] <= ACCEPTED_IMAGES_INLINE
    batch.accepted_images = images if inline else None  # type: ignore[attr-defined]
    return batch


class BatchListView(ListAPIView):
    """GET: the user's batches, newest first. POST: submit a batch (202, runs in the background)."""

    serializer_class = BatchSummarySerializer

    def get_throttles(self) -> list[Any]:
        # Listing is cheap; only submitting is limited.
        return [SubmitThrottle()] if self.request.method == "POST" else []

    def get_queryset(self) -> Any:
        batches = Batch.objects.visible_to(self.request.user).select_related("event_seq")
        return batches.order_by("-created_at", "-id")

    @extend_schema(
        request=BatchSubmitSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={
            202: BatchAcceptedSerializer,
            200: BatchAcceptedSerializer,
            400: dict,
            402: dict,
            403: dict,
            422: dict,
            429: dict,
        },
    )
    def post(self, request: Request) -> Response:
        key = idempotency_key(request)
        serializer = BatchSubmitSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        check_priority_allowed(request, serializer.validated_data)
        try:
            submission = services.submit_batch(
                request.user,
                serializer.validated_data,
                serializer.resolved_images(),
                idempotency_key=key,
                fingerprint=services.request_fingerprint(request.data) if key else "",
                # A larger batch answers with its summary only: its images need not be kept.
                keep_images=len(serializer.validated_data["images"]) <= ACCEPTED_IMAGES_INLINE,
            )
        except BudgetExceeded as error:
            raise budget_exceeded_error(error) from None
        except services.IdempotencyConflict as error:
            raise ApiError("idempotency_conflict", str(error), 422) from None
        batch = accepted_batch(submission)
        location = request.build_absolute_uri(f"/api/v1/batches/{batch.pk}/")
        return Response(
            BatchAcceptedSerializer(batch, context={"request": request}).data,
            status=status.HTTP_202_ACCEPTED if submission.created else status.HTTP_200_OK,
            headers={"Location": location},
        )


class EstimateView(APIView):
    throttle_classes = [EstimateThrottle]

    @extend_schema(
        request=BatchSubmitSerializer,
        responses={200: EstimateSerializer, 400: dict, 403: dict, 429: dict},
    )
    def post(self, request: Request) -> Response:
        """Price a batch body without submitting it (refused as submit would refuse it)."""
        serializer = BatchSubmitSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        check_priority_allowed(request, serializer.validated_data)
        estimate = services.estimate_batch(request.user, serializer.resolved_images())
        return Response(EstimateSerializer(estimate).data)


class BatchDetailView(APIView):
    @extend_schema(responses={200: BatchSerializer, 404: dict})
    def get(self, request: Request, batch_id: int) -> Response:
        """One batch with every image, in panel order."""
        batch = get_user_batch(request, batch_id)
        return Response(
            BatchSerializer(
                Batch.objects.with_images().get(pk=batch.pk), context={"request": request}
            ).data
        )


class BatchCancelView(APIView):
    @extend_schema(request=None, responses={202: BatchSummarySerializer, 409: dict})
    def post(self, request: Request, batch_id: int) -> Response:
        """Cancel everything not finished; images on RunPod are cancelled there."""
        batch = get_user_batch(request, batch_id)
        try:
            services.cancel_batch(batch)
        except services.StateConflict as error:
            raise ApiError("conflict", str(error), status.HTTP_409_CONFLICT) from None
        batch.refresh_from_db()
        return Response(BatchSummarySerializer(batch).data, status=status.HTTP_202_ACCEPTED)


class BatchRetryView(APIView):
    @extend_schema(request=None, responses={202: BatchSummarySerializer, 402: dict, 409: dict})
    def post(self, request: Request, batch_id: int) -> Response:
        """Requeue the failed and cancelled images only."""
        batch = get_user_batch(request, batch_id)
        try:
            services.retry_batch(batch)
        except services.StateConflict as error:
            raise ApiError("conflict", str(error), status.HTTP_409_CONFLICT) from None
        except BudgetExceeded as error:
            raise budget_exceeded_error(error) from None
        batch.refresh_from_db()
        return Response(BatchSummarySerializer(batch).data, status=status.HTTP_202_ACCEPTED)


class BatchDownloadView(APIView):
    @extend_schema(responses={(200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY)})
    def get(self, request: Request, batch_id: int) -> Any:
        """A ZIP of the finished images, streamed, named by panel order."""
        batch = get_user_batch(request, batch_id)
        # Each panel's chosen take (authors' tools: the selected one, else the latest).
        files = authoring.chosen_files(batch)
        if not files:
            raise ApiError(
                "not_ready", "No finished images to download yet.", status.HTTP_409_CONFLICT
            )
        # Stored, not deflated: PNGs are compressed already, and a sized stream can announce
        # its Content-Length so browsers show download progress.
        archive = ZipStream(compress_type=ZIP_STORED, sized=True)
        for arcname, name in files:
            archive.add_path(default_storage.path(name), arcname=arcname)
        response = streaming_response(request, archive, "application/zip")
        response["Content-Length"] = str(len(archive))
        response["Content-Disposition"] = f'attachment; filename="batch-{batch.pk}.zip"'
        return response
