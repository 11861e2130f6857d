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

import re

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from batches import flow, services
from comicgen.parsers import JSONBodyError, parse_json, read_capped

# Ids are PostgreSQL bigints; chunk and attempt numbers are small. 18 digits always fit.
_PATH_NUMBER = re.compile(r"[0-9]{1,18}")


def error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status)


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
    if not flow.webhook_token_matches(batch, chunk, image, attempt_no, token):
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
    problem = services.webhook_payload_problem(payload)
    if problem:
        return error("invalid_payload", problem, 400)

    if not services.receive_webhook(batch, chunk, image, attempt_no, token, payload):
        return error("not_found", "Unknown webhook.", 404)
    return JsonResponse({"ok": True})
