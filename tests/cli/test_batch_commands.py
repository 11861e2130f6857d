"""`comicgen list`, `show`, `cancel`, `retry`, `download`: each with its --json."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batches.models import Batch, BatchStatus, ImageStatus
from tests.cli.conftest import PARAMS, Cli
from tests.conftest import wait_for
from tests.support.books import assert_books_match_the_bill
from tests.web.conftest import make_batch

pytestmark = pytest.mark.integration


def finished(batch_id: int) -> Batch:
    return wait_for(lambda: (b := Batch.objects.get(pk=batch_id)).is_terminal and b)


def test_list_and_show_print_tables_and_json(cli: Cli, author: Any, live: Any) -> None:
    batch = finished(make_batch(author, ["one", "two [fail:always]"], title="Vault").pk)

    listed = cli.run("list")
    listed_json = cli.run("list", "--json")
    shown = cli.run("show", str(batch.pk))
    shown_json = cli.run("show", str(batch.pk), "--json")

    assert [r.returncode for r in (listed, listed_json, shown, shown_json)] == [0, 0, 0, 0]
    assert "Vault" in listed.stdout
    assert "partial" in listed.stdout
    assert [row["id"] for row in json.loads(listed_json.stdout)["results"]] == [batch.pk]
    assert f"Batch {batch.pk} “Vault”: partial, 1/2 completed, 1 failed" in shown.stdout
    assert "gave up after" in shown.stdout
    assert "two [fail:always]" in shown.stdout  # user text is printed as is, never as markup
    detail = json.loads(shown_json.stdout)
    assert [image["status"] for image in detail["images"]] == ["completed", "failed"]
    assert detail["images"][0]["image_url"].startswith(f"{live.web_url}/panels/")


def test_cancel_stops_a_running_batch(
    cli: Cli, chapter: Callable[..., Path], author: Any, live: Any
) -> None:
    live.emulator.configure(latency=1.0, workers=1)
    path = chapter("\n".join(f"p{n}" for n in range(6)))
    submitted = cli.run("submit", str(path), "--json", *PARAMS)
    batch_id = json.loads(submitted.stdout)["id"]

    result = cli.run("cancel", str(batch_id), "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == batch_id
    batch = finished(batch_id)
    assert batch.status in (BatchStatus.CANCELLED, BatchStatus.PARTIAL)
    assert batch.images.filter(status=ImageStatus.CANCELLED).exists()
    # Watching a cancelled batch ends at once with "not completed".
    watched = cli.run("watch", str(batch_id))
    assert watched.returncode == 1
    assert cli.run("cancel", str(batch_id)).returncode == 2  # already over: 409
    assert_books_match_the_bill(live.emulator)


def test_retry_requeues_the_failed_panels(cli: Cli, author: Any, live: Any) -> None:
    batch = finished(make_batch(author, ["fine", "flaky [fail:3]"]).pk)
    assert batch.status == BatchStatus.PARTIAL

    result = cli.run("retry", str(batch.pk))

    assert result.returncode == 0, result.stderr
    assert f"Batch {batch.pk} requeued" in result.stdout
    assert cli.run("watch", str(batch.pk)).returncode == 0  # [fail:3] succeeds on attempt 4
    assert Batch.objects.get(pk=batch.pk).status == BatchStatus.COMPLETED
    assert_books_match_the_bill(live.emulator)


def test_download_saves_a_zip_of_the_panels(
    cli: Cli, author: Any, live: Any, tmp_path: Path
) -> None:
    batch = finished(make_batch(author, ["one", "two", "three [fail:always]"]).pk)
    target = tmp_path / "out" / "chapter.zip"
    target.parent.mkdir()

    result = cli.run("download", str(batch.pk), "-o", str(target), "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "batch_id": batch.pk,
        "path": str(target),
        "bytes": target.stat().st_size,
    }
    with zipfile.ZipFile(target) as archive:
        assert archive.namelist() == ["panel-001.png", "panel-002.png"]
        assert all(archive.read(name)[:8] == b"\x89PNG\r\n\x1a\n" for name in archive.namelist())
    assert not list(target.parent.glob("*.part"))
    # The default name, in the working directory.
    default = cli.run("download", str(batch.pk))
    assert default.returncode == 0
    assert f"Saved batch-{batch.pk}.zip" in default.stdout
    assert zipfile.is_zipfile(cli.home / f"batch-{batch.pk}.zip")


def test_downloading_a_batch_with_nothing_finished_exits_2(
    cli: Cli, author: Any, live: Any, tmp_path: Path
) -> None:
    batch = finished(make_batch(author, ["doomed [fail:always]"]).pk)

    result = cli.run("download", str(batch.pk), "-o", str(tmp_path / "x.zip"))

    assert result.returncode == 2
    assert "No finished images to download yet." in result.stderr
    assert not (tmp_path / "x.zip").exists()
