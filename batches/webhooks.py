"""RunPod's webhook: it POSTs a finished job's status object, unsigned, to the URL we gave it.

RunPod signs nothing, so the URL carries the proof: an HMAC of the batch, chunk, image and
attempt under SECRET_KEY (batches.flow.webhook_token). Anyone may call this URL, so it does the
cheap, safe things first and only then the expensive ones:

1. the path's numbers are checked as text (no int() of a thousand digits, nothing a database
   column cannot hold);
2. the token is compared, in constant time over UTF-8 bytes (any characters; compare_digest
   raises TypeError on a non-ASCII str), before a byte of the body is read;
3. the body is read up to COMICGEN_WEBHOOK_MAX_BYTES, refused by its Content-Length and by
   what actually arrives (a chunked body declares none);
4. it is parsed with comicgen.parsers' bounds (nesting, digits, UTF-8) and its shape checked
   (an object with a job `id` and one of RunPod's statuses).

Every refusal is a 4xx `{"code", "detail"}`. Only then does services.receive_webhook run.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from batches import flow, services
from batches.runpod import ACTIVE_STATUSES, TERMINAL_STATUSES
from comicgen.parsers import JSONBodyError, parse_json, read_capped

# Ids are PostgreSQL bigints; chunk and attempt numbers are small. 18 digits always fit.
_PATH_NUMBER = re.compile(r"[0-9]{1,18}")
# RunPod job ids are UUIDs with a suffix (`...-u1`); ImageJob.runpod_job_id holds 100 characters.
_JOB_ID = re.compile(r"[\x21-\x7e]{1,100}")
RUNPOD_STATUSES = ACTIVE_STATUSES | TERMINAL_STATUSES


def error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status)


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison over bytes, whatever characters the URL carried."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def payload_problem(payload: Any) -> str | None:
    """What is wrong with a job status object, or None when its shape is acceptable."""
    if not isinstance(payload, dict):
        return "The body must be a JSON object: a RunPod job status."
    job_id = payload.get("id")
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        return "`id` must be the RunPod job id: 1 to 100 printable ASCII characters."
    status = payload.get("status")
    if not isinstance(status, str) or status not in RUNPOD_STATUSES:
        return "`status` must be one of " + ", ".join(sorted(RUNPOD_STATUSES)) + "."
    return None


@csrf_exempt
def runpod_webhook(
    request: HttpRequest, batch_id: str, chunk_no: str, image_id: str, attempt: str, token: str
) -> JsonResponse:
    if request.method != "POST":
        response = error("method_not_allowed", "Webhooks are POSTed.", 405)
        response["Allow"] = "POST"
        return response
    numbers = (batch_id, chunk_no, image_id, attempt)
    if not all(_PATH_NUMBER.fullmatch(number) for number in numbers):
        return error("not_found", "Unknown webhook.", 404)
    batch, chunk, image, attempt_no = (int(number) for number in numbers)
    if not token_matches(token, flow.webhook_token(batch, chunk, image, attempt_no)):
        return error("forbidden", "The webhook token does not match this job attempt.", 403)

    try:
        raw = read_capped(
            request,
            settings.COMICGEN_WEBHOOK_MAX_BYTES,
            declared_length=request.META.get("CONTENT_LENGTH"),
        )
        payload = parse_json(raw)
    except JSONBodyError as refused:
        return error(refused.code, refused.detail, refused.status)
    problem = payload_problem(payload)
    if problem:
        return error("invalid_payload", problem, 400)

    if not services.receive_webhook(batch, chunk, image, attempt_no, token, payload):
        return error("not_found", "Unknown webhook.", 404)
    return JsonResponse({"ok": True})
