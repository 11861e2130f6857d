"""The Prometheus exposition of /metrics: one custom collector that reads the monitor's queries
at scrape time.

Every figure comes from PostgreSQL (or RunPod's cached /health, or the push-lag histogram in
Redis) when Prometheus asks, never from counters kept in one process: comicgen runs several web
and worker processes, and only the database sees them all. A scrape costs four aggregate SQL
queries, one cache read per RunPod endpoint (RunPod itself at most every 2 s) and one Redis read.

The windowed figures are gauges over a trailing window, as the queue page shows them (attempts
over the last 15 minutes, charges over the last hour and 24 hours): they are counted from the
ledger's timestamps, so a restart of any process loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring import pushlag, queries

# Labels for RunPod's /health fields: its camelCase job states as snake case.
JOB_STATES = {"inQueue": "in_queue", "inProgress": "in_progress", "completed": "completed",
              "failed": "failed", "retried": "retried"}  # fmt: skip


class ComicgenCollector(Collector):
    """comicgen's queue, work and money figures, read fresh at each scrape."""

    def collect(self) -> Iterator[Metric]:
        yield from self._images()
        yield from self._in_flight()
        yield from self._attempts()
        yield from self._charges()
        yield from self._runpod()
        yield pushlag.metric_family()

    def _images(self) -> Iterator[Metric]:
        images = GaugeMetricFamily(
            "comicgen_images", "Images (panels) by status, all time.", labels=["status"]
        )
        for status, count in queries.images_by_status().items():
            images.add_metric([status], count)
        yield images

    def _in_flight(self) -> Iterator[Metric]:
        rows = queries.in_flight()
        in_flight = GaugeMetricFamily(
            "comicgen_in_flight",
            "Images holding a RunPod job (queued there or rendering), by endpoint and priority.",
            labels=["endpoint", "priority"],
        )
        waiting = GaugeMetricFamily(
            "comicgen_waiting",
            "Images not yet on RunPod (pending, or retrying after a backoff), by endpoint and "
            "priority.",
            labels=["endpoint", "priority"],
        )
        by_user = GaugeMetricFamily(
            "comicgen_in_flight_by_user",
            "Images holding a RunPod job, by owner (only owners with unfinished work).",
            labels=["user"],
        )
        totals: dict[tuple[str, str], list[int]] = {}
        users: dict[str, int] = {}
        for row in rows:
            total = totals.setdefault((row.endpoint, row.priority), [0, 0])
            total[0] += row.in_flight
            total[1] += row.waiting
            users[row.username] = users.get(row.username, 0) + row.in_flight
        for (endpoint, priority), (flying, queued_here) in sorted(totals.items()):
            in_flight.add_metric([endpoint, priority], flying)
            waiting.add_metric([endpoint, priority], queued_here)
        for username, flying in sorted(users.items()):
            by_user.add_metric([username], flying)
        yield from (in_flight, waiting, by_user)

    def _attempts(self) -> Iterator[Metric]:
        minutes = queries.attempts_per_minute()
        window = f"{len(minutes)}m"
        attempts = GaugeMetricFamily(
            "comicgen_attempts_recent",
            "RunPod attempts ended over the trailing window, by outcome (succeeded, failed: "
            "retried or given up, cancelled).",
            labels=["window", "outcome"],
        )
        for outcome in ("succeeded", "failed", "cancelled"):
            attempts.add_metric([window, outcome], sum(getattr(m, outcome) for m in minutes))
        last_minute = minutes[-1]
        per_minute = GaugeMetricFamily(
            "comicgen_attempts_this_minute",
            "RunPod attempts ended since the start of the current minute, by outcome.",
            labels=["outcome"],
        )
        for outcome in ("succeeded", "failed", "cancelled"):
            per_minute.add_metric([outcome], getattr(last_minute, outcome))
        yield from (attempts, per_minute)

    def _charges(self) -> Iterator[Metric]:
        hours = queries.charges_per_hour()
        charges = GaugeMetricFamily(
            "comicgen_charges_recent",
            "Money charged to budgets (the ledger's charges) over the trailing window.",
            labels=["window", "currency"],
        )
        count = GaugeMetricFamily(
            "comicgen_charges_recent_count",
            "Charges (one per attempt RunPod ended) over the trailing window.",
            labels=["window"],
        )
        for window, selected in (("1h", hours[-1:]), (f"{len(hours)}h", hours)):
            totals: dict[str, Decimal] = {}
            for hour in selected:
                for currency, amount in hour.amounts.items():
                    totals[currency] = totals.get(currency, Decimal("0")) + amount
            for currency, total in sorted(totals.items()):
                charges.add_metric([window, currency], float(total))
            count.add_metric([window], sum(hour.charges for hour in selected))
        yield from (charges, count)

    def _runpod(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "comicgen_runpod_up", "1 when the endpoint's /health answered.", labels=["endpoint"]
        )
        workers = GaugeMetricFamily(
            "comicgen_runpod_workers",
            "RunPod workers by state (idle, running, initializing, ...), from its /health.",
            labels=["endpoint", "state"],
        )
        jobs = GaugeMetricFamily(
            "comicgen_runpod_jobs",
            "RunPod jobs by state (in_queue, in_progress: now; completed, failed, retried: "
            "RunPod's own recent totals), from its /health.",
            labels=["endpoint", "state"],
        )
        for health in queries.runpod_health():
            endpoint = health["endpoint"]
            up.add_metric([endpoint], 0 if health.get("error") else 1)
            for state, count in health.get("workers", {}).items():
                workers.add_metric([endpoint, state], count)
            for state, count in health.get("jobs", {}).items():
                jobs.add_metric([endpoint, JOB_STATES.get(state, state)], count)
        yield from (up, workers, jobs)


registry = CollectorRegistry(auto_describe=False)
registry.register(ComicgenCollector())


def exposition() -> bytes:
    """The metrics in Prometheus's text format, read now."""
    return generate_latest(registry)
