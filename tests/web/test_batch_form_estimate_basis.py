"""The new-batch form's live estimate tells the author what it is based on."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from batches.models import Batch, ImageStatus
from batches.views import allowance_in_words, basis_in_words
from budgets.books import check_books
from budgets.models import Budget
from budgets.services import get_budget
from tests.support.history import record_history
from tests.web.test_batch_form import form_data

pytestmark = pytest.mark.django_db


def basis_line(html: str) -> str:
    match = re.search(r'data-testid="estimate-basis"[^>]*>([^<]*)<', html)
    assert match, html
    return match.group(1).strip()


def test_with_no_history_the_estimate_says_it_is_the_catalogues(author_client: Client) -> None:
    html = author_client.post(
        "/batches/new/estimate/", form_data(), headers={"HX-Request": "true"}
    ).content.decode()

    assert basis_line(html) == "From the catalogue (no history yet)."
    assert "allowance for retries: the usual allowance until there is history" in html


def test_with_history_the_estimate_names_how_many_panels_it_learned_from(
    author_client: Client,
) -> None:
    record_history(230, seconds=0.5)
    record_history(10, status=ImageStatus.FAILED, attempts=1)

    html = author_client.post(
        "/batches/new/estimate/", form_data(), headers={"HX-Request": "true"}
    ).content.decode()

    assert basis_line(html) == "Based on the last 230 panels on this model."
    assert 'data-basis="measured"' in html
    assert "of recent attempts on this model failed" in html


def test_a_refused_submit_shows_the_estimate_and_its_basis(
    author_client: Client, user: Any
) -> None:
    record_history(25, seconds=0.5)
    Budget.objects.filter(pk=get_budget(user).pk).update(limit=Decimal("0.000100"))

    html = author_client.post("/batches/new/", form_data()).content.decode()

    assert "Not submitted" in html
    assert basis_line(html) == "Based on the last 25 panels on this model."
    assert not Batch.objects.filter(user=user).exists()
    assert check_books() == []


@pytest.mark.parametrize(
    ("basis", "words", "allowance"),
    [
        (
            {"models": {"sdxl": {"kind": "measured", "samples": 1, "failure_rate": 0.12}}},
            "Based on the last 1 panel on this model.",
            "12% of recent attempts on this model failed",
        ),
        (
            {
                "models": {
                    "flux-dev": {"kind": "catalogue", "samples": 0, "failure_rate": None},
                    "sdxl": {"kind": "measured", "samples": 240, "failure_rate": 0.0},
                }
            },
            "flux-dev: from the catalogue (no history yet); "
            "sdxl: based on the last 240 panels on it.",
            "",
        ),
        (
            {
                "models": {
                    "flux-dev": {"kind": "measured", "samples": 30, "failure_rate": 0.1},
                    "sdxl": {"kind": "measured", "samples": 240, "failure_rate": 0.0},
                }
            },
            "flux-dev: based on the last 30 panels on it; sdxl: based on the last 240 panels "
            "on it.",
            "from the recent failure rates",
        ),
    ],
)
def test_the_basis_in_words_for_one_model_or_several(
    basis: dict[str, Any], words: str, allowance: str
) -> None:
    assert basis_in_words(basis) == words
    assert allowance_in_words(basis) == allowance
