"""RunPod's webhook: it POSTs a finished job's status object, unsigned, to the URL we gave it."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from batches import services

# A job's output carries its images as base64; allow several large PNGs.
MAX_WEBHOOK_BYTES = 64 * 1024 * 1024


@csrf_exempt
@require_POST
def runpod_webhook(
    request: HttpRequest, batch_id: int, chunk_no: int, image_id: int, attempt: int, token: str
) -> JsonResponse:
    length = int(request.headers.get("Content-Length") or 0)
    if length > MAX_WEBHOOK_BYTES:
        return JsonResponse({"code": "too_large", "detail": "Payload too large."}, status=413)
    try:
        # Read the stream itself: request.body would apply the small form-upload size limit.
        payload = json.loads(request.read(MAX_WEBHOOK_BYTES + 1))
    except ValueError:
        return JsonResponse({"code": "invalid", "detail": "Body is not JSON."}, status=400)
    if not services.receive_webhook(batch_id, chunk_no, image_id, attempt, token, payload):
        return JsonResponse({"code": "not_found", "detail": "Unknown webhook."}, status=404)
    return JsonResponse({"ok": True})
