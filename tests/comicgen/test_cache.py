"""Django's cache shares one Redis connection pool per process: under ASGI each request runs
in a thread of its own, with cache objects of its own, and each used to connect anew."""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache import caches


def test_cache_objects_of_different_threads_share_one_connection_pool() -> None:
    pools: list[Any] = []

    def request(number: int) -> None:  # a thread of its own, as each ASGI request's sync code
        cache = caches["default"]
        cache.set(f"test-shared-pool-{number}", number, 5)
        assert cache.get(f"test-shared-pool-{number}") == number
        pools.append(cache._cache.get_client().connection_pool)  # type: ignore[attr-defined]

    for number in range(2):
        thread = threading.Thread(target=request, args=(number,))
        thread.start()
        thread.join()

    assert pools[0] is pools[1]


def test_caches_with_other_options_get_pools_of_their_own() -> None:
    from comicgen.cache import SharedConnectionPool

    url = "redis://127.0.0.1:1/0"
    one = SharedConnectionPool.from_url(url, socket_timeout=1)

    assert SharedConnectionPool.from_url(url, socket_timeout=1) is one
    assert SharedConnectionPool.from_url(url, socket_timeout=2) is not one
