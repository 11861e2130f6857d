"""The CLI's pieces that need no server: its config file and what it makes of events."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from comicgen_cli import config
from comicgen_cli.watch import BatchState, socket_url
from tests.support.processes import REPO_ROOT


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMICGEN_", "XDG_"))}
    env.update({"HOME": str(home), "PYTHONPATH": str(REPO_ROOT)})
    return subprocess.run(
        [sys.executable, "-m", "comicgen_cli", *args],
        cwd=home, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_saving_makes_the_file_owner_only_even_when_it_was_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMICGEN_CONFIG", str(tmp_path / "c" / "config.toml"))
    path = tmp_path / "c" / "config.toml"
    path.parent.mkdir()
    path.write_text('token = "old"\n')
    path.chmod(0o644)

    config.save("https://example.test", 'a"b\\c\n', "mara")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.read_file(path) == {
        "url": "https://example.test",
        "username": "mara",
        "token": 'a"b\\c\n',  # quoted as TOML reads it back
    }


def test_a_malformed_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / ".config" / "comicgen" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"token = [unclosed\n\xff")

    result = run_cli(tmp_path, "list")

    assert result.returncode == 2
    assert f"Cannot read {path}" in result.stderr


def test_a_config_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / ".config" / "comicgen" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('url = "http://127.0.0.1:9"\ntoken = "' + "0" * 40 + '"\n')
    path.chmod(0o644)

    result = run_cli(tmp_path, "list")

    assert result.returncode == 2  # nothing listens on port 9
    assert "is readable by others; run: chmod 600" in result.stderr.replace("\n", " ")
    assert "Cannot reach http://127.0.0.1:9" in result.stderr


def test_stale_and_foreign_events_are_dropped_and_costs_add_up() -> None:
    state = BatchState(7)
    state.load(
        {"seq": 5, "status": "running", "counts": {"total": 2}, "actual_cost": "0.1",
         "currency": "USD", "images": [{"id": 1, "cost": "0.1"}, {"id": 2, "cost": "0"}]}
    )  # fmt: skip

    assert not state.apply({"type": "image.updated", "seq": 5, "image": {"id": 2, "cost": "9"}})
    assert not state.apply({"type": "image.updated", "seq": "6"})
    assert state.apply({"type": "image.updated", "seq": 6, "image": {"cost": "5"}})  # no id
    state.seq = 5
    assert state.apply({"type": "image.updated", "seq": 6, "image": {"id": 2, "cost": "0.25"}})
    assert state.cost == Decimal("0.35")
    assert state.apply({"type": "batch.updated", "seq": 8, "status": "completed"})
    assert state.finished
    # A resync's snapshot starts the order again.
    assert state.apply({"type": "batch.snapshot", "seq": 3, "batch": {"status": "running"}})
    assert state.seq == 3
    assert state.status == "running"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws/batches/3/"),
        ("https://comics.example/app/", "wss://comics.example/app/ws/batches/3/"),
    ],
)
def test_the_socket_url_follows_the_api_url(base: str, expected: str) -> None:
    assert socket_url(base, 3) == expected
