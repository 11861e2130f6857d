"""Database helpers shared by the apps."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

T = TypeVar("T")


def retry_once_on_a_lost_connection(query: Callable[[], T]) -> T:
    """Run a query; if PostgreSQL dropped the connection under it, reconnect and run it once
    more. Only outside a transaction: a write that failed with its connection was not
    committed, so running it again is safe, while a transaction must fail as a whole."""
    try:
        return query()
    except (OperationalError, InterfaceError):
        if connection.in_atomic_block:
            raise
        connection.close()
        return query()
