"""`manage.py generate chapter.txt --user demo [--watch]`: submit a chapter from a terminal.

One prompt per line (blank lines and `#` comments skipped; `42 | prompt` fixes a seed), the
same validation as the API and the web form, the same budget reservation. With `--watch` it
follows the batch live from the same events the pages get, straight from the channel layer.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.template.defaultfilters import pluralize
from django.urls import reverse

from batches import events, services
from batches.api.serializers import BatchSubmitSerializer
from batches.chapter import error_lines, parse_panels, submit_body
from batches.models import Batch, BatchStatus, ImageStatus
from budgets.services import BudgetExceeded
from comicgen_cli.watch import BatchState

# With no event for this long, the counts are re-read from PostgreSQL: channel layer delivery
# is at most once, so a lost event must not leave the bar (or the ending) stuck.
RESYNC_SECONDS = 5.0
BAR_WIDTH = 30


class Command(BaseCommand):
    help = (
        "Submit a chapter (one panel prompt per line) as a batch for a user, print its id, "
        "estimate and URL; --watch follows it live until it finishes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "file", nargs="?", help="Prompts, one per line; '-' reads standard input."
        )
        parser.add_argument("--user", required=True, help="Username the batch belongs to.")
        parser.add_argument("--title", default="", help="Default: the file's name.")
        parser.add_argument("--style", default="")
        parser.add_argument("--negative-prompt", default="")
        parser.add_argument("--model", default=None)
        parser.add_argument("--priority", default=None, choices=["high", "normal", "low"])
        parser.add_argument("--width", type=int, default=None)
        parser.add_argument("--height", type=int, default=None)
        parser.add_argument("--steps", type=int, default=None)
        parser.add_argument("--guidance", type=float, default=None)
        parser.add_argument(
            "--base-url",
            default=settings.COMICGEN_PUBLIC_URL or "http://127.0.0.1:8000",
            help="Where the web app is, for the printed links (default: COMICGEN_PUBLIC_URL).",
        )
        parser.add_argument("--watch", action="store_true", help="Follow the batch until done.")
        # Authors' tools: a new take of one panel instead of a new batch.
        parser.add_argument(
            "--redraw",
            metavar="BATCH:PANEL",
            help="Redraw one panel (numbered from 1) of a batch, with a new seed; --prompt "
            "changes its prompt, --seed fixes the seed.",
        )
        parser.add_argument("--prompt", default=None, help="With --redraw: the new prompt.")
        parser.add_argument("--seed", type=int, default=None, help="With --redraw: the seed.")

    def handle(self, *args: Any, **options: Any) -> None:
        # The command prints what happened itself; the services' INFO log lines ("batch 12
        # submitted: ...") would only repeat it, mid-progress-bar. -v 2 shows them.
        if options["verbosity"] < 2:
            logging.disable(logging.INFO)
        try:
            self._generate(options)
        finally:
            logging.disable(logging.NOTSET)

    def _generate(self, options: dict[str, Any]) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user named {options['user']!r}.")
        if options["redraw"]:
            self._redraw(user, options)
            return
        if not options["file"]:
            raise CommandError("Give a file of prompts (or '-'), or --redraw BATCH:PANEL.")
        text = self._read(options["file"])
        panels = parse_panels(text)
        if not panels:
            raise CommandError("No prompts found: write one per line (# starts a comment).")
        title = options["title"] or (
            Path(options["file"]).stem if options["file"] != "-" else "Untitled chapter"
        )
        body = submit_body(
            panels=panels,
            title=title,
            style=options["style"],
            negative_prompt=options["negative_prompt"],
            priority=options["priority"] or "",
            params={
                "model": options["model"],
                "width": options["width"],
                "height": options["height"],
                "steps": options["steps"],
                "guidance": options["guidance"],
            },
        )
        serializer = BatchSubmitSerializer(data=body)
        if not serializer.is_valid():
            lines = error_lines(serializer.errors, panels)
            raise CommandError("Invalid batch:\n" + "\n".join(f"  {line}" for line in lines))
        try:
            batch = services.submit_batch(
                user, serializer.validated_data, serializer.resolved_images()
            ).batch
        except BudgetExceeded as error:
            raise CommandError(str(error)) from None

        base = options["base_url"].rstrip("/")
        self.stdout.write(
            f"Batch {batch.pk} submitted: “{batch.title}”, {len(panels)} "
            f"panel{pluralize(len(panels))}, "
            f"estimated {batch.estimated_cost:.4f} {batch.currency}.\n"
            f"  Follow it at {base}{reverse('batch-detail', args=[batch.pk])}"
        )
        if not options["watch"]:
            return
        try:
            status = asyncio.run(Watcher(batch.pk, self.stdout).run())
        except KeyboardInterrupt:
            sys.exit(130)
        self._summary(batch.pk, base)
        if status not in (BatchStatus.COMPLETED, BatchStatus.PARTIAL):
            sys.exit(1)

    def _redraw(self, user: Any, options: dict[str, Any]) -> None:
        """--redraw BATCH:PANEL: a new take of one panel (batches/authoring.py), priced and
        reserved like a submit; --watch follows the batch until it ends again."""
        from batches import authoring

        batch_part, _, panel_part = options["redraw"].partition(":")
        if not (batch_part.isdigit() and panel_part.isdigit() and int(panel_part) >= 1):
            raise CommandError("--redraw takes BATCH:PANEL, e.g. 12:3 (panels count from 1).")
        batch = Batch.objects.visible_to(user).filter(pk=int(batch_part)).first()
        if batch is None:
            raise CommandError(f"{options['user']} has no batch {batch_part}.")
        image = batch.images.filter(index=int(panel_part) - 1).first()
        if image is None:
            raise CommandError(f"Batch {batch.pk} has no panel {panel_part}.")
        prompt = options["prompt"].strip() if options["prompt"] is not None else None
        if prompt is not None and not 1 <= len(prompt) <= 2000:
            raise CommandError("--prompt must be 1 to 2000 characters.")
        if options["seed"] is not None and not 0 <= options["seed"] < 2**32:
            raise CommandError("--seed must be between 0 and 4294967295.")
        request = authoring.RedrawRequest(prompt=prompt, seed=options["seed"])
        try:
            image = authoring.redraw_image(batch, image, request)
        except (services.StateConflict, BudgetExceeded) as error:
            raise CommandError(str(error)) from None
        base = options["base_url"].rstrip("/")
        self.stdout.write(
            f"Batch {batch.pk} panel {image.panel_number}: take {image.version} queued "
            f"(seed {image.seed}); the take before it is kept.\n"
            f"  Follow it at {base}{reverse('batch-detail', args=[batch.pk])}"
        )
        if options["watch"]:
            status = asyncio.run(Watcher(batch.pk, self.stdout).run())
            self._summary(batch.pk, base)
            if status not in (BatchStatus.COMPLETED, BatchStatus.PARTIAL):
                sys.exit(1)

    def _read(self, name: str) -> str:
        if name == "-":
            return sys.stdin.read()
        try:
            return Path(name).read_text(encoding="utf-8")
        except OSError as error:
            raise CommandError(f"Cannot read {name}: {error.strerror}") from None

    def _summary(self, batch_id: int, base: str) -> None:
        batch = Batch.objects.get(pk=batch_id)
        counts = batch.status_counts()
        folders = sorted(
            {
                str(Path(settings.MEDIA_ROOT) / Path(name).parent)
                for name in batch.images.exclude(image="").values_list("image", flat=True)
            }
        )
        download = f"{base}{reverse('batch-download', args=[batch.pk])}"
        self.stdout.write(
            f"Batch {batch.pk} {batch.status}: {counts['completed']} completed, "
            f"{counts['failed']} failed, {counts['cancelled']} cancelled of {counts['total']}.\n"
            f"  Cost: {batch.actual_cost:.4f} {batch.currency} "
            f"(estimated {batch.estimated_cost:.4f}).\n"
            f"  Images: {', '.join(folders) or '(none)'}\n"
            f"  ZIP: {download} (with your session or an API token)"
        )


class Watcher:
    """Follows one batch: joins its group on the channel layer, resyncs from PostgreSQL, then
    draws a progress line from the events until the batch is terminal. What it knows of the
    batch is the CLI's BatchState, fed the same events: among them each panel's cost, so the
    running cost shows as panels are charged, not only once the batch ends."""

    def __init__(self, batch_id: int, out: Any) -> None:
        """`out` is the command's OutputWrapper (its `ending` lets a line be redrawn)."""
        self.batch_id = batch_id
        self.out = out
        self.state = BatchState(batch_id)

    @property
    def status(self) -> str:
        return self.state.status

    async def run(self) -> str:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        group = events.group_name(self.batch_id)
        # Join before reading the state: whatever changes after the read arrives as an event.
        await layer.group_add(group, channel)
        try:
            await self.resync()
            while not self.state.finished:
                try:
                    message = await asyncio.wait_for(layer.receive(channel), RESYNC_SECONDS)
                except TimeoutError:
                    await self.resync()
                    continue
                for event in message.get("events", []):
                    if self.state.apply(event):
                        self.draw()
                if self.state.finished:
                    # The event says so; the database is the truth (and has the final cost).
                    await self.resync()
        except (KeyboardInterrupt, asyncio.CancelledError):
            self.out.write("\nStopped watching; the batch keeps running.\n")
            raise
        finally:
            await layer.group_discard(group, channel)
            # The reads ran on asgiref's executor thread; its connection would outlive us.
            await database_sync_to_async(connections.close_all)()
        self.out.write("\n")
        return self.status

    async def resync(self) -> None:
        self.state.load(await _read_state(self.batch_id))
        self.draw()

    def draw(self) -> None:
        counts = self.state.counts
        total = counts.get("total", 0) or 1
        completed = counts.get(ImageStatus.COMPLETED, 0)
        failed = counts.get(ImageStatus.FAILED, 0) + counts.get(ImageStatus.CANCELLED, 0)
        active = sum(
            counts.get(s, 0)
            for s in (ImageStatus.SUBMITTED, ImageStatus.RUNNING, ImageStatus.RETRYING)
        )
        filled = round(BAR_WIDTH * completed / total)
        broken = round(BAR_WIDTH * failed / total)
        bar = "█" * filled + "x" * broken + "·" * max(0, BAR_WIDTH - filled - broken)
        line = (
            f"\r[{bar}] {completed}/{counts.get('total', 0)} done, {failed} failed, "
            f"{active} rendering · {self.state.cost:.4f} {self.state.currency} · "
            f"{self.status:<9}"
        )
        self.out.write(line, ending="")
        self.out.flush()


@database_sync_to_async
def _read_state(batch_id: int) -> dict[str, Any]:
    batch = Batch.objects.get(pk=batch_id)
    return {
        "seq": batch.seq,
        "status": batch.status,
        "counts": batch.status_counts(),
        "actual_cost": str(batch.actual_cost),
        "currency": batch.currency,
    }
