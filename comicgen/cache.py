"""One Redis connection pool per process for Django's cache.

Django keeps a cache object per thread (per request context under ASGI), and each of its
Redis clients builds connection pools of its own. Under ASGI every request runs its sync code
in a new thread, so every request that touched the cache (each API call, through DRF's
throttle) opened a new TCP connection to Redis. CACHES' `pool_class` is this class, whose
`from_url` lends the one pool made for that URL and those options instead.
"""

from __future__ import annotations

import threading
from typing import Any

import redis


class SharedConnectionPool(redis.ConnectionPool):
    _shared_pools: dict[tuple[str, str], redis.ConnectionPool] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Any:
        """The process's pool for this URL and these options (one per cache in CACHES), made on
        first use. redis-py's pool is thread-safe, and one used in a forked child replaces its
        connections there."""
        key = (url, repr(sorted(kwargs.items(), key=lambda item: item[0])))
        with cls._shared_lock:
            pool = cls._shared_pools.get(key)
            if pool is None:
                pool = cls._shared_pools[key] = redis.ConnectionPool.from_url(url, **kwargs)
            return pool
