"""Per-user limits on the calls that cost work: submitting (pricing, reserving, enqueueing a
chord) and estimating (pricing). Counted in the shared cache (Redis), so every web process sees
the same count; over the limit the API answers 429 with Retry-After (comicgen/errors.py)."""

from __future__ import annotations

import logging
import math
from typing import Any

import redis
from django.conf import settings
from rest_framework.throttling import UserRateThrottle

logger = logging.getLogger(__name__)


class SettingsRateThrottle(UserRateThrottle):
    """A per-user throttle whose rate is a setting read at each request (DRF's own reads
    DEFAULT_THROTTLE_RATES once, at import), so a deployment sets it in the environment and a
    test can lower it with the `settings` fixture."""

    rate_setting = ""
    duration: int  # set by SimpleRateThrottle.__init__ from the rate

    def get_rate(self) -> str | None:
        return str(getattr(settings, self.rate_setting))

    def wait(self) -> float:
        """Seconds until the oldest counted request leaves the window. DRF's own answers None
        (so no Retry-After) when more requests are counted than the current rate allows, as
        right after the rate was lowered."""
        estimate = super().wait()
        if estimate is not None:
            return float(estimate)
        oldest = self.history[-1] if self.history else self.now
        return max(0.0, self.duration - (self.now - oldest))

    def allow_request(self, request: Any, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except redis.RedisError as error:
            # A limit is not worth an outage: while Redis restarts, submits are still accepted
            # (and enqueued later by the sweeper), so let them through unthrottled.
            logger.warning("throttle %s not applied, cache unreachable: %s", self.scope, error)
            return True


class SubmitThrottle(SettingsRateThrottle):
    scope = "submit"
    rate_setting = "COMICGEN_THROTTLE_SUBMIT"


class EstimateThrottle(SettingsRateThrottle):
    scope = "estimate"
    rate_setting = "COMICGEN_THROTTLE_ESTIMATE"


def refuse_if_throttled(
    throttle_class: type[SettingsRateThrottle], request: Any, form: Any
) -> bool:
    """For the HTML pages that reach the same service (the new-batch form submits too): count
    the request against the same per-user limit as the API, and when it is over, put the reason
    on the form and answer True."""
    throttle = throttle_class()
    if throttle.allow_request(request, None):
        return False
    wait = max(1, math.ceil(throttle.wait()))
    form.add_error(None, f"Too many requests of this kind; try again in {wait} s.")
    return True
