"""Request validation and response shapes of the batches API (also used for pushed events)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from batches import eta, panels
from batches.models import Batch, ImageJob, ImageStatus, Priority
from budgets import pricing

DEFAULT_PARAMS: dict[str, Any] = {
    "model": "sdxl",
    "width": 768,
    "height": 768,
    "steps": 25,
    "guidance": 7.5,
}
MAX_PROMPT_CHARS = 2000
MIN_SIDE, MAX_SIDE = 64, 2048


# Unknown keys named in one error: a body of 100,000 of them gets a short answer.
MAX_UNKNOWN_KEYS_REPORTED = 10


class StrictSerializer(serializers.Serializer):
    """Refuses keys it does not know, so a typo ("widht") is an error, not silently ignored."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                message = "Unknown field; allowed: " + ", ".join(self.fields)
                errors = {key: [message] for key in unknown[:MAX_UNKNOWN_KEYS_REPORTED]}
                if len(unknown) > MAX_UNKNOWN_KEYS_REPORTED:
                    errors["non_field_errors"] = [f"{len(unknown)} unknown fields in all."]
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


class ImageListField(serializers.ListField):
    """The batch's images, counted before each one is validated: a body of 500,000 tiny images
    is refused in one step, not after half a million validations and as many error entries."""

    def to_internal_value(self, data: Any) -> Any:
        limit = settings.COMICGEN_MAX_BATCH_IMAGES
        if isinstance(data, list) and len(data) > limit:
            raise serializers.ValidationError(
                f"A batch holds at most {limit} images; split this one into several batches."
            )
        return super().to_internal_value(data)


def validate_side(value: int) -> None:
    if value % 8:
        raise serializers.ValidationError(f"Must be a multiple of 8 (e.g. {value - value % 8}).")


class ModelField(serializers.ChoiceField):
    """A catalogue model that an endpoint renders here (budgets.pricing.offered_models). A
    model without one is refused with the reason, not as a mere "not a valid choice": the
    author would otherwise pay for a model that nothing renders."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=[], **kwargs)

    def refresh_choices(self) -> None:
        # The catalogue and the routes are settings: read per serializer, not at import.
        self.choices = pricing.offered_models()

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and data in pricing.model_names() and data not in self.choices:
            raise serializers.ValidationError(
                f"The model {data!r} is not offered here: no RunPod endpoint renders it "
                f"(RUNPOD_ENDPOINTS). Choose one of: {', '.join(self.choices)}.",
                code="model_not_offered",
            )
        return super().to_internal_value(data)


def default_params() -> dict[str, Any]:
    """DEFAULT_PARAMS, with the first offered model when the default one is not offered."""
    offered = pricing.offered_models()
    if DEFAULT_PARAMS["model"] in offered or not offered:
        return dict(DEFAULT_PARAMS)
    return {**DEFAULT_PARAMS, "model": offered[0]}


class GenerationParamsSerializer(StrictSerializer):
    """Generation parameters; every one optional, filled from the batch and then defaults."""

    model = ModelField(required=False)
    width = serializers.IntegerField(
        min_value=MIN_SIDE, max_value=MAX_SIDE, required=False, validators=[validate_side]
    )
    height = serializers.IntegerField(
        min_value=MIN_SIDE, max_value=MAX_SIDE, required=False, validators=[validate_side]
    )
    steps = serializers.IntegerField(min_value=1, max_value=150, required=False)
    guidance = serializers.FloatField(min_value=0, max_value=30, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model_field = self.fields["model"]
        assert isinstance(model_field, ModelField)
        model_field.refresh_choices()


class ImageInputSerializer(StrictSerializer):
    prompt = serializers.CharField(max_length=MAX_PROMPT_CHARS, trim_whitespace=True)
    seed = serializers.IntegerField(min_value=0, max_value=2**32 - 1, required=False)
    params = GenerationParamsSerializer(required=False)


class BatchSubmitSerializer(StrictSerializer):
    title = serializers.CharField(max_length=200, required=False, default="Untitled chapter")
    priority = serializers.ChoiceField(choices=Priority.choices, default=Priority.NORMAL)
    # DRF's metaclass turns declared fields into `fields`; the stubs see Field.style (a dict).
    style = serializers.CharField(  # type: ignore[assignment]
        max_length=500, required=False, allow_blank=True, default=""
    )
    negative_prompt = serializers.CharField(
        max_length=1000, required=False, allow_blank=True, default=""
    )
    params = GenerationParamsSerializer(required=False)
    images = ImageListField(child=ImageInputSerializer(), min_length=1)

    def resolved_images(self) -> list[dict[str, Any]]:
        """Each image with its effective params (defaults < batch params < image params)."""
        data = self.validated_data
        batch_params = {**default_params(), **data.get("params", {})}
        return [
            {
                "prompt": image["prompt"],
                "seed": image.get("seed"),
                "params": {**batch_params, **image.get("params", {})},
            }
            for image in data["images"]
        ]


class TakeSerializer(serializers.Serializer):
    """One completed take of a panel (documentation of `versions`; built in get_versions)."""

    version = serializers.IntegerField()
    prompt = serializers.CharField()
    seed = serializers.IntegerField()
    params = serializers.DictField()
    image_url = serializers.CharField(allow_null=True, help_text="Null once the file expired.")
    cost = serializers.DecimalField(max_digits=12, decimal_places=6)
    created_at = serializers.DateTimeField(allow_null=True)
    current = serializers.BooleanField(help_text="The take the image row itself holds.")
    expired = serializers.BooleanField()


class ImageJobSerializer(serializers.ModelSerializer):
    image_url = serializers.SerializerMethodField()

    class Meta:
        model = ImageJob
        fields = [
            "id",
            "index",
            "prompt",
            "seed",
            "params",
            "status",
            "attempts",
            "error",
            "image_url",
            "cost",
            "seq",
            # Authors' tools (batches/authoring.py).
            "version",
            "versions",
            "selected_version",
            "expired",
        ]

    def get_image_url(self, image: ImageJob) -> str | None:
        """Signed and expiring (batches.panels): it works without headers, for a while.
        Absolute when serialized for a request (the API's answers); pushed events have no
        request and carry the path alone, which the pages and the CLI resolve against the
        server they talk to."""
        url = panels.panel_url(image)
        request = self.context.get("request")
        return request.build_absolute_uri(url) if url and request is not None else url

    # --- authors' tools ----------------------------------------------------------------------

    versions = serializers.SerializerMethodField()
    expired = serializers.SerializerMethodField()

    @extend_schema_field(TakeSerializer(many=True))
    def get_versions(self, image: ImageJob) -> list[dict[str, Any]]:
        """Every completed take, oldest first; the last is the current one once drawn."""
        from batches import authoring, takes

        return [
            {
                "version": take.version,
                "prompt": take.prompt,
                "seed": take.seed,
                "params": take.params,
                "image_url": takes.take_url(image, take),
                "cost": str(take.cost),
                "created_at": take.created_at.isoformat() if take.created_at else None,
                "current": take.current,
                "expired": not take.file_name,
            }
            for take in authoring.takes_of(image)
        ]

    def get_expired(self, image: ImageJob) -> bool:
        """A completed panel whose file the retention removed (its row and cost stay)."""
        return image.status == "completed" and not image.image


class BatchSummarySerializer(serializers.ModelSerializer):
    counts = serializers.SerializerMethodField()
    eta_seconds = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = [
            "id",
            "title",
            "status",
            "priority",
            "style",
            "negative_prompt",
            "params",
            "created_at",
            "started_at",
            "finished_at",
            "counts",
            "estimated_cost",
            "actual_cost",
            "currency",
            "eta_seconds",
            "cancel_reason",
            "seq",
        ]

    def _counts(self, batch: Batch) -> dict[str, int]:
        cached = getattr(batch, "_counts_cache", None)
        if cached is None:
            cached = batch.status_counts()
            batch._counts_cache = cached  # type: ignore[attr-defined]
        return cached

    def get_counts(self, batch: Batch) -> dict[str, int]:
        return self._counts(batch)

    def get_eta_seconds(self, batch: Batch) -> float | None:
        """The pace so far, never below a retry backoff still to wait (batches.eta)."""
        return eta.eta_seconds(batch, self._counts(batch))


class BatchSerializer(BatchSummarySerializer):
    images = ImageJobSerializer(many=True, read_only=True)

    class Meta(BatchSummarySerializer.Meta):
        fields = [*BatchSummarySerializer.Meta.fields, "images"]


# A submit's answer lists the images up to this many; a larger batch answers with its summary
# (the images are at its Location, and live on its WebSocket): serializing thousands of rows
# would cost the request more than creating them.
ACCEPTED_IMAGES_INLINE = 100


def new_batch_counts(images: int) -> dict[str, int]:
    """The counts of a batch just created: every image pending."""
    counts = dict.fromkeys(ImageStatus.values, 0)
    counts[ImageStatus.PENDING] = images
    counts["total"] = images
    return counts


class BatchLinksSerializer(serializers.Serializer):
    self = serializers.CharField(help_text="The batch with every image (also `Location`).")
    events = serializers.CharField(help_text="Its WebSocket: a snapshot, then live updates.")


class BatchAcceptedSerializer(BatchSummarySerializer):
    """What a submit answers (202, or 200 for an idempotent replay): the batch's summary, its
    links and, for a batch of up to ACCEPTED_IMAGES_INLINE images, the images. It is built from
    what the request created, not read back: set `accepted_images` on the batch (None to leave
    `images` out) and its counts in `_counts_cache`, as the view does."""

    images = ImageJobSerializer(
        source="accepted_images",
        many=True,
        read_only=True,
        required=False,
        help_text=f"Every image, for a batch of up to {ACCEPTED_IMAGES_INLINE}; absent for a "
        "larger one (GET the batch's `links.self` for them).",
    )
    links = serializers.SerializerMethodField()

    class Meta(BatchSummarySerializer.Meta):
        fields = [*BatchSummarySerializer.Meta.fields, "links", "images"]

    @extend_schema_field(BatchLinksSerializer)
    def get_links(self, batch: Batch) -> dict[str, str]:
        path = f"/api/v1/batches/{batch.pk}/"
        request = self.context.get("request")
        return {
            "self": request.build_absolute_uri(path) if request else path,
            "events": f"/ws/batches/{batch.pk}/",
        }

    def to_representation(self, batch: Batch) -> dict[str, Any]:
        data = dict(super().to_representation(batch))
        if getattr(batch, "accepted_images", None) is None:
            data.pop("images", None)
        return data


class ModelBasisSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=["measured", "catalogue"],
        help_text="`measured`: seconds per panel fitted to this model's recent panels on the "
        "endpoint; `catalogue`: too few of them yet (under 20), the catalogue's figure.",
    )
    samples = serializers.IntegerField(
        help_text="Completed panels the measured figure comes from (0 for the catalogue)."
    )
    panels = serializers.IntegerField(help_text="Panels of this batch on this model.")
    failure_rate = serializers.FloatField(
        allow_null=True,
        help_text="Failed attempts over attempts among the model's recent panels; null when "
        "they are too few and the catalogue's allowance applies.",
    )
    allowance_rate = serializers.DecimalField(
        max_digits=6,
        decimal_places=4,
        help_text="Retry allowance on this model's expected cost: f / (1 - f) for the "
        "failure rate f, within 0.05..0.50; 0.25 without history.",
    )


class EstimateBasisSerializer(serializers.Serializer):
    """What the estimate is based on, as a whole and per model."""

    kind = serializers.ChoiceField(
        choices=["measured", "catalogue", "mixed"],
        help_text="`measured` when every model's figure was learned, `catalogue` when none "
        "was, `mixed` otherwise.",
    )
    samples = serializers.IntegerField(
        help_text="Completed panels behind the measured figures, all models together."
    )
    models = serializers.DictField(child=ModelBasisSerializer(), help_text="Per model name.")


class EstimateSerializer(serializers.Serializer):
    """The price of a batch: `expected_cost` to render each panel once, plus `allowance` for
    retries, makes `estimated_cost`, what a submit reserves on the budget."""

    estimated_cost = serializers.DecimalField(
        max_digits=12, decimal_places=6, help_text="expected_cost + allowance: what is reserved."
    )
    expected_cost = serializers.DecimalField(
        max_digits=12, decimal_places=6, help_text="Every panel rendered once."
    )
    allowance = serializers.DecimalField(
        max_digits=12, decimal_places=6, help_text="For retries of failed attempts."
    )
    basis = EstimateBasisSerializer()
    base_cost = serializers.DecimalField(
        max_digits=12, decimal_places=6, help_text="Same as expected_cost (older name)."
    )
    retry_allowance = serializers.DecimalField(
        max_digits=12, decimal_places=6, help_text="Same as allowance (older name)."
    )
    retry_allowance_rate = serializers.DecimalField(
        max_digits=4, decimal_places=2, help_text="allowance / expected_cost, to 0.01."
    )
    currency = serializers.CharField()
    remaining = serializers.DecimalField(max_digits=12, decimal_places=6)
    within_budget = serializers.BooleanField()
    images = serializers.IntegerField()
