"""Password guessing through the login forms (`/accounts/login/`, `/admin/login/`) is limited
per client address, on the same count as the API's token endpoint (comicgen.api_tokens
.LoginThrottle, COMICGEN_THROTTLE_LOGIN): one budget of guesses per address whichever door it
knocks on. Over it, a POST gets a 429 page that says when to try again (and Retry-After);
reading the form is never limited.

Per address, not per username: a per-username count would let one address try every account,
and would let anyone lock a known user out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils import timezone
from rest_framework.request import Request

from comicgen.api_tokens import LoginThrottle

logger = logging.getLogger(__name__)


def throttle_login_posts(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Wrap a login view: each POST is counted per client address, and one over the limit is
    answered 429 without reaching the view (so not even the right password gets in)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.method == "POST":
            throttle, client = LoginThrottle(), Request(request)
            # DRF's throttle reads the client address as the API's does (NUM_PROXIES); wrapping
            # reads no byte of the body, which the view itself parses next.
            if not throttle.allow_request(client, None):
                wait = max(1, math.ceil(throttle.wait()))
                logger.warning("login form throttled for %s on %s", throttle.get_ident(client),
                               request.path)  # fmt: skip
                return too_many_attempts(request, wait)
        return view(request, *args, **kwargs)

    return wrapped


def too_many_attempts(request: HttpRequest, wait: int) -> HttpResponse:
    """The 429 page: how long to wait, and the time it ends, in words and in Retry-After."""
    context = {"wait": wait, "try_at": timezone.now() + timedelta(seconds=wait),
               "login_url": request.path}  # fmt: skip
    response = render(request, "registration/too_many_logins.html", context, status=429)
    response["Retry-After"] = str(wait)
    return response
