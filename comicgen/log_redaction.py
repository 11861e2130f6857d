"""Secrets that travel in URL paths, kept out of the logs.

RunPod signs nothing, so an attempt's webhook URL carries its proof in the path
(`/api/v1/runpod/webhook/<batch>/<chunk>/<image>/<attempt>/<token>/`, batches.webhooks). Django
logs every 4xx and 5xx with its path ("Bad Request: /api/v1/runpod/webhook/.../<token>/"), and a
log is read by more people, and kept longer, than the secret may be: anyone holding a token
can report that attempt's end. RedactWebhookTokens rewrites such records before any handler
sees them.

Kept free of Django models: the logging configuration loads it before the apps are ready.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
# Everything after the webhook prefix up to the end of the path (query and fragment excluded).
_WEBHOOK_TAIL = re.compile(r"(/runpod/webhook/)([^\s?#\"']*)")
_NUMBER = re.compile(r"[0-9]*")


def _redact_tail(match: re.Match[str]) -> str:
    # The numbers (batch, chunk, image, attempt) stay, so a log still says which attempt; any
    # other segment may be a token, even in a path that has too few or too many segments.
    segments = [
        segment if _NUMBER.fullmatch(segment) else REDACTED for segment in match.group(2).split("/")
    ]
    return match.group(1) + "/".join(segments)


def redact_webhook_tokens(text: str) -> str:
    """`text` with every webhook path's token segments replaced by [redacted]."""
    if "/runpod/webhook/" not in text:
        return text
    return _WEBHOOK_TAIL.sub(_redact_tail, text)


class RedactWebhookTokens(logging.Filter):
    """Rewrite a record that names a webhook path: its message is formatted once, redacted,
    and its `request` (which Django attaches for handlers such as the admins' email, which
    print the path and headers) is dropped. Never drops the record itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_webhook_tokens(message)
        request = getattr(record, "request", None)
        path = getattr(request, "path", "")
        if redacted != message:
            record.msg, record.args = redacted, ()
        if isinstance(path, str) and redact_webhook_tokens(path) != path:
            delattr(record, "request")
        return True
