"""POST /api/v1/runpod/webhook/<batch>/<chunk>/<image>/<attempt>/<token>/: RunPod's report of a
finished job. Unsigned, so open to anyone: the token is checked before the body is read, the
body is capped and parsed with bounds, and anything malformed is a 4xx, never a 500.

Every test that takes `client` runs twice: through Django (the test client, as a WSGI server
would serve it) and through comicgen's ASGI application, where the webhook has an ASGI
application of its own (batches.webhooks.asgi_webhook): both must answer alike."""

from __future__ import annotations

import io
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client, RequestFactory
from django.urls import resolve

from batches import flow, webhooks
from batches.models import Batch, ImageJob
from batches.webhooks import runpod_webhook
from tests.factories import UserFactory
from tests.support.asgi_http import AsgiHttpClient

BATCH, CHUNK, IMAGE, ATTEMPT = 7, 0, 70, 1


def url(batch: Any = BATCH, chunk: Any = CHUNK, image: Any = IMAGE, attempt: Any = ATTEMPT,
        token: str | None = None) -> str:  # fmt: skip
    if token is None:
        token = webhooks.webhook_token(int(batch), int(chunk), int(image), int(attempt))
    return f"/api/v1/runpod/webhook/{batch}/{chunk}/{image}/{attempt}/{token}/"


def job_status(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "6a1c39f2-4b7e-4c1f-9d55-0e2a7f3b9c11-u1",
        "status": "COMPLETED",
        "delayTime": 120,
        "executionTime": 900,
        "output": {"images": ["data:image/png;base64,iVBORw0KGgo="], "seed": 42},
        **overrides,
    }


def test_the_url_runpod_is_given_is_the_one_both_entries_serve(settings: Any) -> None:
    """The path is written three times (webhooks.webhook_url builds it, batches/api/urls.py
    routes it to the view, webhooks.WEBHOOK_PATH to the ASGI application): if the last two
    drifted apart, webhooks would quietly fall back to the slower Django path."""
    settings.COMICGEN_PUBLIC_URL = "https://comics.example"
    given = webhooks.webhook_url(BATCH, CHUNK, IMAGE, ATTEMPT)
    assert given is not None
    path = urlsplit(given).path

    assert webhooks.WEBHOOK_PATH.fullmatch(path)
    assert resolve(path).func is runpod_webhook


@pytest.fixture(params=["django", "asgi"])
def client(request: pytest.FixtureRequest) -> Any:
    """Django's test client, or requests to the ASGI application as uvicorn sends them."""
    return Client() if request.param == "django" else AsgiHttpClient()


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """What reached webhooks.receive_webhook (accepted as a known attempt)."""
    calls: list[tuple[Any, ...]] = []

    def receive(*args: Any) -> bool:
        calls.append(args)
        return True

    monkeypatch.setattr(webhooks, "receive_webhook", receive)
    return calls


class UnreadableBody(io.RawIOBase):
    """A request body that fails the test if anything reads it."""

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body was read")

    readline = read  # type: ignore[assignment]


def post_unread(client: Any, path: str, content_length: int) -> Any:
    """POST a request whose body must not be read."""
    if isinstance(client, AsgiHttpClient):
        return client.send("POST", path, None, length=content_length)
    request = RequestFactory().post(path, data=b"{}", content_type="application/json")
    request.META["CONTENT_LENGTH"] = str(content_length)
    request._stream = UnreadableBody()  # type: ignore[assignment]
    return runpod_webhook(request, *path_parts(path))


def path_parts(path: str) -> list[str]:
    """batch, chunk, image, attempt, token: as the URL resolver passes them."""
    return path.strip("/").split("/")[-5:]


def post_raw(client: Any, path: str, raw: bytes) -> Any:
    return client.generic("POST", path, raw, content_type="application/json")


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content[:500]
    data = json.loads(response.content)
    assert set(data) == {"code", "detail"}
    assert data["detail"]
    if code:
        assert data["code"] == code
    return data


# the token


def test_it_hands_a_valid_report_to_the_service_with_the_attempt_and_token(
    client: Any, received: list[tuple[Any, ...]]
) -> None:
    payload = job_status()
    response = client.post(url(), payload, content_type="application/json")

    assert response.status_code == 200
    assert response.json() == {"ok": True}
    token = webhooks.webhook_token(BATCH, CHUNK, IMAGE, ATTEMPT)
    assert received == [(BATCH, CHUNK, IMAGE, ATTEMPT, token, payload)]


@pytest.mark.parametrize(
    "token",
    [
        "0" * 32,
        "nope",
        "é" * 32,  # compare_digest raises TypeError on a non-ASCII str
        "%F0%9F%92%A5" * 8,  # an emoji, percent-encoded
        "%00" * 32,
        "x" * 5000,
    ],
)
def test_it_refuses_a_forged_webhook_token(
    client: Any, received: list[tuple[Any, ...]], token: str
) -> None:
    response = client.post(url(token=token), job_status(), content_type="application/json")

    assert_error(response, 403, "forbidden")
    assert received == []


def test_a_token_is_good_for_its_own_attempt_only(
    client: Any, received: list[tuple[Any, ...]]
) -> None:
    token = webhooks.webhook_token(BATCH, CHUNK, IMAGE, ATTEMPT)
    for batch, chunk, image, attempt in [
        (BATCH + 1, CHUNK, IMAGE, ATTEMPT),  # another (e.g. another user's) batch
        (BATCH, CHUNK + 1, IMAGE, ATTEMPT),
        (BATCH, CHUNK, IMAGE + 1, ATTEMPT),
        (BATCH, CHUNK, IMAGE, ATTEMPT + 1),  # a newer attempt of the same image
    ]:
        response = client.post(
            url(batch, chunk, image, attempt, token=token),
            job_status(),
            content_type="application/json",
        )
        assert_error(response, 403, "forbidden")
    assert received == []


def test_a_forged_token_is_refused_before_the_body_is_read(
    client: Any, received: list[tuple[Any, ...]]
) -> None:
    response = post_unread(client, url(token="f" * 32), content_length=60 * 1024 * 1024)

    assert_error(response, 403, "forbidden")
    assert received == []


@pytest.mark.parametrize(
    "path",
    [
        url(batch="9" * 23, token="0" * 32),
        url(batch="9" * 5000, token="0" * 32),  # int() of this many digits raises
        url(image="99999999999999999999", token="0" * 32),
        url(attempt="-1", token="0" * 32),
        url(chunk="１", token="0" * 32),  # a full-width digit
        url(batch="1e3", token="0" * 32),
    ],
)
def test_odd_path_numbers_are_a_json_404(
    client: Any, received: list[tuple[Any, ...]], path: str
) -> None:
    assert_error(client.post(path, job_status(), content_type="application/json"), 404)
    assert received == []


def test_it_takes_post_only(client: Any, received: list[tuple[Any, ...]]) -> None:
    response = client.get(url())

    assert_error(response, 405, "method_not_allowed")
    assert response["Allow"] == "POST"
    assert received == []


# the body's size


def test_an_oversized_content_length_is_refused_without_reading_the_body(
    client: Any, received: list[tuple[Any, ...]], settings: Any
) -> None:
    settings.COMICGEN_WEBHOOK_MAX_BYTES = 64 * 1024
    response = post_unread(client, url(), content_length=64 * 1024 + 1)

    assert_error(response, 413, "payload_too_large")
    assert received == []


def test_a_body_longer_than_declared_is_cut_at_the_cap(
    client: Any, received: list[tuple[Any, ...]], settings: Any
) -> None:
    """A chunked body declares no length: what arrives is counted."""
    settings.COMICGEN_WEBHOOK_MAX_BYTES = 64 * 1024
    body = json.dumps(job_status(output={"images": ["A" * 200_000]})).encode()
    response: Any
    if isinstance(client, AsgiHttpClient):
        pieces = [body[start : start + 16 * 1024] for start in range(0, len(body), 16 * 1024)]
        response = client.send("POST", url(), pieces, length=None)
        # Refused at the first message past the cap, the rest never taken.
        assert client.pieces_read == 5
    else:
        request = RequestFactory().post(url(), data=b"{}", content_type="application/json")
        del request.META["CONTENT_LENGTH"]
        request._stream = io.BytesIO(body)
        response = runpod_webhook(request, *path_parts(url()))

    assert_error(response, 413, "payload_too_large")
    assert received == []


def test_a_body_at_the_cap_is_accepted(
    client: Any, received: list[tuple[Any, ...]], settings: Any
) -> None:
    settings.COMICGEN_WEBHOOK_MAX_BYTES = 64 * 1024
    filler = json.dumps(job_status(output={"images": [""]}))
    padding = 64 * 1024 - len(filler)
    raw = json.dumps(job_status(output={"images": ["A" * padding]})).encode()
    assert len(raw) == 64 * 1024

    assert post_raw(client, url(), raw).status_code == 200
    assert len(received) == 1


def test_the_default_cap_holds_the_largest_panel_the_api_allows(settings: Any) -> None:
    worst_png = 2048 * (2048 * 3 + 1)  # incompressible RGB rows, each with its filter byte
    assert worst_png * 4 / 3 + 4096 < settings.COMICGEN_WEBHOOK_MAX_BYTES


# the body's content


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "too_deeply_nested"),
        (
            b'{"id": "j", "status": "COMPLETED", "output": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
            "too_deeply_nested",
        ),
        (
            b'{"id": "j", "status": "COMPLETED", "executionTime": ' + b"9" * 5000 + b"}",
            "number_too_long",
        ),
        (b'{"id": "j", "status": "COMPLETED", "executionTime": 1e999}', "number_out_of_range"),
        (b'{"id": "j", "status": "COMPLETED", "executionTime": NaN}', "invalid_json"),
        (b'{"id": "j", "status": "COMPLETED", "error": "\xff\xfe"}', "invalid_json"),
        (b'{"id": "j", "status": "COMPLETED", "error": "\\ud800"}', "invalid_json"),
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"null", "invalid_payload"),
        (b"[]", "invalid_payload"),
        (b'"COMPLETED"', "invalid_payload"),
        (b"{}", "invalid_payload"),
        (b'{"id": 12, "status": "COMPLETED"}', "invalid_payload"),
        (b'{"id": "", "status": "COMPLETED"}', "invalid_payload"),
        (b'{"id": "has space", "status": "COMPLETED"}', "invalid_payload"),
        (b'{"id": "' + b"j" * 101 + b'", "status": "COMPLETED"}', "invalid_payload"),
        (b'{"id": ["j"], "status": "COMPLETED"}', "invalid_payload"),
        (b'{"id": "j"}', "invalid_payload"),
        (b'{"id": "j", "status": "DONE"}', "invalid_payload"),
        (b'{"id": "j", "status": ["COMPLETED"]}', "invalid_payload"),
        (b'{"id": "j", "status": {"x": 1}}', "invalid_payload"),
    ],
)
def test_a_malformed_body_with_a_good_token_is_a_400(
    client: Any, received: list[tuple[Any, ...]], raw: bytes, code: str
) -> None:
    assert_error(post_raw(client, url(), raw), 400, code)
    assert received == []


def test_a_huge_string_or_array_within_the_cap_is_handed_on(
    client: Any, received: list[tuple[Any, ...]]
) -> None:
    """Size alone is the cap's business; the chunk judges the output's content."""
    raw = json.dumps(job_status(output={"images": ["x" * 1_000_000] + [0] * 100_000})).encode()

    assert post_raw(client, url(), raw).status_code == 200
    assert len(received) == 1


@pytest.mark.parametrize("status", ["IN_QUEUE", "IN_PROGRESS", "FAILED", "CANCELLED", "TIMED_OUT"])
def test_every_runpod_status_is_accepted(
    client: Any, received: list[tuple[Any, ...]], status: str
) -> None:
    response = client.post(url(), job_status(status=status), content_type="application/json")

    assert response.status_code == 200
    assert received[0][5]["status"] == status


# Transactional: through ASGI, the service runs in another thread, with its own connection.
@pytest.mark.django_db(transaction=True)
def test_the_real_service_takes_a_valid_report_and_a_forged_one_stores_nothing(
    client: Any,
) -> None:
    """Without the spy, on real PostgreSQL and Redis."""
    batch = Batch.objects.create(user=UserFactory(), title="webhook", status="running")
    image = ImageJob.objects.create(
        batch=batch, index=0, prompt="p", seed=1, params={}, attempts=1, status="submitted"
    )
    good = url(batch.pk, 0, image.pk, 1)
    forged = url(batch.pk, 0, image.pk, 1, token=webhooks.webhook_token(batch.pk, 0, image.pk, 2))
    redis = flow.get_redis()
    result_key = f"{flow.PREFIX}:result:{job_status()['id']}"
    redis.delete(result_key)  # another test's, were one to post the same job through the service

    def stored() -> list[Any]:
        """Everything a webhook for this attempt can leave: its result, the chunk's keys (its
        doorbell) and the job noted on the image. Not every key under the prefix: the session's
        stack, when an integration test started it, keeps writing its own limiter state, metrics
        and heartbeats there between these lines."""
        keys = [*redis.scan_iter(f"{flow.PREFIX}:chunk:{batch.pk}:*")]
        keys += [*redis.scan_iter(result_key)]
        noted = ImageJob.objects.filter(pk=image.pk).exclude(webhook_job_id="").exists()
        return keys + (["the job noted on the image"] if noted else [])

    assert_error(client.post(forged, job_status(), content_type="application/json"), 403)
    assert stored() == []

    response = client.post(good, job_status(), content_type="application/json")
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert stored() != []
    assert redis.exists(result_key)


# served as ASGI: what Django's request handling did there


def test_through_asgi_a_host_not_allowed_is_refused(received: list[tuple[Any, ...]]) -> None:
    response = AsgiHttpClient(host="attacker.example").post(url(), job_status())

    assert_error(response, 400, "bad_host")
    assert received == []


def test_an_error_in_the_service_is_a_json_500_and_logged(
    client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> bool:
        raise RuntimeError("the service broke")

    monkeypatch.setattr(webhooks, "receive_webhook", broken)
    with caplog.at_level(logging.ERROR, logger="batches.webhooks"):
        response = client.post(url(), job_status(), content_type="application/json")

    assert_error(response, 500, "server_error")
    assert "webhook for image 70 attempt 1 failed" in caplog.text
    assert "the service broke" in caplog.text


def test_through_asgi_a_request_without_a_host_header_is_checked_by_the_servers_name(
    received: list[tuple[Any, ...]],
) -> None:
    """As Django reads an HTTP/1.0 request: the server's own name and port."""
    client = AsgiHttpClient(send_host_header=False)

    assert client.post(url(), job_status()).status_code == 200
    assert len(received) == 1


def test_through_asgi_the_method_is_read_as_django_reads_it(
    received: list[tuple[Any, ...]],
) -> None:
    response = AsgiHttpClient().send("post", url(), [json.dumps(job_status()).encode()])

    assert response.status_code == 200
    assert len(received) == 1
