"""Retention: panel files of batches finished longer ago than COMICGEN_RETENTION_DAYS go.

The rows stay (prompts, seeds, params, statuses, costs) and so does the ledger: only the PNG
files of every take are removed, the file fields emptied, and the batch stamped
`panels_expired_at`, so the pages and the API can say the images expired rather than show a
broken image. A batch a redraw or retry reopens after that has its new takes removed in their
turn, once it has been finished for the retention again. A beat task runs it
(CELERY_BEAT_SCHEDULE); `manage.py prune_panels --dry-run` shows what would go.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from batches.models import BATCH_TERMINAL, Batch, ImageJob, ImageVersion

logger = logging.getLogger(__name__)


@dataclass
class PruneReport:
    batches: list[int] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    dry_run: bool = False


def not_pruned_since_finish() -> Q:
    """Batches that may have files again: never pruned, or finished again since the last prune.
    A redraw or a retry reopens a pruned batch and draws new takes; once it has finished again
    those take their own retention from that finish, as a new batch's would, instead of being
    kept for ever (`panels_expired_at` is the last prune, not "nothing left to remove")."""
    return Q(panels_expired_at__isnull=True) | Q(panels_expired_at__lt=F("finished_at"))


def expired_batches(now: datetime | None = None) -> list[Batch]:
    """Finished batches past the retention whose files are still there, oldest first."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.COMICGEN_RETENTION_DAYS)
    return list(
        Batch.objects.filter(
            not_pruned_since_finish(), status__in=BATCH_TERMINAL, finished_at__lt=cutoff
        ).order_by("finished_at")
    )


def _size(name: str) -> int:
    try:
        return default_storage.size(name)
    except (OSError, NotImplementedError):
        return 0


def prune_panels(*, now: datetime | None = None, dry_run: bool = False) -> PruneReport:
    """Remove the panel files of batches past the retention; keep every row and the ledger.
    Each batch is claimed with a conditional UPDATE first, so two runs never prune one twice,
    and a batch reopened meanwhile (a redraw clears finished_at) is left alone."""
    report = PruneReport(dry_run=dry_run)
    stamp = now or timezone.now()
    for batch in expired_batches(now):
        images = ImageJob.objects.filter(batch=batch).exclude(image="")
        versions = ImageVersion.objects.filter(image__batch=batch).exclude(file="")
        names = list(images.values_list("image", flat=True)) + list(
            versions.values_list("file", flat=True)
        )
        if dry_run:
            report.batches.append(batch.pk)
            report.files += len(names)
            report.bytes += sum(_size(name) for name in names)
            continue
        with transaction.atomic():
            # Image rows before the batch row, the order a redraw, a retry and a chunk's pass
            # take them in: claiming the batch first deadlocked with a redraw of one of its
            # panels. Whichever comes second waits; a prune after a redraw finds the batch
            # reopened and leaves it alone.
            images.lock_rows()
            claimed = Batch.objects.filter(
                not_pruned_since_finish(),
                pk=batch.pk,
                status__in=BATCH_TERMINAL,
                finished_at=batch.finished_at,
            ).update(panels_expired_at=stamp)
            if not claimed:
                continue
            images.update(image="")
            versions.update(file="")
        # Files go after the rows commit: a crash between leaves files nobody points to (a
        # storage sweep can find them), never a row pointing to a file that is gone.
        for name in names:
            report.bytes += _size(name)
            default_storage.delete(name)
        report.batches.append(batch.pk)
        report.files += len(names)
        logger.info("batch %s: panel files removed after retention (%s files)", batch.pk,
                    len(names))  # fmt: skip
    return report
