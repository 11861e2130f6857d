"""`manage.py generate chapter.txt --user demo [--watch]`."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from batches.models import Batch, BatchStatus, ImageStatus
from budgets.models import Budget
from budgets.services import get_budget

CHAPTER = """# Chapter 3
Mara opens the vault door

7 | close-up of her face
the empty vault
"""


@pytest.fixture
def chapter(tmp_path: Path) -> Path:
    path = tmp_path / "chapter-3.txt"
    path.write_text(CHAPTER)
    return path


@pytest.mark.django_db
def test_it_submits_a_chapter_and_prints_the_batch(chapter: Path, user: Any) -> None:
    out = StringIO()

    call_command(
        "generate",
        str(chapter),
        "--user",
        user.username,
        "--style",
        "ink",
        "--priority",
        "high",
        "--width",
        "512",
        "--height",
        "512",
        "--steps",
        "10",
        stdout=out,
    )

    batch = Batch.objects.get(user=user)
    assert batch.title == "chapter-3"
    assert batch.style == "ink"
    assert batch.priority == "high"
    images = list(batch.images.order_by("index"))
    assert [image.prompt for image in images] == [
        "Mara opens the vault door",
        "close-up of her face",
        "the empty vault",
    ]
    assert images[1].seed == 7
    assert images[0].params["width"] == 512
    assert images[0].params["steps"] == 10
    assert batch.reserved == batch.estimated_cost
    text = out.getvalue()
    assert f"Batch {batch.pk} submitted" in text
    assert f"estimated {batch.estimated_cost:.4f} USD" in text
    assert f"/batches/{batch.pk}/" in text


@pytest.mark.django_db
def test_it_reports_invalid_input_by_line(chapter: Path, user: Any) -> None:
    with pytest.raises(CommandError, match="width: Must be a multiple of 8"):
        call_command("generate", str(chapter), "--user", user.username, "--width", "500")
    chapter.write_text("fine\n" + "x" * 2001 + "\n")
    with pytest.raises(CommandError, match="line 2: Ensure this field has no more than 2000"):
        call_command("generate", str(chapter), "--user", user.username)
    assert not Batch.objects.exists()


@pytest.mark.django_db
def test_it_refuses_over_budget_and_creates_nothing(chapter: Path, user: Any) -> None:
    Budget.objects.filter(pk=get_budget(user).pk).update(limit=Decimal("0.0001"))

    with pytest.raises(CommandError, match="remains of your monthly budget"):
        call_command("generate", str(chapter), "--user", user.username)

    assert not Batch.objects.exists()


@pytest.mark.django_db
def test_it_names_a_missing_user_or_file(chapter: Path) -> None:
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("generate", str(chapter), "--user", "nobody")


@pytest.mark.integration
def test_watch_follows_the_batch_live_until_it_finishes(
    live: Any, user: Any, tmp_path: Path
) -> None:
    live.emulator.configure(latency=0.2)
    chapter = tmp_path / "small.txt"
    chapter.write_text("panel one\npanel two\npanel three\ndoomed [fail:always]\n")
    out = StringIO()

    call_command(
        "generate",
        str(chapter),
        "--user",
        user.username,
        "--width",
        "128",
        "--height",
        "128",
        "--steps",
        "4",
        "--watch",
        stdout=out,
    )  # partial: exit code 0, no SystemExit

    batch = Batch.objects.get(user=user)
    assert batch.status == BatchStatus.PARTIAL
    text = out.getvalue()
    progress_lines = [line for line in text.split("\r") if "done," in line]
    assert len(progress_lines) >= 3  # drawn from events as they came, not once at the end
    assert "3/4 done, 1 failed" in text
    assert f"Batch {batch.pk} partial: 3 completed, 1 failed, 0 cancelled of 4." in text
    assert f"Cost: {batch.actual_cost:.4f} USD" in text
    folder = Path(batch.images.filter(status=ImageStatus.COMPLETED).first().image.path).parent
    assert str(folder) in text
    assert f"/api/v1/batches/{batch.pk}/download/" in text


@pytest.mark.integration
def test_watch_exits_with_1_when_the_batch_fails(live: Any, user: Any, tmp_path: Path) -> None:
    chapter = tmp_path / "doomed.txt"
    chapter.write_text("doomed [fail:always]\n")

    with pytest.raises(SystemExit) as exit_info:
        call_command(
            "generate",
            str(chapter),
            "--user",
            user.username,
            "--width",
            "128",
            "--height",
            "128",
            "--steps",
            "4",
            "--watch",
            stdout=StringIO(),
        )

    assert exit_info.value.code == 1
    assert Batch.objects.get(user=user).status == BatchStatus.FAILED


@pytest.mark.django_db
def test_it_says_panel_for_one_and_keeps_the_services_info_lines_out(
    tmp_path: Path, user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    chapter = tmp_path / "one.txt"
    chapter.write_text("a single splash panel\n")
    out = StringIO()

    with caplog.at_level("INFO"):
        call_command("generate", str(chapter), "--user", user.username, stdout=out)

    assert "1 panel, estimated" in out.getvalue()
    assert "1 panels" not in out.getvalue()
    assert [r.getMessage() for r in caplog.records if r.levelname == "INFO"] == []
    # -v 2 shows them, for whoever wants to see what the services did.
    with caplog.at_level("INFO"):
        call_command("generate", str(chapter), "--user", user.username, "-v", "2", stdout=out)
    assert any("submitted" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_watch_shows_the_cost_growing_while_the_batch_runs(
    live: Any, user: Any, tmp_path: Path
) -> None:
    live.emulator.configure(latency=0.5, workers=1)
    chapter = tmp_path / "slow.txt"
    chapter.write_text("one\ntwo\nthree\n")
    out = StringIO()

    call_command("generate", str(chapter), "--user", user.username, "--watch", stdout=out)

    batch = Batch.objects.get(user=user)
    assert batch.status == BatchStatus.COMPLETED
    running = [line for line in out.getvalue().split("\r") if "· running" in line]
    costs = [Decimal(line.split(" · ")[1].split()[0]) for line in running]
    assert any(Decimal(0) < cost < batch.actual_cost for cost in costs), running
