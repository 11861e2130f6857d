"""The authors' tools for staff (admin actions) and the terminal (`generate --redraw`)."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from batches.models import Batch, BatchStatus, ImageJob, ImageStatus, ImageVersion
from budgets.books import check_books
from tests.authoring.support import finished, submitted
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(db: Any) -> Client:
    client = Client()
    client.force_login(UserFactory(username="staffer", is_staff=True, is_superuser=True))
    return client


def test_staff_pause_and_resume_batches_from_the_admin(staff_client: Client, user: Any) -> None:
    queued = submitted(user, ["one"])
    done = finished(user, ["two"])
    url = "/admin/batches/batch/"

    paused = staff_client.post(
        url,
        {"action": "pause_batches", "_selected_action": [queued.pk, done.pk]},
        follow=True,
    )

    assert Batch.objects.get(pk=queued.pk).status == BatchStatus.PAUSED
    assert Batch.objects.get(pk=done.pk).status == BatchStatus.COMPLETED
    text = paused.content.decode()
    assert "Paused 1 batch(es)." in text
    assert f"#{done.pk}: The batch is completed" in text
    staff_client.post(url, {"action": "resume_batches", "_selected_action": [queued.pk]})
    assert Batch.objects.get(pk=queued.pk).status == BatchStatus.RUNNING


def test_generate_redraws_a_panel_from_the_terminal(user: Any) -> None:
    batch = finished(user, ["one", "two"])
    out = StringIO()

    call_command(
        "generate", "--user", user.username, "--redraw", f"{batch.pk}:2", "--prompt", "two, again",
        "--seed", "99", stdout=out,
    )  # fmt: skip

    assert f"Batch {batch.pk} panel 2: take 2 queued (seed 99)" in out.getvalue()
    image = ImageJob.objects.get(batch=batch, index=1)
    assert (image.status, image.prompt, image.seed) == (ImageStatus.PENDING, "two, again", 99)
    assert ImageVersion.objects.filter(image=image, version=1).exists()
    assert check_books() == []


@pytest.mark.parametrize(
    ("target", "message"),
    [("12", "BATCH:PANEL"), ("x:1", "BATCH:PANEL"), ("{batch}:0", "BATCH:PANEL"),
     ("{batch}:9", "no panel 9"), ("99999:1", "no batch 99999")],
)  # fmt: skip
def test_generate_redraw_refuses_a_bad_target(user: Any, target: str, message: str) -> None:
    batch = finished(user, ["one"])

    with pytest.raises(CommandError, match=message):
        call_command("generate", "--user", user.username, "--redraw", target.format(batch=batch.pk))

    assert ImageJob.objects.get(batch=batch).status == ImageStatus.COMPLETED


def test_generate_redraw_of_a_panel_still_drawing_says_why(user: Any) -> None:
    batch = submitted(user, ["one"])

    with pytest.raises(CommandError, match="still pending"):
        call_command("generate", "--user", user.username, "--redraw", f"{batch.pk}:1")


def test_deleting_a_batch_removes_its_earlier_takes_files_too(
    staff_client: Client, user: Any, api: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from django.core.files.storage import default_storage

    from batches import services
    from tests.authoring.support import complete_image

    batch = finished(user, ["one"])
    api.post(f"/api/v1/batches/{batch.pk}/images/0/redraw/", {}, format="json")
    complete_image(ImageJob.objects.get(batch=batch), (1, 200, 1))
    services.finalize_batch(batch.pk)
    names = [ImageVersion.objects.get().file.name, ImageJob.objects.get(batch=batch).image.name]
    assert all(default_storage.exists(name) for name in names)

    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(f"/admin/batches/batch/{batch.pk}/delete/", {"post": "yes"})

    assert not Batch.objects.filter(pk=batch.pk).exists()
    assert not any(default_storage.exists(name) for name in names)
    assert check_books() == []
