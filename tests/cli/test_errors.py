"""What the CLI does when things go wrong: exit codes a script can rely on, and messages a
person can act on."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from batches.models import Batch
from budgets.models import Budget
from budgets.services import get_budget
from tests.cli.conftest import PARAMS, Cli
from tests.factories import UserFactory
from tests.web.conftest import make_batch

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("token", ["0" * 40, "not a token", "x" * 5000])
def test_a_bad_token_exits_2(
    token: str, cli_env: Callable[[str | None], Cli], author: Any, live: Any
) -> None:
    cli = cli_env(token)

    for args in (["list"], ["show", "1"], ["watch", "1"]):
        result = cli.run(*args)

        assert result.returncode == 2, (args, result.stderr)
        assert "comicgen login" in result.stderr


def test_no_token_at_all_exits_2(cli_env: Callable[[str | None], Cli], live: Any) -> None:
    result = cli_env(None).run("list")

    assert result.returncode == 2
    assert "No API token: run `comicgen login`" in result.stderr


def test_a_batch_over_budget_exits_2_and_creates_nothing(
    cli: Cli, chapter: Callable[..., Path], author: Any
) -> None:
    Budget.objects.filter(pk=get_budget(author).pk).update(limit=Decimal("0.000001"))

    result = cli.run("submit", str(chapter("one\ntwo\n")), *PARAMS)

    assert result.returncode == 2
    assert "remains of your monthly budget" in result.stderr
    assert not Batch.objects.exists()


def test_invalid_panels_are_named_by_their_file_line(
    cli: Cli, chapter: Callable[..., Path], author: Any
) -> None:
    path = chapter("# comment\nfine\n\n99999999999 | bad seed\n" + "x" * 2001 + "\n")

    result = cli.run("submit", str(path), "--json", *PARAMS)

    assert result.returncode == 2
    message = result.stderr.replace("\n", " ")
    assert "line 4: Ensure this value is less than or equal to 4294967295." in message
    assert "line 5: Ensure this field has no more than 2000 characters." in message
    assert json.loads(result.stdout)["code"] == "invalid"
    assert not Batch.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "/no/such/file.txt"], "Cannot read /no/such/file.txt"),
        (["submit", "EMPTY"], "No prompts in"),
        (["watch", "abc"], "is not a valid integer"),
        (["watch", "0"], "is not in the range"),
        (["download", "1", "-o"], "requires an argument"),
        (["frobnicate"], "No such command"),
        (["submit", "EMPTY", "--priority", "urgent"], "'urgent' is not one of"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str], message: str, cli: Cli, chapter: Callable[..., Path]
) -> None:
    empty = chapter("# only a comment\n\n", name="empty.txt")
    args = [str(empty) if arg == "EMPTY" else arg for arg in args]

    result = cli.run(*args)

    assert result.returncode == 2
    assert message in result.stderr


def test_another_users_batch_is_not_found_exit_2(cli: Cli, live: Any) -> None:
    theirs = make_batch(UserFactory(), ["their panel"])

    for args in (["show", str(theirs.pk)], ["cancel", str(theirs.pk)], ["watch", str(theirs.pk)]):
        result = cli.run(*args)

        assert result.returncode == 2, args
        assert "does not exist, or it is not yours" in result.stderr


def test_a_server_that_is_not_comicgen_is_an_api_error(
    cli_env: Callable[[str | None], Cli], live: Any
) -> None:
    result = cli_env("0" * 40).run("list", env={"COMICGEN_URL": "http://127.0.0.1:9"})

    assert result.returncode == 2
    assert "Cannot reach http://127.0.0.1:9" in result.stderr
