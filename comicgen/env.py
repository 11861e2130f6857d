"""Typed readers for settings that come from the environment.

Each reader fails loudly with the variable's name and what it expected, so a typo in a
deployment stops the process at start instead of surfacing as a strange runtime error.
"""

from __future__ import annotations

import json
import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None else value.strip()


def env_str(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: expected one of true/false, 1/0, yes/no, on/off")


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    value = _raw(name)
    if value is None or value == "":
        number = default
    else:
        try:
            number = int(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name}={value!r}: expected a whole number") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number}: must be at least {minimum}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number}: must be at most {maximum}")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = _raw(name)
    if value is None or value == "":
        number = default
    else:
        try:
            number = float(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name}={value!r}: expected a number") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number}: must be at least {minimum}")
    return number


def env_decimal(name: str, default: str, *, minimum: Decimal | None = None) -> Decimal:
    value = _raw(name) or default
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name}={value!r}: expected a decimal amount") from None
    if not number.is_finite() or (minimum is not None and number < minimum):
        raise ImproperlyConfigured(f"{name}={value!r}: must be a finite amount >= {minimum}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_url(name: str, default: str, *, schemes: tuple[str, ...]) -> str:
    value = env_str(name, default)
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in schemes:
        raise ImproperlyConfigured(f"{name}={value!r}: expected a URL starting with {schemes}")
    return value


def env_json(name: str, default: dict) -> dict:
    value = _raw(name)
    if not value:
        return default
    try:
        parsed = json.loads(value)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name}: not valid JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise ImproperlyConfigured(f"{name}: expected a JSON object")
    return parsed


# What `manage.py check --deploy` accepts as a strong key (Django's own rule), plus the markers
# of a placeholder that was copied from a sample instead of generated.
MIN_SECRET_KEY_CHARS = 50
MIN_SECRET_KEY_UNIQUE_CHARS = 5
_PLACEHOLDER_MARKERS = ("django-insecure", "insecure", "change-me", "changeme")


def _how_to_set(name: str) -> str:
    return (
        f"Set {name} to a long random value, e.g. the output of "
        "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`, in the environment or "
        f"in a file named by {name}_FILE; in a checkout, `make dev` or `make test` writes one "
        "to .local/secret_key."
    )


def env_secret_key(name: str, *, default_file: Path, allow_weak: bool) -> str:
    """The secret key: `name` from the environment, else the file `<name>_FILE` names (a
    Docker or Kubernetes secret), else `default_file` if it exists. There is no built-in key.

    Missing, empty or unreadable stops the process; so does a weak key (shorter than
    check --deploy accepts, too few distinct characters, or a placeholder) unless
    `allow_weak` (DEBUG on, a developer's own machine)."""
    value = _raw(name)
    source = name
    if not value:
        file_setting = f"{name}_FILE"
        path_text = _raw(file_setting)
        path = Path(path_text) if path_text else default_file
        source = f"{file_setting}={path}" if path_text else str(path)
        if path_text or path.is_file():
            try:
                value = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as error:
                raise ImproperlyConfigured(
                    f"{source}: cannot read it ({error}). {_how_to_set(name)}"
                ) from None
    if not value:
        raise ImproperlyConfigured(f"{name} is not set. {_how_to_set(name)}")
    if allow_weak:
        return value
    if len(value) < MIN_SECRET_KEY_CHARS:
        problem = f"is only {len(value)} characters (at least {MIN_SECRET_KEY_CHARS})"
    elif len(set(value)) < MIN_SECRET_KEY_UNIQUE_CHARS:
        problem = f"has fewer than {MIN_SECRET_KEY_UNIQUE_CHARS} distinct characters"
    elif any(marker in value.lower() for marker in _PLACEHOLDER_MARKERS):
        problem = "is a placeholder, not a generated key"
    else:
        return value
    # The key itself is never printed: it may be a real one that is merely short.
    raise ImproperlyConfigured(f"{name} from {source} {problem}. {_how_to_set(name)}")


_RATE = re.compile(r"^[1-9][0-9]{0,8}/(s|sec|second|m|min|minute|h|hour|d|day)$")


def env_rate(name: str, default: str) -> str:
    """A DRF throttle rate such as `30/min` (per second, minute, hour or day)."""
    value = env_str(name, default).lower()
    if not _RATE.match(value):
        raise ImproperlyConfigured(
            f"{name}={value!r}: expected requests per period, e.g. 30/min, 2/s, 1000/day"
        )
    return value
