"""What an image costs: a catalogue of models, each on a GPU class with a price per second and
an expected number of seconds per image as a function of its size and steps.

The catalogue is the estimate before an endpoint has any history: budgets/estimates.py learns
what each model really takes from the executionTime of its recent panels and uses that instead.

Each model is rendered by its own RunPod endpoint (on RunPod an endpoint runs one worker image,
so one model): `RUNPOD_ENDPOINTS` maps model -> endpoint id. A model with no endpoint is in the
catalogue (its past panels are still priced by it) but not offered: the form does not list it
and a submit naming it is refused, so nobody pays for a model that would not render it.

A RunPod attempt is billed for its executionTime; every attempt is also bounded by the
executionTimeout comicgen sets on it, so its cost can never exceed `attempt_max_cost` (the
timeout plus a small margin for what RunPod bills past it). That worst case stays on the
catalogue: it is what keeps the limit safe, whatever history says.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_UP, Decimal
from typing import Any

from django.conf import settings

# GPU prices per second: RunPod Serverless flex workers' published rates by GPU class.
GPU_PRICE_PER_SECOND = {
    "24gb": Decimal("0.00019"),
    "4090": Decimal("0.00031"),
    "a100": Decimal("0.00076"),
    "h100": Decimal("0.00116"),
}

# With no history of failures, the estimate covers this fraction of the images failing once
# and being retried (budgets/estimates.py measures the real rate once there is history).
RETRY_ALLOWANCE = Decimal("0.25")
# An attempt may run this many times its expected duration before RunPod times it out.
ATTEMPT_TIMEOUT_FACTOR = 4
MIN_ATTEMPT_TIMEOUT_SECONDS = 20.0
# RunPod stops a job at its executionTimeout, but the executionTime it bills can come out a
# little past it (the worker's stop is not instant). An attempt's hold covers this much more.
TIMEOUT_OVERRUN_MS = 5000
MONEY = Decimal("0.000001")


@dataclass(frozen=True)
class ModelPrice:
    """Seconds per image = overhead + per_megapixel_step x megapixels x steps."""

    name: str
    gpu: str
    overhead_seconds: float
    seconds_per_megapixel_step: float

    @property
    def price_per_second(self) -> Decimal:
        return GPU_PRICE_PER_SECOND[self.gpu]

    def expected_seconds(self, width: int, height: int, steps: int) -> float:
        megapixels = width * height / 1_000_000
        return self.overhead_seconds + self.seconds_per_megapixel_step * megapixels * steps


DEFAULT_CATALOGUE = {
    # SDXL on a 4090 runs about 10 steps a second on a one-megapixel panel: 1.5 s for 768 x 768
    # at 25 steps, 3.1 s for 1024 x 1024 at 30. A warm worker's fixed cost per job is a few
    # tens of milliseconds, under the steps' own variation: counted as none, so that history
    # at one size prices another along the right curve (budgets/estimates.py). The dev stack's
    # emulator (`--latency 1.5 --latency-scale pixels`) takes the same.
    "sdxl": ModelPrice("sdxl", "4090", overhead_seconds=0.0, seconds_per_megapixel_step=0.1),
    "sdxl-turbo": ModelPrice(
        "sdxl-turbo", "24gb", overhead_seconds=0.3, seconds_per_megapixel_step=0.2
    ),
    "flux-dev": ModelPrice(
        "flux-dev", "a100", overhead_seconds=1.0, seconds_per_megapixel_step=0.12
    ),
}


def catalogue() -> dict[str, ModelPrice]:
    """The catalogue, with overrides from settings.COMICGEN_MODEL_CATALOGUE when set."""
    overrides: dict[str, dict[str, Any]] = getattr(settings, "COMICGEN_MODEL_CATALOGUE", {}) or {}
    models = dict(DEFAULT_CATALOGUE)
    for name, fields in overrides.items():
        models[name] = ModelPrice(name=name, **fields)
    return models


def model_names() -> list[str]:
    """Every catalogue model, offered or not (what past batches may name)."""
    return sorted(catalogue())


# A RunPod endpoint id goes into URL paths (/v2/<id>/run): one path segment of plain characters.
ENDPOINT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ModelNotOffered(LookupError):
    """The model is unknown, or no RunPod endpoint renders it here."""


def parse_model_endpoints(name: str, text: str, known_models: Iterable[str]) -> dict[str, str]:
    """Read a model -> endpoint id mapping: a JSON object (`{"sdxl": "abc123"}`) or
    `sdxl=abc123,flux-dev=def456`. Raises ValueError, naming `name`, on a malformed entry, an
    endpoint id that is not one path segment, or a model the catalogue does not have (a typo
    would otherwise silently withdraw a model)."""
    text = text.strip()
    routes: dict[str, str] = {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError as error:
            raise ValueError(f"{name}: not valid JSON ({error})") from None
        if not isinstance(parsed, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in parsed.items()
        ):
            raise ValueError(f'{name}: expected a JSON object of strings, {{"sdxl": "<id>"}}')
        routes = {key.strip(): value.strip() for key, value in parsed.items()}
    else:
        for entry in filter(None, (part.strip() for part in text.split(","))):
            model, sep, endpoint = entry.partition("=")
            if not sep:
                raise ValueError(f"{name}: {entry!r} is not model=endpoint_id")
            routes[model.strip()] = endpoint.strip()
    known = set(known_models)
    for model, endpoint in routes.items():
        if model not in known:
            raise ValueError(
                f"{name}: {model!r} is not a catalogue model (known: {', '.join(sorted(known))})"
            )
        if not ENDPOINT_ID_PATTERN.match(endpoint):
            raise ValueError(
                f"{name}: endpoint id {endpoint!r} for {model!r} must be letters, digits, "
                "'.', '_' or '-' (RunPod's endpoint id, as in /v2/<id>/run)"
            )
    return routes


def model_endpoints() -> dict[str, str]:
    """Each offered model -> the RunPod endpoint that renders it. With `RUNPOD_ENDPOINTS` unset,
    every catalogue model is on `RUNPOD_ENDPOINT_ID` (one endpoint, as the dev stack had)."""
    routes: dict[str, str] | None = getattr(settings, "RUNPOD_ENDPOINTS", None)
    models = catalogue()
    if routes is None:
        return {name: str(settings.RUNPOD_ENDPOINT_ID) for name in models}
    return {name: endpoint for name, endpoint in routes.items() if name in models}


def offered_models() -> list[str]:
    """The models an author may pick: those an endpoint renders."""
    return sorted(model_endpoints())


def endpoint_for(model: str) -> str:
    """The RunPod endpoint that renders `model`; ModelNotOffered when none does."""
    try:
        return model_endpoints()[model]
    except KeyError:
        raise ModelNotOffered(model) from None


def batch_endpoint(endpoints: Iterable[str]) -> str:
    """What a batch records as its endpoint: the one all its panels run on, else `mixed`
    (each panel's own is on the panel: ImageJob.endpoint_id)."""
    distinct = set(endpoints)
    return distinct.pop() if len(distinct) == 1 else MIXED_ENDPOINTS


MIXED_ENDPOINTS = "mixed"


def money(amount: Decimal) -> Decimal:
    return amount.quantize(MONEY, rounding=ROUND_UP)


def expected_cost(params: dict[str, Any]) -> Decimal:
    model = catalogue()[params["model"]]
    seconds = model.expected_seconds(params["width"], params["height"], params["steps"])
    return money(Decimal(str(seconds)) * model.price_per_second)


def attempt_timeout_ms(params: dict[str, Any]) -> int:
    """RunPod's executionTimeout for one attempt: generous, but a hard bound on its cost."""
    model = catalogue()[params["model"]]
    seconds = model.expected_seconds(params["width"], params["height"], params["steps"])
    timeout = max(MIN_ATTEMPT_TIMEOUT_SECONDS, seconds * ATTEMPT_TIMEOUT_FACTOR)
    return min(math.ceil(timeout * 1000), settings.RUNPOD_EXECUTION_TIMEOUT_MS)


def attempt_max_billed_ms(params: dict[str, Any]) -> int:
    """The most RunPod can bill for one attempt: its executionTimeout plus the overrun margin.
    Also what an attempt is charged when its job's outcome can never be learned."""
    return attempt_timeout_ms(params) + TIMEOUT_OVERRUN_MS


def attempt_max_cost(params: dict[str, Any]) -> Decimal:
    """What an attempt holds on the budget while it runs: the most RunPod can bill for it."""
    return actual_cost(params, attempt_max_billed_ms(params))


def actual_cost(params: dict[str, Any], execution_ms: int) -> Decimal:
    """What RunPod bills for an attempt: its executionTime at the model's GPU price."""
    model = catalogue()[params["model"]]
    return money(Decimal(execution_ms) / 1000 * model.price_per_second)
