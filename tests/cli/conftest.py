"""The `comicgen` CLI run as a user runs it: a separate process (`python -m comicgen_cli`, what
the console script calls) talking HTTP and WebSocket to the live stack's daphne."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from tests.support.processes import REPO_ROOT

# Small, fast panels: the emulator's time is what the tests wait on.
PARAMS = ["--width", "128", "--height", "128", "--steps", "4"]


@dataclass
class Cli:
    home: Path
    env: dict[str, str]

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "comicgen_cli", *args]

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The CLI runs in its home folder (where `download` saves by default) and imports
        this checkout's code."""
        env = {**self.env, **(extra or {})}
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (env.get("PYTHONPATH", ""), str(REPO_ROOT)) if part
        )
        return env

    def run(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=self.home,
            env=self.environment(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            cwd=self.home,
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def author(live: Any) -> Any:
    return get_user_model().objects.create_user("mara", password="vault-door-42")


@pytest.fixture
def cli_env(live: Any, tmp_path: Path) -> Callable[[str | None], Cli]:
    """A CLI with its own empty home (no config file) and, when given, a token in the env."""

    def make(token: str | None) -> Cli:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("COMICGEN_") and key not in ("XDG_CONFIG_HOME", "PYTHONPATH")
        }
        env.update({"HOME": str(home), "COMICGEN_URL": live.web_url, "COLUMNS": "120"})
        if token is not None:
            env["COMICGEN_TOKEN"] = token
        return Cli(home, env)

    return make


@pytest.fixture
def cli(cli_env: Callable[[str | None], Cli], author: Any) -> Cli:
    return cli_env(Token.objects.get_or_create(user=author)[0].key)


@pytest.fixture
def chapter(tmp_path: Path) -> Callable[..., Path]:
    def write(text: str, name: str = "chapter-3.txt") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
