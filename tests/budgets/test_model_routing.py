"""Models routed to endpoints (budgets.pricing): RUNPOD_ENDPOINTS read, checked and applied."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from budgets import pricing

KNOWN = ["sdxl", "sdxl-turbo", "flux-dev"]
REPO_ROOT = Path(__file__).resolve().parents[2]
PRINT_ROUTES = "from django.conf import settings; print(settings.RUNPOD_ENDPOINTS)"


@pytest.mark.parametrize(
    "text",
    [
        '{"sdxl": "abc123", "flux-dev": "def-456"}',
        "sdxl=abc123, flux-dev=def-456",
        " sdxl = abc123 ,flux-dev=def-456,",
    ],
)
def test_routes_read_as_json_or_as_model_equals_endpoint(text: str) -> None:
    routes = pricing.parse_model_endpoints("RUNPOD_ENDPOINTS", text, KNOWN)

    assert routes == {"sdxl": "abc123", "flux-dev": "def-456"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sdx1=abc", "'sdx1' is not a catalogue model"),
        ("sdxl", "is not model=endpoint_id"),
        ("sdxl=", "endpoint id '' for 'sdxl'"),
        ("sdxl=a/b", "endpoint id 'a/b'"),
        ('{"sdxl": 3}', "JSON object of strings"),
        ('{"sdxl": ', "not valid JSON"),
    ],
)
def test_a_bad_route_is_refused_naming_the_setting(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="RUNPOD_ENDPOINTS") as refused:
        pricing.parse_model_endpoints("RUNPOD_ENDPOINTS", text, KNOWN)

    assert message in str(refused.value)


def test_without_routes_every_model_is_on_the_one_endpoint(settings: Any) -> None:
    settings.RUNPOD_ENDPOINTS = None
    settings.RUNPOD_ENDPOINT_ID = "the-one"

    assert pricing.offered_models() == pricing.model_names()
    assert {pricing.endpoint_for(model) for model in pricing.model_names()} == {"the-one"}


def test_with_routes_only_routed_models_are_offered(settings: Any) -> None:
    settings.RUNPOD_ENDPOINTS = {"sdxl": "ep-sdxl", "flux-dev": "ep-flux"}

    assert pricing.offered_models() == ["flux-dev", "sdxl"]
    assert pricing.endpoint_for("flux-dev") == "ep-flux"
    with pytest.raises(pricing.ModelNotOffered):
        pricing.endpoint_for("sdxl-turbo")
    # Still in the catalogue: past panels of it are priced as before.
    assert "sdxl-turbo" in pricing.model_names()


def test_a_batch_records_its_one_endpoint_or_mixed() -> None:
    assert pricing.batch_endpoint(["a", "a"]) == "a"
    assert pricing.batch_endpoint(["a", "b", "a"]) == pricing.MIXED_ENDPOINTS


def settings_with(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PRINT_ROUTES],
        cwd=REPO_ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "comicgen.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_typo_in_the_routes_stops_the_process_at_start() -> None:
    result = settings_with(RUNPOD_ENDPOINTS="sdxl=ep1,flux-dv=ep2")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "'flux-dv' is not a catalogue model" in result.stderr


def test_a_model_added_to_the_catalogue_can_be_routed() -> None:
    result = settings_with(
        RUNPOD_ENDPOINTS="comic-xl=ep9",
        COMICGEN_MODEL_CATALOGUE='{"comic-xl": {"gpu": "a100", "overhead_seconds": 1, '
        '"seconds_per_megapixel_step": 0.1}}',
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'comic-xl': 'ep9'}"
