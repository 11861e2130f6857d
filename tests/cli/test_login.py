"""`comicgen login`: the token from POST /api/v1/auth/token/, saved owner-only."""

from __future__ import annotations

import json
import stat
import tomllib
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.authtoken.models import Token

from tests.cli.conftest import Cli

pytestmark = pytest.mark.integration


def test_login_saves_the_token_readable_by_its_owner_only_and_commands_use_it(
    cli_env: Callable[[str | None], Cli], author: Any, live: Any
) -> None:
    cli = cli_env(None)

    result = cli.run(
        "login", "--url", live.web_url, "--username", "mara", "--password-stdin",
        input="vault-door-42\n",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    path = cli.home / ".config" / "comicgen" / "config.toml"
    assert f"Token saved in {path}" in result.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = tomllib.loads(path.read_text())
    assert saved == {
        "url": live.web_url,
        "username": "mara",
        "token": Token.objects.get(user=author).key,
    }
    # With no token in the environment, the next command reads the file.
    env = {key: value for key, value in cli.env.items() if key != "COMICGEN_URL"}
    listed = Cli(cli.home, env).run("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["count"] == 0


def test_login_prompts_for_what_is_missing(
    cli_env: Callable[[str | None], Cli], author: Any, live: Any
) -> None:
    cli = cli_env(None)

    result = cli.run("login", "--password-stdin", input=f"{live.web_url}\nmara\nvault-door-42\n")

    assert result.returncode == 0, result.stderr + result.stdout
    assert "Logged in to" in result.stdout


def test_a_wrong_password_exits_2_and_saves_nothing(
    cli_env: Callable[[str | None], Cli], author: Any, live: Any
) -> None:
    cli = cli_env(None)

    result = cli.run(
        "login", "--url", live.web_url, "--username", "mara", "--password-stdin",
        input="wrong\n",
    )  # fmt: skip

    assert result.returncode == 2
    assert "Wrong username or password" in result.stderr
    assert not (cli.home / ".config" / "comicgen" / "config.toml").exists()
    assert not Token.objects.filter(user=author).exists()


def test_a_bad_url_is_a_usage_error(cli_env: Callable[[str | None], Cli], author: Any) -> None:
    result = cli_env(None).run(
        "login", "--url", "ftp://example", "--username", "mara", "--password-stdin", input="x\n"
    )

    assert result.returncode == 2
    assert "must start with http:// or https://" in result.stderr
