"""Push lag: how long after a panel finished its event was handed to the sender.

Measured where events are sent (batches/events.py), which is mostly in Celery workers, while
/metrics is served by the web processes: an in-process prometheus_client Histogram would show
each process only its own pushes, and the web process's is nearly empty. So the histogram lives
in Redis, shared by every process: one HINCRBY on the bucket hit and one HINCRBYFLOAT on the sum, in
one pipelined round trip; the metrics collector reads the hash back as a Prometheus histogram.

The buckets are stored per bucket (not cumulative) and cumulated when read. A Redis restart
starts them from zero, which Prometheus treats as a counter reset. Recording never raises and
never slows sending for long: after a Redis error it is skipped for REDIS_BACKOFF_SECONDS.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import math
import threading
import time
from collections import Counter
from typing import Any

import redis
from django.utils import timezone
from prometheus_client.core import HistogramMetricFamily

from comicgen.health import get_redis

logger = logging.getLogger(__name__)

KEY = "comicgen:metrics:push_lag"
# Seconds. A healthy push takes milliseconds (the event goes out as the finishing transaction
# commits); seconds mean a backed-up sender or a slow database.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REDIS_BACKOFF_SECONDS = 30.0

_state = threading.Lock()
_skip_until = 0.0


def _bucket_field(seconds: float) -> str:
    position = bisect.bisect_left(BUCKETS, seconds)
    return "le:+Inf" if position == len(BUCKETS) else f"le:{BUCKETS[position]}"


def observe(seconds: float) -> None:
    """Record one push lag, in seconds (negative clock skew counts as zero)."""
    observe_many([seconds])


def observe_many(lags: list[float]) -> None:
    """Record push lags, in seconds, in one round trip (negative clock skew counts as zero)."""
    global _skip_until
    lags = [max(0.0, seconds) for seconds in lags if not math.isnan(seconds)]
    if not lags or time.monotonic() < _skip_until:
        return
    try:
        pipe = get_redis().pipeline(transaction=False)
        for field, count in Counter(map(_bucket_field, lags)).items():
            pipe.hincrby(KEY, field, count)
        pipe.hincrbyfloat(KEY, "sum", sum(lags))
        pipe.execute()
    except redis.RedisError:
        with _state:
            _skip_until = time.monotonic() + REDIS_BACKOFF_SECONDS
        logger.warning("push lag not recorded: Redis unavailable", exc_info=True)


def observe_since_each(finished: list[dt.datetime | None]) -> None:
    """Record the lags of events about panels that finished at these times, sent now."""
    now = timezone.now()
    observe_many([(now - at).total_seconds() for at in finished if at is not None])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read() -> dict[str, Any]:
    """The histogram as `{"buckets": [(upper bound, cumulative count), ...], "count", "sum"}`,
    the last bucket `+Inf`; all zeros when nothing was recorded or Redis cannot be read."""
    raw: dict[Any, Any]
    try:
        raw = dict(get_redis().hgetall(KEY))
    except redis.RedisError:
        logger.warning("push lag unreadable: Redis unavailable", exc_info=True)
        raw = {}
    values = {_text(key): _text(value) for key, value in raw.items()}
    cumulative = 0
    buckets: list[tuple[str, int]] = []
    for bound in (*[str(b) for b in BUCKETS], "+Inf"):
        cumulative += int(values.get(f"le:{bound}", 0))
        buckets.append((bound, cumulative))
    return {
        "buckets": buckets,
        "count": cumulative,  # the +Inf bucket
        "sum": float(values.get("sum", 0.0)),
    }


def quantile(histogram: dict[str, Any], q: float) -> float | None:
    """The upper bound of the bucket holding quantile `q` (None with no data; inf past the
    last bound), as Prometheus's histogram_quantile would bound it."""
    total = histogram["count"]
    if not total:
        return None
    for bound, cumulative in histogram["buckets"]:
        if cumulative >= q * total:
            return float(bound)
    return math.inf


def metric_family() -> HistogramMetricFamily:
    histogram = read()
    return HistogramMetricFamily(
        "comicgen_push_lag_seconds",
        "Seconds from a panel's finish to its image.updated event being handed to the sender.",
        buckets=[(bound, float(count)) for bound, count in histogram["buckets"]],
        sum_value=histogram["sum"],
    )


def reset() -> None:
    """Forget every observation (tests)."""
    global _skip_until
    _skip_until = 0.0
    get_redis().delete(KEY)
