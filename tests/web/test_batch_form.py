"""The new-batch form: `/batches/new/` and its live estimate."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from batches.forms import parse_panels
from batches.models import Batch
from budgets.models import Budget
from budgets.services import get_budget

pytestmark = pytest.mark.django_db


def form_data(**overrides: Any) -> dict[str, Any]:
    return {
        "title": "Chapter 3",
        "style": "ink comic",
        "negative_prompt": "blurry",
        "model": "sdxl",
        "width": "512",
        "height": "768",
        "steps": "20",
        "priority": "normal",
        "panels": "Mara opens the vault door\n\n# a comment\n42 | close-up of her face\n",
        **overrides,
    }


def test_it_needs_a_login() -> None:
    response = Client().get("/batches/new/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_form_offers_the_catalogue_models_and_sizes(author_client: Client) -> None:
    html = author_client.get("/batches/new/").content.decode()

    for model in ("sdxl", "sdxl-turbo", "flux-dev"):
        assert f'<option value="{model}"' in html
    assert '<option value="896">896 px</option>' in html
    assert "42 | Mara opens the vault door" in html  # the seed syntax is documented
    assert 'hx-post="/batches/new/estimate/"' in html
    assert 'hx-trigger="input changed delay:400ms"' in html


def test_it_submits_the_batch_and_redirects_to_its_page(author_client: Client, user: Any) -> None:
    response = author_client.post("/batches/new/", form_data())

    batch = Batch.objects.get(user=user)
    assert response.status_code == 302
    assert response["Location"] == f"/batches/{batch.pk}/"
    assert batch.title == "Chapter 3"
    assert batch.style == "ink comic"
    assert batch.negative_prompt == "blurry"
    images = list(batch.images.order_by("index"))
    assert [image.prompt for image in images] == [
        "Mara opens the vault door",
        "close-up of her face",
    ]
    assert images[1].seed == 42
    assert images[0].params == {
        "model": "sdxl",
        "width": 512,
        "height": 768,
        "steps": 20,
        "guidance": 7.5,
    }
    assert batch.reserved == batch.estimated_cost > 0
    page = author_client.get(response["Location"]).content.decode()
    assert "is queued: 2 panels" in page


def test_it_shows_the_serializers_errors_on_the_fields(author_client: Client) -> None:
    long_prompt = "x" * 2001
    response = author_client.post(
        "/batches/new/",
        form_data(width="500", steps="0", panels=f"fine panel\n{long_prompt}\n"),
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "Must be a multiple of 8 (e.g. 496)." in html
    assert "Ensure this value is greater than or equal to 1." in html
    assert "Line 2 (prompt): Ensure this field has no more than 2000 characters." in html
    assert not Batch.objects.exists()


def test_it_asks_for_at_least_one_panel(author_client: Client) -> None:
    response = author_client.post("/batches/new/", form_data(panels="\n# only a comment\n"))

    assert "Write at least one panel prompt" in response.content.decode()
    assert not Batch.objects.exists()


def test_a_bad_seed_is_reported_on_its_line(author_client: Client) -> None:
    response = author_client.post("/batches/new/", form_data(panels="a\nb\n-5 | c\n"))

    assert "Line 3 (seed): Ensure this value is greater than or equal to 0." in (
        response.content.decode()
    )


def test_it_refuses_a_batch_over_budget_and_creates_nothing(
    author_client: Client, user: Any
) -> None:
    budget = get_budget(user)
    Budget.objects.filter(pk=budget.pk).update(limit=Decimal("0.000100"))

    response = author_client.post("/batches/new/", form_data(panels="a\nb\nc\n"))

    html = response.content.decode()
    assert response.status_code == 200
    assert "Not submitted: This batch is estimated at" in html
    assert "only 0.0001 USD remains of your monthly budget" in html
    assert not Batch.objects.exists()
    budget.refresh_from_db()
    assert budget.reserved == 0


def test_the_estimate_fragment_prices_what_is_typed(author_client: Client, user: Any) -> None:
    response = author_client.post(
        "/batches/new/estimate/", form_data(panels="a\nb\nc\n"), headers={"HX-Request": "true"}
    )

    html = response.content.decode()
    assert html.lstrip().startswith('<aside id="estimate"')
    assert "<html" not in html
    assert "3 panels" in html
    assert "Fits your budget" in html
    assert f"{get_budget(user).remaining:.4f}" in html


def test_the_estimate_warns_before_an_over_budget_submit(author_client: Client, user: Any) -> None:
    Budget.objects.filter(pk=get_budget(user).pk).update(limit=Decimal("0.000100"))

    html = author_client.post("/batches/new/estimate/", form_data()).content.decode()

    assert "estimate--over" in html
    assert "Over budget: this batch would be refused" in html


def test_the_estimate_lists_what_to_fix_when_the_input_is_invalid(author_client: Client) -> None:
    html = author_client.post("/batches/new/estimate/", form_data(width="500")).content.decode()

    assert "Fix these to see the price" in html
    assert "Must be a multiple of 8" in html


def test_seed_lines_are_parsed_and_comments_skipped() -> None:
    panels = parse_panels("# heading\n\n 7 | with seed \nplain | with a bar\nplain\n")

    assert [(p.line_number, p.prompt, p.seed) for p in panels] == [
        (3, "with seed", 7),
        (4, "plain | with a bar", None),
        (5, "plain", None),
    ]


# high priority: offered and accepted only where the API accepts it


def test_an_author_is_not_offered_high_priority(author_client: Client) -> None:
    html = author_client.get("/batches/new/").content.decode()

    assert '<option value="normal"' in html
    assert '<option value="low"' in html
    assert '<option value="high"' not in html


def test_a_forged_high_priority_post_is_refused_and_creates_nothing(
    author_client: Client, user: Any
) -> None:
    response = author_client.post("/batches/new/", form_data(priority="high"))

    html = response.content.decode()
    assert response.status_code == 200
    assert "High priority is reserved for staff" in html
    assert not Batch.objects.exists()
    assert get_budget(user).reserved == 0


def test_staff_and_granted_authors_are_offered_high_priority_and_get_it(
    staff_client: Client, staff_user: Any, user: Any
) -> None:
    assert '<option value="high"' in staff_client.get("/batches/new/").content.decode()
    staff_client.post("/batches/new/", form_data(priority="high"))
    assert Batch.objects.get(user=staff_user).priority == "high"

    user.user_permissions.add(Permission.objects.get(codename="submit_high_priority"))
    author = Client()
    author.force_login(user)
    assert '<option value="high"' in author.get("/batches/new/").content.decode()
    author.post("/batches/new/", form_data(priority="high"))
    assert Batch.objects.get(user=user).priority == "high"


def test_the_live_estimate_refuses_a_forged_high_priority_too(author_client: Client) -> None:
    html = author_client.post("/batches/new/estimate/", form_data(priority="high")).content.decode()

    assert "Fix these to see the price" in html
    assert "High priority is reserved for staff" in html


# hostile values, field by field: always an answer with the reason, never a 500

HUGE_DIGITS = "9" * 5000  # int() refuses more than 4,300 digits


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("title", "t" * 100_000, "no more than 200 characters"),
        ("title", "nul\x00byte", "Null characters are not allowed."),
        ("style", "s" * 100_000, "no more than 500 characters"),
        ("negative_prompt", "n" * 100_000, "no more than 1000 characters"),
        ("model", "m" * 100_000, "is not a valid choice"),
        ("model", "../../etc/passwd", "is not a valid choice"),
        ("width", HUGE_DIGITS, "Enter a whole number."),
        ("width", "-" + "9" * 4000, "greater than or equal to 64"),
        ("width", "1e3", "Enter a whole number."),
        ("width", "NaN", "Enter a whole number."),
        ("height", "9" * 4000, "less than or equal to 2048"),
        ("height", "٥٠٠", "Must be a multiple of 8"),  # Arabic-Indic digits: 500
        ("steps", HUGE_DIGITS, "Enter a whole number."),
        ("steps", "0x10", "Enter a whole number."),
        ("priority", "urgent", "is not a valid choice"),
        ("priority", "p" * 100_000, "is not a valid choice"),
        ("panels", f"{HUGE_DIGITS} | a panel", "Line 1 (seed): Ensure this value is less than"),
        ("panels", f"-{HUGE_DIGITS} | a panel", "Line 1 (seed): Ensure this value is greater"),
        ("panels", f"{'0' * 5000}7 | leading zeros", None),  # seed 7
        ("panels", "x" * 100_000, "Line 1 (prompt): Ensure this field has no more than 2000"),
        ("panels", "a\n" * 600, "at most 500 images"),
        ("panels", "nul \x00 byte", "Null characters are not allowed."),
        ("panels", "\n".join(["# only comments"] * 1000), "Write at least one panel prompt"),
    ],
)
def test_a_hostile_value_in_any_field_is_reported_not_a_500(
    author_client: Client, field: str, value: str, message: str | None
) -> None:
    for path in ("/batches/new/", "/batches/new/estimate/"):
        response = author_client.post(path, form_data(**{field: value}))

        assert response.status_code in (200, 302), (path, response.status_code)
        if message is not None:
            assert message in response.content.decode(), path
    if message is not None:
        assert not Batch.objects.exists()


def test_a_seed_with_thousands_of_leading_zeros_is_read_as_its_value(
    author_client: Client, user: Any
) -> None:
    author_client.post("/batches/new/", form_data(panels=f"{'0' * 5000}7 | a panel"))

    assert Batch.objects.get(user=user).images.get().seed == 7


def test_a_form_body_over_the_upload_limit_is_a_400(author_client: Client) -> None:
    response = author_client.post("/batches/new/", form_data(panels="p\n" * 1_100_000))

    assert response.status_code == 400
    assert not Batch.objects.exists()


def test_many_extra_fields_are_a_400(author_client: Client) -> None:
    extra = {f"extra{n}": "x" for n in range(2000)}

    response = author_client.post("/batches/new/", {**form_data(), **extra})

    assert response.status_code == 400
    assert not Batch.objects.exists()


def test_unicode_digits_are_not_read_as_a_seed() -> None:
    (panel,) = parse_panels("٤٢ | a panel")

    assert panel.seed is None
    assert panel.prompt == "٤٢ | a panel"


def test_the_form_shares_the_apis_submit_limit(
    author_client: Client, user: Any, settings: Any
) -> None:
    """Otherwise the form would be a way around the API's throttle."""
    from rest_framework.test import APIClient

    settings.COMICGEN_THROTTLE_SUBMIT = "2/min"
    api = APIClient()
    api.force_authenticate(user)
    assert (
        api.post("/api/v1/batches/", {"images": [{"prompt": "a"}]}, format="json").status_code
        == 202
    )
    assert author_client.post("/batches/new/", form_data()).status_code == 302

    refused = author_client.post("/batches/new/", form_data())

    assert refused.status_code == 200
    assert "Too many requests of this kind; try again in" in refused.content.decode()
    assert Batch.objects.filter(user=user).count() == 2
