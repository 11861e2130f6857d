"""Settings read from the environment fail loudly on a bad value, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured

from comicgen import env


@pytest.mark.parametrize(
    ("reader", "value", "message"),
    [
        (lambda: env.env_int("X_INT", 1), "ten", "expected a whole number"),
        (lambda: env.env_int("X_INT", 1, minimum=1), "0", "at least 1"),
        (lambda: env.env_bool("X_INT", False), "maybe", "true/false"),
        (lambda: env.env_float("X_INT", 1.0), "fast", "expected a number"),
        (lambda: env.env_decimal("X_INT", "1"), "NaN", "finite amount"),
        (lambda: env.env_url("X_INT", "redis://x", schemes=("redis",)), "localhost:6379", "URL"),
        (lambda: env.env_json("X_INT", {}), "{not json", "not valid JSON"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, reader: object, value: str, message: str
) -> None:
    monkeypatch.setenv("X_INT", value)
    with pytest.raises(ImproperlyConfigured, match=message) as error:
        reader()
    assert "X_INT" in str(error.value)


def test_good_values_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_INT", "12")
    assert env.env_int("X_INT", 1) == 12
    assert env.env_decimal("X_INT", "1") == Decimal("12")
    monkeypatch.setenv("X_INT", "yes")
    assert env.env_bool("X_INT", False) is True
    monkeypatch.delenv("X_INT")
    assert env.env_list("X_INT", ["a"]) == ["a"]


def test_the_process_refuses_to_start_with_a_bad_setting() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={**os.environ, "COMICGEN_CHUNK_SIZE": "zero"},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode != 0
    assert "COMICGEN_CHUNK_SIZE='zero': expected a whole number" in result.stderr


def test_debug_is_off_unless_asked() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; "
            "print(settings.DEBUG)",
        ],
        env={k: v for k, v in os.environ.items() if k != "DEBUG"}
        | {"DJANGO_SETTINGS_MODULE": "comicgen.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "False"
