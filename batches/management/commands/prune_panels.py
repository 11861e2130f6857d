"""`manage.py prune_panels [--dry-run]`: remove panel files past COMICGEN_RETENTION_DAYS."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from batches.retention import prune_panels


class Command(BaseCommand):
    help = (
        "Remove the panel files of batches finished more than COMICGEN_RETENTION_DAYS ago "
        "(rows, costs and the ledger stay)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would be removed; remove nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = prune_panels(dry_run=options["dry_run"])
        verb = "would remove" if report.dry_run else "removed"
        days = settings.COMICGEN_RETENTION_DAYS
        self.stdout.write(
            f"Retention {days} days: {verb} {report.files} file(s), "
            f"{report.bytes / 1_000_000:.1f} MB, from {len(report.batches)} batch(es)"
            + (f": {', '.join(f'#{pk}' for pk in report.batches)}" if report.batches else ".")
        )
