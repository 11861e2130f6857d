"""POST /api/v1/batches/: validation, pricing and reservation, idempotency, auth.

These run without the worker: the request must answer on its own, without calling RunPod."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from batches import services
from batches.api.serializers import ACCEPTED_IMAGES_INLINE
from batches.models import Batch, ImageJob
from budgets.books import check_books
from budgets.models import Budget, LedgerEntry
from budgets.services import get_budget
from tests.factories import UserFactory

URL = "/api/v1/batches/"


def body(n: int = 2, **extra: Any) -> dict[str, Any]:
    return {"title": "Chapter 3", "images": [{"prompt": f"panel {i}"} for i in range(n)], **extra}


def grant_high_priority(user: Any) -> None:
    user.user_permissions.add(Permission.objects.get(codename="submit_high_priority"))


@pytest.mark.django_db
class TestSubmit:
    def test_it_creates_the_batch_and_its_images_and_answers_202(
        self, api: APIClient, user: Any
    ) -> None:
        grant_high_priority(user)
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
    # Marking the chunks queued is what is checked; their tasks are not sent, so no worker of
    # the session's stack runs this batch while the test's teardown empties the tables.
    monkeypatch.setattr(services, "chord", lambda header: lambda callback: None)
    # (When integration tests have started the stack, its beat may sweep first: either will do.)
    services.sweep_batches()
    assert flow.chunk_is_owned(batch.pk, 0)
    assert flow.chunk_is_owned(batch.pk, 1)


@pytest.mark.django_db
class TestHighPriority:
    """`priority: high` takes the next free GPU before everyone else's work: staff and the
    users they grant `batches.submit_high_priority` only."""

    def test_an_author_without_the_permission_gets_403_and_nothing_is_created(
        self, api: APIClient, user: Any
    ) -> None:
        response = api.post(URL, body(2, priority="high"), format="json")

        assert response.status_code == 403
        data = response.json()
        assert data["code"] == "priority_not_allowed"
        assert "priority normal or low" in data["detail"]
        assert not Batch.objects.exists()
        assert get_budget(user).reserved == 0

    @pytest.mark.parametrize("priority", ["normal", "low"])
    def test_anyone_may_submit_normal_and_low(self, api: APIClient, priority: str) -> None:
        response = api.post(URL, body(1, priority=priority), format="json")

        assert response.status_code == 202
        assert Batch.objects.get().priority == priority

    def test_a_user_granted_the_permission_may_submit_high(self, api: APIClient, user: Any) -> None:
        grant_high_priority(user)

        response = api.post(URL, body(1, priority="high"), format="json")

        assert response.status_code == 202
        assert Batch.objects.get(user=user).priority == "high"

    def test_a_permission_given_through_a_group_counts(self, api: APIClient, user: Any) -> None:
        from django.contrib.auth.models import Group

        editors = Group.objects.create(name="editors")
        editors.permissions.add(Permission.objects.get(codename="submit_high_priority"))
        user.groups.add(editors)

        assert api.post(URL, body(1, priority="high"), format="json").status_code == 202

    def test_staff_may_submit_high(self, db: Any) -> None:
        client = APIClient()
        client.force_authenticate(UserFactory(is_staff=True))

        assert client.post(URL, body(1, priority="high"), format="json").status_code == 202

    def test_staff_find_the_permission_on_a_users_admin_page(self, user: Any) -> None:
        from django.test import Client

        admin = Client()
        admin.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
        html = admin.get(f"/admin/auth/user/{user.pk}/change/").content.decode()

        assert "Can submit high-priority batches" in html

    def test_bad_input_is_reported_before_the_priority(self, api: APIClient) -> None:
        response = api.post(URL, {"priority": "high", "images": []}, format="json")

        assert response.status_code == 400
        assert "images" in response.json()["fields"]


@pytest.mark.django_db
class TestThrottle:
    def test_submits_past_the_rate_get_429_with_retry_after(
        self, api: APIClient, settings: Any
    ) -> None:
        settings.COMICGEN_THROTTLE_SUBMIT = "3/min"
        answers = [api.post(URL, body(1), format="json") for _ in range(4)]

        assert [response.status_code for response in answers] == [202, 202, 202, 429]
        refused = answers[-1]
        assert refused.json()["code"] == "throttled"
        assert "try again in" in refused.json()["detail"]
        assert 1 <= int(refused["Retry-After"]) <= 60
        assert Batch.objects.count() == 3

    def test_the_limit_is_per_user(self, api: APIClient, settings: Any) -> None:
        settings.COMICGEN_THROTTLE_SUBMIT = "1/min"
        other = APIClient()
        other.force_authenticate(UserFactory())

        assert api.post(URL, body(1), format="json").status_code == 202
        assert api.post(URL, body(1), format="json").status_code == 429
        assert other.post(URL, body(1), format="json").status_code == 202

    def test_listing_batches_is_not_counted_as_submitting(
        self, api: APIClient, settings: Any
    ) -> None:
        settings.COMICGEN_THROTTLE_SUBMIT = "1/min"
        for _ in range(3):
            assert api.get(URL).status_code == 200

        assert api.post(URL, body(1), format="json").status_code == 202

    def test_refused_submits_count_too(self, api: APIClient, settings: Any) -> None:
        """Invalid bodies cost work too (and would let a client probe without limit)."""
        settings.COMICGEN_THROTTLE_SUBMIT = "2/min"
        api.post(URL, {"images": []}, format="json")
        api.post(URL, {"images": []}, format="json")

        assert api.post(URL, body(1), format="json").status_code == 429

    def test_the_default_rate_does_not_stop_ordinary_use(self, api: APIClient) -> None:
        for _ in range(10):
            assert api.post(URL, body(1), format="json").status_code == 202

    def test_a_submit_is_let_through_while_the_cache_is_down(
        self, api: APIClient, settings: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import redis
        from django.core.cache import cache

        def down(*args: Any, **kwargs: Any) -> None:
            raise redis.ConnectionError("Redis is restarting")

        settings.COMICGEN_THROTTLE_SUBMIT = "1/min"
        monkeypatch.setattr(cache, "get", down)

        assert api.post(URL, body(1), format="json").status_code == 202
        assert api.post(URL, body(1), format="json").status_code == 202


@pytest.mark.django_db
class TestHostileBodies:
    """Whatever the body, a 4xx with {"code", "detail"}, and nothing created."""

    @pytest.mark.parametrize(
        ("raw", "status", "code"),
        [
            (b"[" * 100_000 + b"]" * 100_000, 400, "too_deeply_nested"),
            (b'{"images": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "too_deeply_nested"),
            (
                b'{"images": [{"prompt": "a", "seed": ' + b"9" * 5000 + b"}]}",
                400,
                "number_too_long",
            ),
            (b'{"images": [{"prompt": "a", "seed": 1e999}]}', 400, "number_out_of_range"),
            (b'{"images": [{"prompt": "a"}], "params": {"guidance": NaN}}', 400, "invalid_json"),
            (b'{"images": [{"prompt": "\\ud800"}]}', 400, "invalid_json"),
            (b'{"images": [{"prompt": "\xff"}]}', 400, "invalid_json"),
            (b'{"title": "' + b"x" * 3_000_000 + b'"}', 413, "payload_too_large"),
        ],
    )
    def test_a_hostile_json_body_is_refused(
        self, api: APIClient, raw: bytes, status: int, code: str
    ) -> None:
        response = api.generic("POST", URL, raw, content_type="application/json")

        assert response.status_code == status
        data = response.json()
        assert data["code"] == code
        assert data["detail"]
        assert not Batch.objects.exists()

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({"images": [{"prompt": "a"}] * 100_000}, "images"),  # counted before validated
            ({"images": [{}] * 400_000}, "images"),
            ({"images": [{"prompt": "a", "seed": "9" * 999}]}, "images"),
            ({"images": [{"prompt": "a", "seed": "9" * 5000}]}, "images"),
            ({"images": [{"prompt": "a", "seed": True}]}, "images"),
            ({"images": [{"prompt": "a", "seed": 4.5}]}, "images"),
            ({"images": [{"prompt": ["a"]}]}, "images"),
            ({"images": [{"prompt": {"a": 1}}]}, "images"),
            ({"images": [{"prompt": "x" * 1_000_000}]}, "images"),
            ({"images": [{"prompt": "a"}], "params": {"guidance": "1e999"}}, "params"),
            ({"images": [{"prompt": "a"}], "params": {"guidance": "nan"}}, "params"),
            ({"images": [{"prompt": "a"}], "params": {"width": "9" * 5000}}, "params"),
            ({"images": [{"prompt": "a"}], "params": {"steps": [25]}}, "params"),
            ({"images": [{"prompt": "a"}], "params": "sdxl"}, "params"),
            ({"images": [{"prompt": "a"}], "title": ["t"]}, "title"),
            ({"images": [{"prompt": "a"}], "title": None}, "title"),
            ({"images": [{"prompt": "a"}], "priority": ["high"]}, "priority"),
            ({"images": [{"prompt": "a"}], "priority": {"high": 1}}, "priority"),
            ({"images": {"0": {"prompt": "a"}}}, "images"),
            ({"images": [{"prompt": "a"}], "style": "s" * 1_000_000}, "style"),
        ],
    )
    def test_wrong_types_and_huge_values_are_field_errors(
        self, api: APIClient, settings: Any, payload: dict[str, Any], field: str
    ) -> None:
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024  # test the fields, not the cap
        response = api.post(URL, payload, format="json")

        assert response.status_code == 400
        data = response.json()
        assert data["code"] == "invalid"
        assert field in data["fields"]
        assert len(response.content) < 10_000  # a short answer, not one entry per image
        assert not Batch.objects.exists()

    def test_a_hundred_thousand_unknown_keys_get_a_short_answer(self, api: APIClient) -> None:
        payload = {"images": [{"prompt": "a"}], **{f"k{n}": 1 for n in range(100_000)}}

        response = api.post(URL, payload, format="json")

        assert response.status_code == 400
        assert "100000 unknown fields" in str(response.json()["fields"])
        assert len(response.content) < 10_000

    @pytest.mark.parametrize("key", ["a\x00b", "naïve", "tab\there", "x" * 256])
    def test_an_unprintable_or_long_idempotency_key_is_a_400(
        self, api: APIClient, key: str
    ) -> None:
        response = api.post(URL, body(1), format="json", HTTP_IDEMPOTENCY_KEY=key)

        assert response.status_code == 400
        assert "Idempotency-Key" in response.json()["detail"]
        assert not Batch.objects.exists()

    def test_a_body_longer_than_its_content_length_is_not_read_past_it(
        self, api: APIClient, settings: Any
    ) -> None:
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
        raw = b'{"title": "' + b"x" * 5000 + b'", "images": [{"prompt": "a"}]}'

        response = api.generic(
            "POST", URL, raw, content_type="application/json", CONTENT_LENGTH="100"
        )

        assert 400 <= response.status_code < 500
        assert not Batch.objects.exists()


@pytest.mark.django_db
class TestTheAnswer:
    """The 202 is built from what the request created: no read back, no chord in the request."""

    def test_it_answers_from_the_rows_it_created_without_reading_them_back(
        self, api: APIClient, user: Any
    ) -> None:
        # The author's budget exists and the endpoint's history is cached (for a minute) once
        # anything has been priced.
        api.post(URL, body(1), format="json")
        with CaptureQueriesContext(connection) as queries:
            response = api.post(URL, body(50), format="json")

        statements = [query["sql"] for query in queries.captured_queries]
        print(f"\n{len(statements)} SQL statements for a 50-image submit:")
        for sql in statements:
            print("   ", sql[:120])
        assert response.status_code == 202
        # BEGIN, the batch (with its reservation), its 50 images in one INSERT, the budget read
        # and its conditional reserve, the ledger row, COMMIT; nothing read back.
        assert len(statements) <= 7
        assert sum('INSERT INTO "batches_imagejob"' in sql for sql in statements) == 1
        assert not [sql for sql in statements if sql.startswith("SELECT") and "imagejob" in sql]
        data = response.json()
        stored = list(ImageJob.objects.filter(batch_id=data["id"]).order_by("index"))
        assert [image["id"] for image in data["images"]] == [image.pk for image in stored]
        assert [image["seed"] for image in data["images"]] == [image.seed for image in stored]
        assert data["counts"] == {**dict.fromkeys(data["counts"], 0), "pending": 50, "total": 50}
        batch = Batch.objects.get(pk=data["id"])
        assert Decimal(data["estimated_cost"]) == batch.estimated_cost == batch.reserved
        assert data["links"]["self"] == response["Location"]
        assert data["links"]["events"] == f"/ws/batches/{batch.pk}/"
        assert check_books() == []

    def test_a_large_batch_answers_with_its_summary_not_every_image(
        self, api: APIClient, settings: Any
    ) -> None:
        count = ACCEPTED_IMAGES_INLINE + 1
        settings.COMICGEN_MAX_BATCH_IMAGES = count

        response = api.post(URL, body(count), format="json")

        assert response.status_code == 202
        data = response.json()
        assert "images" not in data
        assert data["counts"]["total"] == data["counts"]["pending"] == count
        assert ImageJob.objects.filter(batch_id=data["id"]).count() == count
        detail = api.get(data["links"]["self"]).json()
        assert len(detail["images"]) == count

    def test_a_batch_larger_than_one_insert_is_stored_whole_and_in_order(
        self, api: APIClient, settings: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Images go in one INSERT per slice, built a slice at a time: every one is stored,
        indexed in the order sent, whatever the slice boundaries."""
        count = ACCEPTED_IMAGES_INLINE + 7
        settings.COMICGEN_MAX_BATCH_IMAGES = count
        monkeypatch.setattr(services, "IMAGE_INSERT_SLICE", 10)

        response = api.post(URL, body(count), format="json")

        assert response.status_code == 202
        stored = ImageJob.objects.filter(batch_id=response.json()["id"]).order_by("index")
        assert [image.index for image in stored] == list(range(count))
        assert [image.prompt for image in stored] == [f"panel {n}" for n in range(count)]
        assert check_books() == []

    def test_a_replay_answers_like_the_first_submit(self, api: APIClient) -> None:
        first = api.post(URL, body(3), format="json", HTTP_IDEMPOTENCY_KEY="k").json()
        again = api.post(URL, body(3), format="json", HTTP_IDEMPOTENCY_KEY="k").json()

        assert again.keys() == first.keys()
        assert [image["id"] for image in again["images"]] == [i["id"] for i in first["images"]]
        assert again["counts"] == first["counts"]

    def test_it_hands_the_chord_to_a_task_on_the_high_queue_whatever_the_priority(
        self,
        api: APIClient,
        monkeypatch: pytest.MonkeyPatch,
        django_capture_on_commit_callbacks: Any,
    ) -> None:
        """The high worker's threads are kept free of long work: a normal batch's enqueue
        task does not wait for a thread that other authors' chunks hold."""
        from batches import flow, services, tasks

        sent: list[tuple[Any, dict[str, Any]]] = []

        def record(args: Any = (), kwargs: Any = None, **options: Any) -> None:
            sent.append((tuple(args or ()), {"queue": options.get("queue")}))

        monkeypatch.setattr(tasks.enqueue_batch_task, "apply_async", record)
        monkeypatch.setattr(services, "chord", lambda *_: pytest.fail("chord built in request"))
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(URL, body(25), format="json")

        batch_id = response.json()["id"]
        assert response.json()["priority"] == "normal"
        assert sent == [((batch_id,), {"queue": "high"})]
        # Marked queued until the task runs, so the sweeper does not enqueue them twice.
        assert [flow.chunk_is_owned(batch_id, n) for n in range(4)] == [True, True, True, False]

    def test_the_task_builds_the_chord_of_every_chunk(
        self, api: APIClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from batches import services, tasks

        chords: list[list[Any]] = []

        def fake_chord(header: Any) -> Any:
            chords.append([task.args for task in header.tasks])
            return lambda callback: None

        monkeypatch.setattr(services, "chord", fake_chord)
        batch_id = api.post(URL, body(25), format="json").json()["id"]

        tasks.enqueue_batch_task(batch_id)
        tasks.enqueue_batch_task(batch_id + 1000)  # a batch deleted meanwhile: nothing to do

        assert chords == [[(batch_id, 0), (batch_id, 1), (batch_id, 2)]]
