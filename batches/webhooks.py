"""RunPod's webhooks: the URL each attempt gives RunPod, the view RunPod POSTs a finished job's
status object to, what is done with it, and the mailbox that hands results to the chunk.

RunPod signs nothing, so the URL carries the proof: an HMAC of the batch, chunk, image and
attempt under SECRET_KEY (webhook_token). Anyone may call this URL, so the view does the
cheap, safe things first and only then the expensive ones:

1. the path's numbers are checked as text (no int() of a thousand digits, nothing a database
   column cannot hold);
2. the token is compared, in constant time over UTF-8 bytes (any characters; compare_digest
   raises TypeError on a non-ASCII str), before a byte of the body is read;
3. the body is read up to COMICGEN_WEBHOOK_MAX_BYTES, refused by its Content-Length and by
   what actually arrives (a chunked body declares none);
4. it is parsed with comicgen.parsers' bounds (nesting, digits, UTF-8) and its shape checked
   (an object with a job `id` and one of RunPod's statuses).

Every refusal is a 4xx `{"code", "detail"}`. Only then does receive_webhook run.

Served as ASGI (uvicorn, the stack's web server), the webhook is an ASGI application of its own,
asgi_webhook, outside Django's request handling (it says why); runpod_webhook is the same steps
as a Django view, for the test client and WSGI. Both are built from check_before_body and
answer_body, so they answer alike (tests/batches/test_webhook_api.py runs every case on both).

The mailbox: a webhook's result waits in Redis under its job id and the chunk following that
job is woken (a Redis list it blocks on), so a chunk sleeps instead of polling. A cancel or a
retry wakes a chunk the same way, without a result.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, connections
from django.http import HttpRequest, JsonResponse
from django.http.request import split_domain_port, validate_host
from django.views.decorators.csrf import csrf_exempt

from batches import flow, limiter
from batches.models import IMAGE_TERMINAL, ImageJob
from batches.runpod import ACTIVE_STATUSES, TERMINAL_STATUSES
from budgets import services as budget_services
from comicgen.db import retry_once_on_a_lost_connection
from comicgen.log_redaction import redact_webhook_tokens
from comicgen.parsers import ClientGone, JSONBodyError, parse_json, read_capped, receive_capped

logger = logging.getLogger(__name__)

CHARGE_LATE_JOB_TASK = "batches.tasks.charge_late_job_task"
# Ids are PostgreSQL bigints; chunk and attempt numbers are small. 18 digits always fit.
_PATH_NUMBER = re.compile(r"[0-9]{1,18}")
RESULT_TTL_SECONDS = 1800  # RunPod keeps results 30 minutes; so do we
# RunPod job ids are UUIDs with a suffix (`...-u1`); ImageJob.runpod_job_id holds 100 characters.
_JOB_ID = re.compile(r"[\x21-\x7e]{1,100}")
RUNPOD_STATUSES = ACTIVE_STATUSES | TERMINAL_STATUSES


# --- the URL and its token -------------------------------------------------------------------


def webhook_token(batch_id: int, chunk_no: int, image_id: int, attempt: int) -> str:
    """The unguessable part of an attempt's webhook URL (RunPod signs nothing)."""
    message = f"webhook:{batch_id}:{chunk_no}:{image_id}:{attempt}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()[:32]


def webhook_token_matches(
    batch_id: int, chunk_no: int, image_id: int, attempt: int, given: str
) -> bool:
    """Whether a webhook URL's token is this attempt's: constant time, over bytes, whatever
    characters the URL carried (compare_digest refuses a non-ASCII str)."""
    expected = webhook_token(batch_id, chunk_no, image_id, attempt)
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def webhook_url(batch_id: int, chunk_no: int, image_id: int, attempt: int) -> str | None:
    """Where RunPod reports an attempt's end. The image and attempt in the URL let a chunk
    adopt a job whose id it never recorded (its task died while /run was answering)."""
    if not settings.COMICGEN_PUBLIC_URL:
        return None
    token = webhook_token(batch_id, chunk_no, image_id, attempt)
    return (
        f"{settings.COMICGEN_PUBLIC_URL}/api/v1/runpod/webhook/"
        f"{batch_id}/{chunk_no}/{image_id}/{attempt}/{token}/"
    )


# --- the view ---------------------------------------------------------------------------------

# The webhook's path, as the URL pattern in batches/api/urls.py and the ASGI route match it.
WEBHOOK_PATH = re.compile(
    r"/api/v1/runpod/webhook/(?P<batch_id>[^/]+)/(?P<chunk_no>[^/]+)/(?P<image_id>[^/]+)/"
    r"(?P<attempt>[^/]+)/(?P<token>[^/]+)/"
)


class Answer(NamedTuple):
    """What a webhook is answered: a status and a JSON object."""

    status: int
    body: dict[str, Any]


class Attempt(NamedTuple):
    """The attempt a webhook's path names, its numbers and its token checked."""

    batch_id: int
    chunk_no: int
    image_id: int
    attempt: int
    token: str


def refused(code: str, detail: str, status: int) -> Answer:
    return Answer(status, {"code": code, "detail": detail})


def check_before_body(method: str, parts: dict[str, str]) -> Attempt | Answer:
    """Steps 1 and 2 (the module docstring): POST only, the path's numbers, the token. The
    attempt the path names, or the refusal."""
    if method != "POST":
        return refused("method_not_allowed", "Webhooks are POSTed.", 405)
    numbers = (parts["batch_id"], parts["chunk_no"], parts["image_id"], parts["attempt"])
    if not all(_PATH_NUMBER.fullmatch(number) for number in numbers):
        return refused("not_found", "Unknown webhook.", 404)
    batch, chunk, image, attempt = (int(number) for number in numbers)
    if not webhook_token_matches(batch, chunk, image, attempt, parts["token"]):
        return refused("forbidden", "The webhook token does not match this job attempt.", 403)
    return Attempt(batch, chunk, image, attempt, parts["token"])


def answer_body(attempt: Attempt, raw: bytes) -> Answer:
    """Step 4 and receive_webhook, for a body read within the cap. An error while handling it
    is logged and answered 500 in JSON (RunPod tries a webhook again after one)."""
    try:
        payload = parse_json(raw)
    except JSONBodyError as error:
        return refused(error.code, error.detail, error.status)
    problem = webhook_payload_problem(payload)
    if problem:
        return refused("invalid_payload", problem, 400)
    try:
        known = receive_webhook(*attempt, payload)
    except Exception:
        logger.exception("webhook for image %s attempt %s failed", attempt.image_id,
                         attempt.attempt)  # fmt: skip
        return refused("server_error", "The webhook could not be handled; RunPod retries it.", 500)
    if not known:
        return refused("not_found", "Unknown webhook.", 404)
    return Answer(200, {"ok": True})


def json_response(answer: Answer) -> JsonResponse:
    response = JsonResponse(answer.body, status=answer.status)
    if answer.status == 405:
        response["Allow"] = "POST"
    return response


@csrf_exempt
def runpod_webhook(
    request: HttpRequest, batch_id: str, chunk_no: str, image_id: str, attempt: str, token: str
) -> JsonResponse:
    """The webhook through Django (the test client, a WSGI server). Served as ASGI, it goes to
    asgi_webhook instead, and both answer the same."""
    parts = {"batch_id": batch_id, "chunk_no": chunk_no, "image_id": image_id,
             "attempt": attempt, "token": token}  # fmt: skip
    checked = check_before_body(request.method or "", parts)
    if isinstance(checked, Answer):
        return json_response(checked)
    try:
        raw = read_capped(
            request,
            settings.COMICGEN_WEBHOOK_MAX_BYTES,
            declared_length=request.META.get("CONTENT_LENGTH"),
        )
    except JSONBodyError as error:
        return json_response(refused(error.code, error.detail, error.status))
    return json_response(answer_body(checked, raw))


# The threads the webhook's database work runs in, apart from the event loop's default pool
# (which also resolves host names for the channel layer's connections): webhooks waiting on the
# database must not hold up a WebSocket connecting. Eight per process: each uses one database
# connection at a time, well within COMICGEN_DB_POOL_SIZE.
_webhook_threads = ThreadPoolExecutor(8, thread_name_prefix="webhook")


async def asgi_webhook(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The webhook as an ASGI application of its own (comicgen/asgi.py routes WEBHOOK_PATH
    here), answering as runpod_webhook does.

    Every finished job sends one, so it is the web's busiest request. Through Django's ASGI
    handler, a request gets a thread of its own and each of Django's middleware classes hops
    between the event loop and that thread, before and after the view: measured with py-spy at
    latency 0, those hops were over half of the web processes' CPU, the webhook's own work a
    tenth. None of that middleware does anything for a machine's POST of JSON (no session, no
    user, no CSRF, no page). Here the path, the token and the body are checked on the event
    loop, and the rest runs in one hop to a thread of its own pool.

    What Django's handling did that still matters is done here too: the host is checked
    against ALLOWED_HOSTS, database connections are handed back (to the pool) after the work,
    and a refusal is logged without the token. Django's SECURE_SSL_REDIRECT does not apply
    here: RunPod is given COMICGEN_PUBLIC_URL's https URL, and only a caller inside the
    deployment reaches the web server's plain-HTTP port."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1")
               for name, value in scope.get("headers", [])}  # fmt: skip
    answer = await _asgi_answer(scope, receive, headers)
    if answer is None:  # the client went away before its body had arrived
        return
    if answer.status >= 400:
        # As Django logs a refused request: the token left out (it is the proof), and control
        # characters escaped (the path is percent-decoded, so a %0A would start a forged line).
        path = scope["path"].encode("unicode_escape").decode("ascii")
        logger.warning("webhook refused %s %s: %s", answer.status, answer.body.get("code"),
                       redact_webhook_tokens(path))  # fmt: skip
    body = json.dumps(answer.body).encode()
    response_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
    ]
    if answer.status == 405:
        response_headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": answer.status,
                "headers": response_headers})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def _asgi_answer(
    scope: dict[str, Any], receive: Any, headers: dict[str, str]
) -> Answer | None:
    """The answer to a webhook served as ASGI (None when its client went away): the host, the
    path's numbers and token, the capped body, then the body's handling in a thread."""
    match = WEBHOOK_PATH.fullmatch(scope["path"])
    assert match is not None, "comicgen/asgi.py routes only WEBHOOK_PATH here"
    if not host_allowed(request_host(scope, headers)):
        return refused("bad_host", "This host name is not served here.", 400)
    checked = check_before_body(scope.get("method", "").upper(), match.groupdict())
    if isinstance(checked, Answer):
        return checked
    try:
        raw = await receive_capped(
            receive, settings.COMICGEN_WEBHOOK_MAX_BYTES, headers.get("content-length")
        )
    except ClientGone:
        return None
    except JSONBodyError as error:
        return refused(error.code, error.detail, error.status)
    return await sync_to_async(
        answer_body_in_a_thread, thread_sensitive=False, executor=_webhook_threads
    )(checked, raw)


def answer_body_in_a_thread(attempt: Attempt, raw: bytes) -> Answer:
    """answer_body in a thread of _webhook_threads, its database connections closed after it
    (handed back to the pool, which checks one before lending it again): the thread outlives
    the request, and a connection kept in it would outlive what settings allow it."""
    try:
        return answer_body(attempt, raw)
    finally:
        connections.close_all()


def request_host(scope: dict[str, Any], headers: dict[str, str]) -> str:
    """The host a request names, as Django's ASGIRequest reads it: the Host header, else the
    server's own name and port."""
    if "host" in headers:
        return headers["host"]
    server = scope.get("server") or ("", None)
    return f"{server[0]}:{server[1]}" if server[1] is not None else str(server[0])


def host_allowed(host: str) -> bool:
    """The Host header against ALLOWED_HOSTS, as Django's HttpRequest.get_host checks it."""
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed)


# --- what is done with a report ---------------------------------------------------------------


def receive_webhook(
    batch_id: int, chunk_no: int, image_id: int, attempt: int, token: str, payload: Any
) -> bool:
    """Accept a RunPod webhook for one image attempt. False when the token is wrong or the
    payload is not a job status; True otherwise, whatever is done with it:

    - a report on the job the attempt recorded is kept for its chunk, which is woken;
    - a report on a job for an attempt whose /run answer was lost is noted on the image: the
      chunk adopts that job once RunPod's own /status confirms it (a webhook proves nothing,
      anyone holding its URL can post one);
    - a report on an attempt that already ended without knowing its job (charged nothing after
      the grace) means RunPod did run it: a task charges it, once /status confirms it.
    Anything else (another job id, a finished image) is acknowledged and dropped.
    """
    if not webhook_token_matches(batch_id, chunk_no, image_id, attempt, token):
        return False
    if webhook_payload_problem(payload) is not None:
        return False
    job_id, status = payload["id"], payload["status"]
    # A webhook is RunPod's one word on a job whose /run answer may be lost: a dropped database
    # connection gets one reconnect rather than a 500 (RunPod tries a webhook three times only).
    image = retry_once_on_a_lost_connection(lambda: attempt_of(batch_id, image_id))
    if image is None:  # deleted with its batch: nothing left to do
        return True
    noted = False
    if image.attempts == attempt and image.status not in IMAGE_TERMINAL and not image.runpod_job_id:
        # The first report for an attempt with no job id: either the chunk has not written the
        # id /run returned yet (a fast job reports within milliseconds), or the /run answer was
        # lost. The job is noted on the image (to be adopted, once /status confirms it, if the
        # answer was lost), and its result waits in the mailbox under its id: the chunk takes
        # it once it has recorded that id, rather than polling /status for a job that already
        # said it ended. Only the first report is kept, so a flood naming other jobs stores
        # nothing more.
        noted = retry_once_on_a_lost_connection(
            lambda: ImageJob.objects.note_webhook_job(image_id, attempt, job_id)
        )
        if not noted:
            # The chunk wrote the job id between the read above and the note (or another report
            # was noted first): what the image says now decides. Without this read, a result
            # arriving in that window waited for the next /status poll.
            image = retry_once_on_a_lost_connection(lambda: attempt_of(batch_id, image_id))
            if image is None:
                return True
    if image.attempts == attempt and image.status not in IMAGE_TERMINAL:
        if job_id == image.runpod_job_id:
            deliver_result(batch_id, chunk_no, job_id, payload)
            # The GPU is free the moment the job ends: give its slot to waiting work now
            # rather than after the chunk has stored the image.
            if status in TERMINAL_STATUSES:
                limiter.release_slots([image_id])
        elif noted:
            deliver_result(batch_id, chunk_no, job_id, payload)
        return True
    if status in TERMINAL_STATUSES and budget_services.attempt_charged_nothing(image_id, attempt):
        queue_late_charge(image_id, attempt, job_id)
    return True


class AttemptState(NamedTuple):
    """What a webhook needs to know of its image."""

    attempts: int
    status: str
    runpod_job_id: str


def attempt_of(batch_id: int, image_id: int) -> AttemptState | None:
    """The image's attempt, status and recorded job, or None when it is gone. One statement of
    plain SQL: every finished job's webhook reads it, and building the same query through the
    ORM cost the web process more CPU than the rest of the webhook did."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT attempts, status, runpod_job_id FROM {ImageJob._meta.db_table} "
            f"WHERE id = %s AND batch_id = %s",
            [image_id, batch_id],
        )
        row = cursor.fetchone()
    return AttemptState(*row) if row else None


def webhook_payload_problem(payload: Any) -> str | None:
    """What is wrong with a webhook's job status object, in words for the 400, or None when
    its shape is acceptable (its figures are still not trusted: see receive_webhook)."""
    if not isinstance(payload, dict):
        return "The body must be a JSON object: a RunPod job status."
    job_id = payload.get("id")
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        return "`id` must be the RunPod job id: 1 to 100 printable ASCII characters."
    status = payload.get("status")
    if not isinstance(status, str) or status not in RUNPOD_STATUSES:
        return "`status` must be one of " + ", ".join(sorted(RUNPOD_STATUSES)) + "."
    return None


def queue_late_charge(image_id: int, attempt: int, job_id: str) -> None:
    """Have a worker charge a job that reported after its attempt ended charged nothing (the
    task asks RunPod's /status first). Sent by name: the tasks module imports the chunk engine,
    which imports this module."""
    flow.send_by_name(CHARGE_LATE_JOB_TASK, (image_id, attempt, job_id))


# --- the mailbox --------------------------------------------------------------------------------


def wake_key(batch_id: int, chunk_no: int) -> str:
    """The Redis list a chunk sleeps on: webhooks, cancels and the limiter push to it."""
    return f"{flow.PREFIX}:chunk:{batch_id}:{chunk_no}:wake"


def deliver_result(batch_id: int, chunk_no: int, job_id: str, payload: dict[str, Any]) -> None:
    """Keep a webhook's result for the chunk following that job, and wake the chunk. Called
    only for a job the chunk recorded, so at most one result waits per attempt in flight."""
    wake = wake_key(batch_id, chunk_no)
    pipe = flow.get_redis().pipeline(transaction=False)
    pipe.set(f"{flow.PREFIX}:result:{job_id}", json.dumps(payload), ex=RESULT_TTL_SECONDS)
    pipe.rpush(wake, job_id)
    pipe.expire(wake, RESULT_TTL_SECONDS)
    pipe.execute()


def wake_chunk(batch_id: int, chunk_no: int) -> None:
    """Interrupt a chunk's wait (a cancel, a retry) without a result."""
    flow.get_redis().rpush(wake_key(batch_id, chunk_no), "")


def take_results(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Webhook results stored for these jobs, removed as they are taken."""
    if not job_ids:
        return {}
    keys = [f"{flow.PREFIX}:result:{job_id}" for job_id in job_ids]
    client = flow.get_redis()
    values = client.mget(keys)
    found = {job_id: json.loads(v) for job_id, v in zip(job_ids, values, strict=True) if v}
    if found:
        client.delete(*(f"{flow.PREFIX}:result:{job_id}" for job_id in found))
    return found


def wait_for_wake(batch_id: int, chunk_no: int, timeout: float) -> None:
    """Sleep until a webhook or a cancel wakes the chunk, or `timeout` seconds pass."""
    client = flow.get_redis()
    key = wake_key(batch_id, chunk_no)
    if timeout > 0 and client.blpop([key], timeout=max(timeout, 0.01)):
        # Drain the rest: one pass of the loop handles every result that arrived.
        client.delete(key)
