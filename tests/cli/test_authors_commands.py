"""`comicgen redraw`, `select`, `pause`, `resume` and `export`: the authors' tools from a
terminal, against the live stack."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from batches.models import IMAGE_IN_FLIGHT, Batch, BatchStatus, ImageJob, ImageStatus
from comicgen_cli.main import export_target
from tests.cli.conftest import Cli
from tests.conftest import wait_for
from tests.factories import UserFactory
from tests.support.books import assert_books_match_the_bill
from tests.web.conftest import make_batch


def finished(batch_id: int) -> Batch:
    return wait_for(lambda: (b := Batch.objects.get(pk=batch_id)).is_terminal and b)


@pytest.mark.integration
def test_redraw_draws_a_new_take_and_select_picks_the_old_one_back(
    cli: Cli, author: Any, live: Any
) -> None:
    batch = finished(make_batch(author, ["Mara opens the vault door", "close-up of her face"]).pk)
    old_seed = ImageJob.objects.get(batch=batch, index=0).seed

    redrawn = cli.run("redraw", str(batch.pk), "2", "--prompt", "her face, lit red", "--watch")

    assert redrawn.returncode == 0, redrawn.stderr
    assert f"Panel 2 of batch {batch.pk}: take 2 is pending" in redrawn.stdout
    assert f"Batch {batch.pk} completed: 2 completed" in redrawn.stdout
    shown = json.loads(cli.run("show", str(batch.pk), "--json").stdout)["images"][1]
    assert [take["prompt"] for take in shown["versions"]] == [
        "close-up of her face",
        "her face, lit red",
    ]
    assert (shown["version"], shown["selected_version"]) == (2, None)

    selected = cli.run("select", str(batch.pk), "2", "1")

    assert selected.returncode == 0, selected.stderr
    assert f"Panel 2 of batch {batch.pk}: take 1 selected (takes: 1, 2)" in selected.stdout
    assert ImageJob.objects.get(batch=batch, index=1).selected_version == 1
    missing = cli.run("select", str(batch.pk), "2", "7")
    assert missing.returncode == 2
    assert "Panel 2 has no take 7 (takes: 1, 2)." in missing.stderr

    kept = cli.run("redraw", str(batch.pk), "1", "--keep-seed", "--json")

    assert kept.returncode == 0, kept.stderr
    assert (json.loads(kept.stdout)["seed"], json.loads(kept.stdout)["version"]) == (old_seed, 2)
    assert finished(batch.pk).status == BatchStatus.COMPLETED
    assert_books_match_the_bill(live.emulator)


@pytest.mark.integration
def test_pause_stops_new_jobs_and_resume_watch_finishes_the_batch(
    cli: Cli, author: Any, live: Any
) -> None:
    live.emulator.configure(latency=2.0)  # the batch is still running when the CLI pauses it
    batch = make_batch(author, [f"panel {n}" for n in range(30)])
    images = ImageJob.objects.filter(batch=batch)
    wait_for(lambda: images.exclude(runpod_job_id="").exists(), timeout=30)

    paused = cli.run("pause", str(batch.pk))

    assert paused.returncode == 0, paused.stderr
    assert f"Go on with: comicgen resume {batch.pk}" in paused.stdout
    wait_for(lambda: not images.filter(status__in=IMAGE_IN_FLIGHT).exists(), timeout=30)
    assert Batch.objects.get(pk=batch.pk).status == BatchStatus.PAUSED
    assert images.filter(status=ImageStatus.PENDING).exists()  # nothing new was submitted
    again = cli.run("pause", str(batch.pk))
    assert again.returncode == 2
    assert f"Cannot pause batch {batch.pk}: The batch is paused" in again.stderr

    live.emulator.configure(latency=0.05)
    resumed = cli.run("resume", str(batch.pk), "--watch")

    assert resumed.returncode == 0, resumed.stderr
    assert f"Batch {batch.pk} completed: 30 completed" in resumed.stdout
    assert Batch.objects.get(pk=batch.pk).status == BatchStatus.COMPLETED
    over = cli.run("resume", str(batch.pk), "--json")
    assert over.returncode == 2
    assert json.loads(over.stdout)["code"] == "conflict"
    assert_books_match_the_bill(live.emulator)


@pytest.mark.integration
def test_export_saves_a_pdf_under_the_servers_name_and_a_cbz(
    cli: Cli, author: Any, live: Any
) -> None:
    panels = [f"panel {n}" for n in range(5)]
    batch = finished(make_batch(author, panels, title="Chapter 3: The Vault").pk)

    pdf = cli.run("export", str(batch.pk))
    cbz = cli.run("export", str(batch.pk), "--format", "cbz", "-o", "out.cbz", "--json")

    assert pdf.returncode == 0, pdf.stderr
    assert "Saved Chapter-3-The-Vault.pdf (2 pages," in pdf.stdout
    data = (cli.home / "Chapter-3-The-Vault.pdf").read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 2
    assert cbz.returncode == 0, cbz.stderr
    answer = json.loads(cbz.stdout)
    assert (answer["path"], answer["pages"], answer["format"]) == ("out.cbz", 2, "cbz")
    with zipfile.ZipFile(cli.home / "out.cbz") as archive:
        assert archive.namelist() == ["page-001.jpg", "page-002.jpg", "ComicInfo.xml"]
        assert b"<Title>Chapter 3: The Vault</Title>" in archive.read("ComicInfo.xml")
    assert not list(cli.home.glob("*.part"))


@pytest.mark.integration
def test_another_users_batch_and_a_missing_panel_exit_2(cli: Cli, author: Any, live: Any) -> None:
    theirs = finished(make_batch(UserFactory(), ["their panel"]).pk)
    mine = finished(make_batch(author, ["one", "two"]).pk)

    exported = cli.run("export", str(theirs.pk))
    redrawn = cli.run("redraw", str(mine.pk), "9")
    zero = cli.run("select", str(mine.pk), "0", "1")

    assert exported.returncode == 2
    assert "does not exist, or it is not yours" in exported.stderr
    assert list(cli.home.iterdir()) == []
    assert redrawn.returncode == 2
    assert f"Batch {mine.pk} has no panel 9: its panels are 1 to 2." in redrawn.stderr
    assert zero.returncode == 2
    assert "0 is not in the range x>=1" in zero.stderr
    assert not ImageJob.objects.filter(version__gt=1).exists()


@pytest.mark.parametrize(
    ("server_name", "saved_as"),
    [
        ("Chapter-3.pdf", "Chapter-3.pdf"),
        ("../../.bashrc/Chapter-3.pdf", "Chapter-3.pdf"),  # only the last component
        ("C:\\Users\\x\\Chapter-3.pdf", "Chapter-3.pdf"),
        ("/etc/passwd", "batch-7.pdf"),  # not a PDF's name
        (".hidden.pdf", "batch-7.pdf"),
        ("a;rm -rf.pdf", "batch-7.pdf"),
        ("chapter\n.pdf", "batch-7.pdf"),
        ("..", "batch-7.pdf"),
        (None, "batch-7.pdf"),
    ],
)
def test_export_never_saves_outside_the_current_folder(
    server_name: str | None, saved_as: str
) -> None:
    assert export_target(server_name, 7, "pdf") == Path(saved_as)
