"""`manage.py check_books [--user NAME ...]`: prove the books balance; exit 1 if they do not.

Image costs against batch `actual_cost`, batches against budget `spent`, the ledger against
both, and `reserved`/`held` against the work still open (see budgets/books.py). Run it while
batches are running and a charge may be caught half-way between two rows: a mismatch that does
not repeat on a second run was such a moment; one that repeats is real.
"""

from __future__ import annotations

import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction

from budgets.books import check_books


class Command(BaseCommand):
    help = "Check that image costs, batches, budgets and the ledger agree; exit 1 if not."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--user", action="append", default=[], help="Only this user's books (repeatable)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user_ids = None
        if options["user"]:
            users = get_user_model().objects.filter(username__in=options["user"])
            found = dict(users.values_list("username", "pk"))
            missing = sorted(set(options["user"]) - set(found))
            if missing:
                raise CommandError(f"No such user: {', '.join(missing)}")
            user_ids = list(found.values())
        # One snapshot of every table, so rows written meanwhile cannot disagree with each other
        # (unless the caller already runs inside a transaction: then it is that one's view).
        if connection.in_atomic_block:
            problems = check_books(user_ids)
        else:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                problems = check_books(user_ids)
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            self.stderr.write(
                self.style.ERROR(f"The books do not balance: {len(problems)} issue(s).")
            )
            sys.exit(1)
        self.stdout.write(self.style.SUCCESS("The books balance."))
