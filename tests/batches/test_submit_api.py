"""POST /api/v1/batches/: validation, pricing and reservation, idempotency, auth.

These run without the worker: the request must answer on its own, without calling RunPod."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from rest_framework.test import APIClient

from batches.models import Batch, ImageJob
from budgets.models import Budget, LedgerEntry
from budgets.services import get_budget
from tests.factories import UserFactory

URL = "/api/v1/batches/"


def body(n: int = 2, **extra: Any) -> dict[str, Any]:
    return {"title": "Chapter 3", "images": [{"prompt": f"panel {i}"} for i in range(n)], **extra}


@pytest.mark.django_db
class TestSubmit:
    def test_it_creates_the_batch_and_its_images_and_answers_202(
        self, api: APIClient, user: Any
    ) -> None:
        response = api.post(
            URL,
            {
                "title": "Chapter 3",
                "priority": "high",
                "style": "ink comic",
                "negative_prompt": "blurry",
                "params": {"model": "sdxl", "width": 768, "height": 768, "steps": 25},
                "images": [
                    {"prompt": "Mara opens the vault door", "seed": 42},
                    {"prompt": "close-up of her face", "params": {"width": 512}},
                ],
            },
            format="json",
        )

        assert response.status_code == 202
        data = response.json()
        assert response["Location"].endswith(f"/api/v1/batches/{data['id']}/")
        assert data["status"] == "queued"
        assert data["priority"] == "high"
        assert data["counts"]["total"] == data["counts"]["pending"] == 2
        first, second = data["images"]
        assert first["seed"] == 42
        assert first["params"]["width"] == 768
        assert second["params"] == {
            "model": "sdxl",
            "width": 512,
            "height": 768,
            "steps": 25,
            "guidance": 7.5,
        }
        assert isinstance(second["seed"], int)  # chosen and stored
        batch = Batch.objects.get(pk=data["id"])
        assert batch.user == user
        assert ImageJob.objects.filter(batch=batch).count() == 2
        assert ImageJob.objects.get(batch=batch, index=1).seed == second["seed"]

    def test_it_reserves_the_estimate_on_the_budget(self, api: APIClient, user: Any) -> None:
        data = api.post(URL, body(5), format="json").json()

        budget = Budget.objects.get(user=user)
        assert budget.reserved == Decimal(data["estimated_cost"]) > 0
        assert (
            LedgerEntry.objects.get(batch_id=data["id"], kind="reserve").amount == budget.reserved
        )

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({"images": []}, "images"),
            ({"images": "not a list"}, "images"),
            ({"images": [{"prompt": ""}]}, "images"),
            ({"images": [{"prompt": "x" * 2001}]}, "images"),
            ({"images": [{"prompt": "nul \x00 byte"}]}, "images"),
            ({"images": [{"prompt": "ok", "seed": -1}]}, "images"),
            ({"images": [{"prompt": "ok", "seed": 2**40}]}, "images"),
            ({"images": [{"prompt": "ok", "params": {"width": 500}}]}, "images"),
            ({"images": [{"prompt": "ok"}], "params": {"width": 4096}}, "params"),
            ({"images": [{"prompt": "ok"}], "params": {"steps": 0}}, "params"),
            ({"images": [{"prompt": "ok"}], "params": {"guidance": "lots"}}, "params"),
            ({"images": [{"prompt": "ok"}], "params": {"model": "dall-e"}}, "params"),
            ({"images": [{"prompt": "ok"}], "params": {"widht": 512}}, "params"),
            ({"images": [{"prompt": "ok"}], "priority": "urgent"}, "priority"),
            ({"images": [{"prompt": "ok"}], "colour": "red"}, "colour"),
            ({"images": [{"prompt": "ok"}], "title": "t" * 201}, "title"),
            ({"images": [None]}, "images"),
            ({"images": [{"prompt": "ok"}], "params": ["width"]}, "params"),
        ],
    )
    def test_it_rejects_bad_input_with_field_errors_and_creates_nothing(
        self, api: APIClient, payload: dict[str, Any], field: str
    ) -> None:
        response = api.post(URL, {"title": "x", **payload}, format="json")

        assert response.status_code == 400
        data = response.json()
        assert data["code"] == "invalid"
        assert field in data["fields"]
        assert not Batch.objects.exists()

    def test_it_rejects_more_images_than_the_limit(self, api: APIClient, settings: Any) -> None:
        settings.COMICGEN_MAX_BATCH_IMAGES = 3
        response = api.post(URL, body(4), format="json")

        assert response.status_code == 400
        assert "at most 3 images" in str(response.json()["fields"]["images"])

    @pytest.mark.parametrize(
        ("raw", "content_type"),
        [("{not json", "application/json"), ("[]", "application/json"), ("a=b", "text/plain")],
    )
    def test_it_answers_malformed_bodies_with_a_4xx(
        self, api: APIClient, raw: str, content_type: str
    ) -> None:
        response = api.generic("POST", URL, raw, content_type=content_type)

        assert 400 <= response.status_code < 500
        assert "detail" in response.json()
        assert not Batch.objects.exists()

    def test_it_refuses_an_oversized_body(self, api: APIClient, settings: Any) -> None:
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
        response = api.post(URL, body(100), format="json")

        assert response.status_code == 413
        assert "over 1000 bytes" in response.json()["detail"]
        assert not Batch.objects.exists()

    def test_it_refuses_a_batch_over_budget_with_402_and_creates_nothing(
        self, api: APIClient, user: Any
    ) -> None:
        budget = get_budget(user)
        Budget.objects.filter(pk=budget.pk).update(limit=Decimal("0.001"))

        response = api.post(URL, body(20), format="json")

        assert response.status_code == 402
        data = response.json()
        assert data["code"] == "budget_exceeded"
        assert Decimal(data["estimated_cost"]) > Decimal(data["remaining"]) == Decimal("0.001")
        assert not Batch.objects.exists()
        assert not ImageJob.objects.exists()
        budget.refresh_from_db()
        assert budget.reserved == 0

    def test_an_idempotent_replay_returns_the_same_batch(self, api: APIClient) -> None:
        first = api.post(URL, body(3), format="json", HTTP_IDEMPOTENCY_KEY="chapter-3-v1")
        again = api.post(URL, body(3), format="json", HTTP_IDEMPOTENCY_KEY="chapter-3-v1")

        assert first.status_code == 202
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        assert Batch.objects.count() == 1
        assert ImageJob.objects.count() == 3
        assert LedgerEntry.objects.filter(kind="reserve").count() == 1

    def test_a_reused_idempotency_key_with_another_body_is_422(self, api: APIClient) -> None:
        api.post(URL, body(3), format="json", HTTP_IDEMPOTENCY_KEY="k1")
        response = api.post(URL, body(4), format="json", HTTP_IDEMPOTENCY_KEY="k1")

        assert response.status_code == 422
        assert response.json()["code"] == "idempotency_conflict"
        assert Batch.objects.count() == 1

    def test_idempotency_keys_belong_to_their_user(self, api: APIClient) -> None:
        other = APIClient()
        other.force_authenticate(UserFactory())
        mine = api.post(URL, body(1), format="json", HTTP_IDEMPOTENCY_KEY="same")
        theirs = other.post(URL, body(1), format="json", HTTP_IDEMPOTENCY_KEY="same")

        assert theirs.status_code == 202
        assert theirs.json()["id"] != mine.json()["id"]

    def test_it_needs_authentication(self, db: Any) -> None:
        response = APIClient().post(URL, body(1), format="json")

        assert response.status_code in (401, 403)
        assert response.json()["code"] in ("not_authenticated", "authentication_failed")

    def test_it_accepts_token_authentication(self, user: Any) -> None:
        from rest_framework.authtoken.models import Token

        token = Token.objects.create(user=user)
        client = APIClient()
        response = client.post(URL, body(1), format="json", HTTP_AUTHORIZATION=f"Token {token.key}")

        assert response.status_code == 202
        bad = client.post(URL, body(1), format="json", HTTP_AUTHORIZATION="Token nope")
        assert bad.status_code == 401


@pytest.mark.django_db(transaction=True)
def test_a_submit_while_redis_is_down_is_kept_and_enqueued_by_the_sweeper(
    api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from batches import flow, services

    def redis_down(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Redis is restarting")

    monkeypatch.setattr(flow, "mark_chunks_queued", redis_down)
    response = api.post(URL, body(12), format="json")

    assert response.status_code == 202
    batch = Batch.objects.get(pk=response.json()["id"])
    assert batch.status == "queued"
    assert not flow.chunk_is_owned(batch.pk, 0)

    monkeypatch.undo()  # Redis is back
    # (When integration tests have started the stack, its beat may sweep first: either will do.)
    services.sweep_batches()
    assert flow.chunk_is_owned(batch.pk, 0)
    assert flow.chunk_is_owned(batch.pk, 1)
