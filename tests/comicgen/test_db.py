"""A query whose PostgreSQL connection was dropped gets one reconnect, outside transactions."""

from __future__ import annotations

import psycopg
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection, transaction

from comicgen.db import retry_once_on_a_lost_connection


def drop_this_connection() -> None:
    """Terminate this process's PostgreSQL backend from another connection, as the fault
    tests (and a restarted PostgreSQL) do."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    db = settings.DATABASES["default"]
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"],
        dbname=db["NAME"], autocommit=True,
    ) as other:  # fmt: skip
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.mark.django_db(transaction=True)
def test_a_query_outlives_its_connection_being_dropped_once() -> None:
    users = get_user_model().objects
    drop_this_connection()

    assert retry_once_on_a_lost_connection(lambda: users.count()) == 0


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_a_dropped_connection_is_not_retried() -> None:
    users = get_user_model().objects
    with transaction.atomic():
        users.count()
        drop_this_connection()
        with pytest.raises(OperationalError):
            retry_once_on_a_lost_connection(lambda: users.count())
        transaction.set_rollback(True)
    connection.close()
