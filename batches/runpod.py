"""HTTP client for a RunPod Serverless queue endpoint: `/run`, `/status`, `/cancel`, `/health`.

The runpod SDK's own client is not used: it polls every second and retries only some calls. This
client does one HTTP call per method, classifies every failure as transient (retry the *call*) or
permanent (do not), and never retries ``/run`` because RunPod has no idempotency key for it.
"""

from __future__ import annotations

import email.utils
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

logger = logging.getLogger(__name__)

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"

ACTIVE_STATUSES = frozenset({IN_QUEUE, IN_PROGRESS})
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})

DEFAULT_BASE_URL = "https://api.runpod.ai/v2"

# Enough connections for a Celery threads pool with a high concurrency sharing one client.
POOL_SIZE = 64
# A Retry-After of minutes must not park a Celery worker thread: past this we give up in place
# and let the caller reschedule.
MAX_IN_PLACE_RETRY_SLEEP = 3.0
# RunPod error bodies can be HTML pages from its edge; a snippet is enough for a log line.
MAX_BODY_IN_MESSAGE = 300


class RunPodError(Exception):
    """Any failure talking to RunPod."""


class TransientRunPodError(RunPodError):
    """The call may succeed if repeated: 429, 5xx, timeouts, connection errors, garbled bodies.

    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one.
    ``ambiguous`` says whether the request may have reached RunPod and been acted on: true after a
    read timeout, a dropped connection, a 5xx or a garbled 2xx body; false when the connection
    was never made or RunPod refused the call (429). For ``run()`` an ambiguous failure means a
    paid job may exist although no id came back.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, ambiguous: bool = True
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.ambiguous = ambiguous


class PermanentRunPodError(RunPodError):
    """Repeating the same call will fail the same way (400, 401, 403, 404...)."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class JobNotFound(PermanentRunPodError):
    """``/status`` or ``/cancel`` answered 404: the job expired (result TTL, ``policy.ttl``)
    or never existed on this endpoint."""


@dataclass(frozen=True)
class JobStatus:
    """One RunPod job as reported by ``/run``, ``/status`` or ``/cancel``."""

    id: str
    status: str
    output: Any = None
    error: str | None = None
    delay_time_ms: int | None = None
    execution_time_ms: int | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_success(self) -> bool:
        return self.status == COMPLETED

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobStatus:
        """Build from RunPod's JSON (``id``, ``status``, ``output``, ``error``, ``delayTime``,
        ``executionTime``); raises ``ValueError`` when ``id`` or ``status`` is missing."""
        if not isinstance(data, dict) or not data.get("id") or not data.get("status"):
            raise ValueError(f"not a RunPod job object: {str(data)[:MAX_BODY_IN_MESSAGE]!r}")
        error = data.get("error")
        if error is not None and not isinstance(error, str):
            # Handlers may return structured errors; callers store and show a string.
            error = str(error)
        if error is not None:
            # PostgreSQL refuses a NUL in text: one in a job's error would roll back the whole
            # pass that records it, again on every retry of the chunk.
            error = error.replace("\x00", "")
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            output=data.get("output"),
            error=error,
            delay_time_ms=_optional_int(data.get("delayTime")),
            execution_time_ms=_optional_int(data.get("executionTime")),
        )


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _never_connected(error: requests.ConnectionError) -> bool:
    """True when the TCP connection was never made (refused, no route, DNS): nothing was sent.
    A connection dropped after the request went out (RemoteDisconnected, reset) is ambiguous."""
    reason = error.args[0] if error.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the real cause
    return isinstance(reason, NewConnectionError)


class RunPodClient:
    """A thread-safe client for one RunPod Serverless endpoint.

    ``base_url`` is the API root including ``/v2`` (``https://api.runpod.ai/v2`` or the local
    emulator's ``http://127.0.0.1:8787/v2``). One instance can be shared by threads: the
    ``requests.Session`` connection pool is sized for it.
    """

    def __init__(
        self,
        base_url: str,
        endpoint_id: str,
        api_key: str,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 15.0,
        status_retries: int = 2,
        retry_backoff: float = 0.25,
        session: requests.Session | None = None,
    ) -> None:
        if not endpoint_id:
            raise ValueError("RunPod endpoint id is empty")
        self.base_url = base_url.rstrip("/")
        self.endpoint_id = endpoint_id
        self._api_key = api_key
        self.timeout = (connect_timeout, read_timeout)
        self.status_retries = status_retries
        self.retry_backoff = retry_backoff
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            # What requests would otherwise look up in the environment on every call (proxies,
            # a CA bundle, ~/.netrc: a sixth of a /run's CPU in the worker, in file reads and
            # parsing), looked up once here instead.
            session.trust_env = False
            session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if bundle:
                session.verify = bundle
        self.session = session

    @classmethod
    def from_settings(cls, endpoint_id: str = "", **kwargs: Any) -> RunPodClient:
        """Build from ``RUNPOD_BASE_URL`` and ``RUNPOD_API_KEY`` for ``endpoint_id`` (a model's
        endpoint, see budgets.pricing.endpoint_for), by default ``RUNPOD_ENDPOINT_ID``."""
        # Imported here so this module (and the emulator tests) work without Django configured.
        from django.conf import settings

        return cls(
            getattr(settings, "RUNPOD_BASE_URL", DEFAULT_BASE_URL),
            endpoint_id or settings.RUNPOD_ENDPOINT_ID,
            settings.RUNPOD_API_KEY,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"RunPodClient({self.base_url!r}, {self.endpoint_id!r})"

    def __enter__(self) -> RunPodClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (only if this client created the session)."""
        if self._owns_session:
            self.session.close()

    # -- operations ---------------------------------------------------------------------------

    def run(
        self,
        input: dict[str, Any],
        *,
        webhook: str | None = None,
        execution_timeout_ms: int | None = None,
        ttl_ms: int | None = None,
    ) -> JobStatus:
        """Submit one job (``POST /run``) and return its id and initial status.

        Never retried here: ``/run`` has no idempotency key, so a repeated POST creates a second
        paid job. The caller must record the returned id at once and, when this raises
        ``TransientRunPodError``, decide itself whether to submit again (after a read timeout or a
        5xx the job may exist anyway).
        """
        body: dict[str, Any] = {"input": input}
        if webhook is not None:
            body["webhook"] = webhook
        policy: dict[str, int] = {}
        if execution_timeout_ms is not None:
            policy["executionTimeout"] = int(execution_timeout_ms)
        if ttl_ms is not None:
            policy["ttl"] = int(ttl_ms)
        if policy:
            body["policy"] = policy
        data = self._request("POST", "run", json=body)
        job = self._job_from(data, "run")
        # Debug: at info, one line per panel (the job id is on the panel's row anyway).
        logger.debug("RunPod job %s submitted (%s)", job.id, job.status, extra={"job_id": job.id})
        return job

    def status(self, job_id: str) -> JobStatus:
        """Fetch a job's status (``GET /status/{id}``), retrying transient errors in place.

        Raises ``JobNotFound`` when RunPod no longer knows the job (expired or never existed).
        """
        data = self._with_retries(
            lambda: self._request("GET", f"status/{job_id}", job_id=job_id), job_id, "status"
        )
        return self._job_from(data, "status", job_id)

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued or running job (``POST /cancel/{id}``); idempotent, so retried."""
        data = self._with_retries(
            lambda: self._request("POST", f"cancel/{job_id}", job_id=job_id), job_id, "cancel"
        )
        logger.info("RunPod job %s cancel requested", job_id, extra={"job_id": job_id})
        return self._job_from(data, "cancel", job_id)

    def health(self) -> dict[str, Any]:
        """The endpoint's ``/health``: ``{"jobs": {...}, "workers": {...}}``. Not retried: it is
        a probe and should answer fast, good or bad."""
        data = self._request("GET", "health")
        if not isinstance(data, dict):
            raise TransientRunPodError("RunPod /health answered a non-object body")
        return data

    # -- plumbing -----------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{self.endpoint_id}/{path}"

    def _job_from(self, data: Any, operation: str, job_id: str | None = None) -> JobStatus:
        try:
            return JobStatus.from_json(data)
        except ValueError as exc:
            raise TransientRunPodError(
                f"RunPod {operation} for job {job_id or '-'} answered an unexpected body: {exc}"
            ) from None

    def _with_retries(self, call: Callable[[], Any], job_id: str, operation: str) -> Any:
        attempt = 0
        while True:
            try:
                return call()
            except TransientRunPodError as exc:
                if attempt >= self.status_retries:
                    raise
                delay = exc.retry_after
                if delay is None:
                    delay = self.retry_backoff * (2**attempt)
                delay = min(delay, MAX_IN_PLACE_RETRY_SLEEP)
                attempt += 1
                logger.warning(
                    "RunPod %s for job %s failed (%s); retry %d/%d in %.2fs",
                    operation,
                    job_id,
                    exc,
                    attempt,
                    self.status_retries,
                    delay,
                    extra={"job_id": job_id},
                )
                time.sleep(delay)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Any:
        url = self._url(path)
        what = f"RunPod {method} {url}"
        try:
            response = self.session.request(
                method,
                url,
                json=json,
                headers={"Authorization": f"Bearer {self._api_key}"},
                timeout=self.timeout,
            )
        except requests.ConnectTimeout as exc:
            # Never connected: the request cannot have reached RunPod.
            raise TransientRunPodError(
                f"{what} timed out connecting ({type(exc).__name__})", ambiguous=False
            ) from None
        except requests.Timeout as exc:
            raise TransientRunPodError(f"{what} timed out ({type(exc).__name__})") from None
        except requests.ConnectionError as exc:
            raise TransientRunPodError(
                f"{what} could not connect ({type(exc).__name__})",
                ambiguous=not _never_connected(exc),
            ) from None
        except requests.RequestException as exc:
            raise TransientRunPodError(f"{what} failed ({type(exc).__name__})") from None

        code = response.status_code
        if code == 429 or code >= 500:
            # A 429 is RunPod's rate limiter refusing the call before it acts on it; a 5xx can
            # come after the job was created.
            raise TransientRunPodError(
                f"{what} answered HTTP {code}: {self._snippet(response)}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                ambiguous=code != 429,
            )
        if code >= 400:
            error_class = JobNotFound if code == 404 and job_id else PermanentRunPodError
            raise error_class(
                f"{what} answered HTTP {code}: {self._snippet(response)}", status_code=code
            )
        try:
            return response.json()
        except ValueError:
            raise TransientRunPodError(
                f"{what} answered HTTP {code} with a body that is not JSON: "
                f"{self._snippet(response)}"
            ) from None

    def _snippet(self, response: requests.Response) -> str:
        text = response.text[:MAX_BODY_IN_MESSAGE]
        # An echoing proxy must not put the key into logs or stored error messages.
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text.strip() or "(empty body)"
