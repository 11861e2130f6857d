"""The Celery app. Tasks live in each app's tasks.py; settings come from CELERY_* in settings."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, bootsteps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comicgen.settings")

logger = logging.getLogger(__name__)

app = Celery("comicgen")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class HealthHeartbeat(bootsteps.StartStopStep):
    """Publish this worker's heartbeat for /health/ (comicgen/health.py) every few seconds.

    It runs on the worker's own timer, so it stops when the worker stops or its loop hangs, and
    the Redis key then expires by itself: /health/ never has to ping the workers.
    """

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.timer_entry: Any = None
        self.failing = False

    def start(self, worker: Any) -> None:
        from comicgen import health

        self.beat(worker)  # at once: a fresh worker counts before its first interval
        self.timer_entry = worker.timer.call_repeatedly(
            health.HEARTBEAT_INTERVAL_SECONDS, self.beat, (worker,), priority=10
        )

    def stop(self, worker: Any) -> None:
        from comicgen import health

        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None
        try:
            health.clear_heartbeat(worker.hostname)
        except Exception:  # Redis down at shutdown: the key expires by itself
            logger.info("could not clear the heartbeat of %s", worker.hostname)

    def beat(self, worker: Any) -> None:
        from comicgen import health

        try:
            queues = sorted(worker.app.amqp.queues.consume_from)
            health.publish_heartbeat(worker.hostname, queues)
        except Exception as error:  # Redis unreachable: try again at the next beat
            if not self.failing:  # once per outage, not every two seconds
                logger.warning("could not publish the heartbeat of %s: %r", worker.hostname, error)
            self.failing = True
        else:
            if self.failing:
                logger.info("heartbeat of %s published again", worker.hostname)
            self.failing = False


app.steps["worker"].add(HealthHeartbeat)


class Announcer(bootsteps.StartStopStep):
    """Build the events a worker's chunk threads push in one thread of its own
    (batches.events._Announcer): a pass then never waits for its event's transaction, and
    under load many passes' events go out together. Flushed when the worker stops."""

    def start(self, worker: Any) -> None:
        from batches import events

        events.announce_in_background()

    def stop(self, worker: Any) -> None:
        from batches import events

        if not events.stop_announcing(timeout=5):
            logger.warning("stopping with events still to announce")


app.steps["worker"].add(Announcer)
