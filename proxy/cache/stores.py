"""Where cached transcripts are kept: this process's memory, or Redis for many replicas.

A store maps a key to bytes that expire. It knows nothing of transcripts;
:mod:`proxy.cache` decides what goes in and what a value means.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

#: Longest wait for a store: a slow store must not hold a request up for
#: longer than asking the upstream would.
STORE_TIMEOUT_S = 1.0


class CacheStoreError(Exception):
    """The store cannot be reached or refused the operation."""


class StoreFullError(CacheStoreError):
    """A store that never evicts a live entry has no room for another."""


class CacheStore(Protocol):
    """Expiring bytes by key."""

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent or expired."""

    async def put(self, key: str, value: bytes, ttl_s: float) -> int:
        """Store ``value`` for ``ttl_s`` seconds; returns how many entries made room for it."""

    async def aclose(self) -> None:
        """Release what the store holds."""


class MemoryStore:
    """Entries in this process, least recently used evicted first, bounded by bytes.

    With ``evicts`` false, a live entry is never pushed out to make room (what is kept
    is another client's credential, not a copy of something): when expired entries
    do not make room, :class:`StoreFullError` is raised instead.
    """

    def __init__(
        self, max_bytes: int, clock: Callable[[], float] = time.monotonic, *, evicts: bool = True
    ) -> None:
        self._max_bytes = max_bytes
        self._clock = clock
        self._evicts = evicts
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        """Bytes held by the values stored now."""
        return self._bytes

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> int:
        if key in self._entries:
            self._drop(key)
        if len(value) > self._max_bytes or ttl_s <= 0:
            return 0
        evicted = 0
        now = self._clock()
        if not self._evicts and self._bytes + len(value) > self._max_bytes:
            for expired in [k for k, (_, expires) in self._entries.items() if expires <= now]:
                self._drop(expired)
            if self._bytes + len(value) > self._max_bytes:
                raise StoreFullError("the store is full of entries that have not expired")
        while self._bytes + len(value) > self._max_bytes:
            oldest, (_, expires) = next(iter(self._entries.items()))
            self._drop(oldest)
            if expires > now:  # an expired entry leaving is not an eviction
                evicted += 1
        self._entries[key] = (value, now + ttl_s)
        self._bytes += len(value)
        return evicted

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= len(value)

    async def aclose(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._bytes = 0


class RedisStore:
    """Entries in Redis, shared by every replica pointed at it; Redis expires them."""

    PREFIX = "proxy:cache:"

    def __init__(self, client: Any, prefix: str = PREFIX) -> None:
        self._redis = client
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        value = await self._call(self._redis.get(self._prefix + key))
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> int:
        milliseconds = int(ttl_s * 1000)
        if milliseconds > 0:
            await self._call(self._redis.set(self._prefix + key, value, px=milliseconds))
        return 0  # Redis evicts by its own maxmemory policy, unseen from here

    async def _call(self, operation: Any) -> Any:
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                return await operation
        except Exception as exc:  # redis-py raises several unrelated classes
            raise CacheStoreError(f"redis: {exc!r}") from exc

    async def aclose(self) -> None:
        """Nothing to release: the app closes the shared client."""
