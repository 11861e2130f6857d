"""Settings read from the environment fail loudly on a bad value, naming the variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
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


# SECRET_KEY: no built-in key; production refuses a missing or weak one.

STRONG_KEY = "k3Y-" + "Zq8vWm2Lp5Rt9Xc1Nb4Hs7Jd0Gf6Ae3Ky" * 2  # 68 characters, no marker
SETTINGS_ONLY = [sys.executable, "-c", "import comicgen.settings"]


def settings_env(tmp_path: Any, **values: str) -> dict[str, str]:
    """The test's environment without any key: SECRET_KEY unset and the key file pointed at
    a file that does not exist (so this checkout's .local/secret_key is not read)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    env["SECRET_KEY_FILE"] = str(tmp_path / "absent")
    env.update(values)
    return env


def test_the_process_refuses_to_start_without_a_secret_key(tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env=settings_env(tmp_path, SECRET_KEY=""),
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "secrets.token_urlsafe(50)" in result.stderr  # says how to make one


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "cannot read it"),  # no key, and the named file is absent
        ("   ", "cannot read it"),
        ("short-but-random-Zq8vWm2Lp5", "only 27 characters (at least 50)"),
        ("dev-only-insecure-secret-key-change-me-0123456789abcdef", "placeholder"),
        ("django-insecure-" + "x7Pq2Lw9Rt" * 6, "placeholder"),
        ("ab" * 40, "fewer than 5 distinct characters"),
    ],
)
def test_production_refuses_a_missing_or_weak_secret_key(
    tmp_path: Any, key: str, message: str
) -> None:
    result = subprocess.run(
        SETTINGS_ONLY, env=settings_env(tmp_path, SECRET_KEY=key), capture_output=True, text=True
    )

    assert result.returncode != 0
    assert message in result.stderr
    assert "SECRET_KEY" in result.stderr
    if key.strip():
        assert key not in result.stderr  # the key itself is never printed


def test_production_starts_with_a_strong_key_from_the_environment_or_a_file(
    tmp_path: Any,
) -> None:
    printed = [sys.executable, "-c", "from comicgen import settings; print(settings.SECRET_KEY)"]
    from_env = subprocess.run(
        printed, env=settings_env(tmp_path, SECRET_KEY=STRONG_KEY), capture_output=True, text=True
    )
    key_file = tmp_path / "secret_key"
    key_file.write_text(STRONG_KEY[::-1] + "\n")
    from_file = subprocess.run(
        printed,
        env=settings_env(tmp_path, SECRET_KEY_FILE=str(key_file)),
        capture_output=True,
        text=True,
    )

    assert from_env.stdout.strip() == STRONG_KEY, from_env.stderr
    assert from_file.stdout.strip() == STRONG_KEY[::-1], from_file.stderr


def test_a_weak_key_in_the_key_file_is_refused_too(tmp_path: Any) -> None:
    key_file = tmp_path / "secret_key"
    key_file.write_text("secret\n")

    result = subprocess.run(
        SETTINGS_ONLY,
        env=settings_env(tmp_path, SECRET_KEY_FILE=str(key_file)),
        capture_output=True,
        text=True,
    )

    assert result.returncode != 0
    assert "only 6 characters" in result.stderr


def test_debug_accepts_a_weak_key_but_never_a_missing_one(tmp_path: Any) -> None:
    weak = subprocess.run(
        SETTINGS_ONLY, env=settings_env(tmp_path, DEBUG="true", SECRET_KEY="dev"), check=False
    )
    missing = subprocess.run(
        SETTINGS_ONLY,
        env=settings_env(tmp_path, DEBUG="true", SECRET_KEY=""),
        capture_output=True,
        text=True,
    )

    assert weak.returncode == 0
    assert missing.returncode != 0


def test_a_checkout_reads_its_own_key_file_when_no_key_is_set(tmp_path: Any) -> None:
    """How `python manage.py ...` works with no environment: make dev/test wrote the file."""
    from django.core.exceptions import ImproperlyConfigured

    key_file = tmp_path / ".local" / "secret_key"
    with pytest.raises(ImproperlyConfigured, match="X_SECRET is not set"):
        env.env_secret_key("X_SECRET", default_file=key_file, allow_weak=False)
    key_file.parent.mkdir()
    key_file.write_text(STRONG_KEY + "\n")

    assert env.env_secret_key("X_SECRET", default_file=key_file, allow_weak=False) == STRONG_KEY


def test_scripts_write_a_strong_random_key_file_once(tmp_path: Any) -> None:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    lib = Path(__file__).resolve().parents[2] / "scripts" / "lib.sh"
    (root / "scripts" / "lib.sh").write_text(lib.read_text())
    run = ["bash", "-c", f'source "{root}/scripts/lib.sh" && ensure_secret_key']

    subprocess.run(run, check=True)
    key_file = root / ".local" / "secret_key"
    first = key_file.read_text().strip()
    subprocess.run(run, check=True)

    assert key_file.read_text().strip() == first  # kept: sessions survive a restart
    assert key_file.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert env.env_secret_key("X", default_file=key_file, allow_weak=False) == first


# `manage.py check --deploy` with docker-compose.yml's settings

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
# Innermost first: a default may itself name a variable (`${ALLOWED_HOSTS:-${COMICGEN_DOMAIN}}`).
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:-|:\?)([^}$]*))?\}")


def compose_environment(variables: dict[str, str]) -> dict[str, str]:
    """The app containers' environment as `docker compose` builds it: `${VAR:-default}`,
    `${VAR:?error}` (an error when VAR is unset or empty) and `${VAR}`, from `variables`."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        value = variables.get(name, "")
        if operator == ":?" and not value:
            raise LookupError(f"{name}: {argument}")
        return value or (argument if operator == ":-" else "")

    def expand(value: str) -> str:
        while (expanded := _VARIABLE.sub(substitute, value)) != value:
            value = expanded
        return value

    environment = yaml.safe_load(COMPOSE.read_text())["x-app"]["environment"]
    return {key: expand(str(value)) for key, value in environment.items()}


# What an operator must put in .env (docker-compose.yml refuses to start without each).
REQUIRED = {
    "SECRET_KEY": STRONG_KEY,
    "POSTGRES_PASSWORD": "0123456789abcdef",
    "RUNPOD_API_KEY": "rp-key",
    "COMICGEN_DOMAIN": "comicgen.example.com",
    "ACME_EMAIL": "ops@example.com",
}


# ACME_EMAIL is the proxy's alone; the app's containers require the others.
@pytest.mark.parametrize("missing", sorted(set(REQUIRED) - {"ACME_EMAIL"}))
def test_docker_compose_refuses_to_start_the_app_without_a_required_setting(missing: str) -> None:
    given = {name: value for name, value in REQUIRED.items() if name != missing}
    with pytest.raises(LookupError, match=f"^{missing}:"):
        compose_environment(given)


def test_check_deploy_is_clean_with_the_docker_compose_settings(tmp_path: Any) -> None:
    # HSTS for subdomains and the preload list are the operator's call (every subdomain must
    # serve HTTPS first): compose defaults them off, and an operator who says yes in .env gets
    # a clean check. Everything else the check asks for, the compose file sets itself.
    operator = {**REQUIRED, "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true", "SECURE_HSTS_PRELOAD": "true"}
    compose = compose_environment(operator)
    compose["MEDIA_ROOT"] = str(tmp_path / "media")  # the container's volume path
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        # Nothing from this machine's environment but the basics: the compose file must say
        # everything production needs.
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **compose},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_without_the_docker_compose_security_settings(tmp_path: Any) -> None:
    """The check above can fail: the same command with only a key is far from clean."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SECRET_KEY": STRONG_KEY},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in result.stderr
