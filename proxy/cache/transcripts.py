"""The transcript cache: a repeated upload answered without paying the provider again.

Bifrost's conventions: caching engages for a request that carries
``x-bf-cache-key`` (or for every request when ``proxy.cache.default_key`` is
set); ``x-bf-cache-ttl`` sets the entry's lifetime, ``x-bf-cache-no-store:
true`` reads without writing. :class:`TranscriptCache` is the cache itself
(engaging, getting and putting entries in a store that failing is a miss);
one request's use of it is a :class:`~.lookup.CacheLookup`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import CacheSettings, parse_duration
from ..errors import InvalidRequestError
from ..governance.credentials import Caller
from ..metrics import Metrics
from ..models import Task
from ..router import Route
from .entries import CachedAnswer, cache_scope
from .lookup import CacheHit, CacheLookup
from .stores import CacheStore, CacheStoreError

log = logging.getLogger(__name__)

CACHE_KEY_HEADER = "x-bf-cache-key"
CACHE_TTL_HEADER = "x-bf-cache-ttl"
CACHE_NO_STORE_HEADER = "x-bf-cache-no-store"


@dataclass(frozen=True)
class CacheRequest:
    """How one request asked to use the cache."""

    key: str
    ttl_s: float
    no_store: bool


class TranscriptCache:
    """Looks answers up and stores them; a store that fails is a miss, never an error."""

    def __init__(self, settings: CacheSettings, store: CacheStore, metrics: Metrics) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics

    def engage(self, headers: Mapping[str, str]) -> CacheRequest | None:
        """How the request uses the cache, or None when it does not."""
        if not self._settings.enabled:
            return None
        key = headers.get(CACHE_KEY_HEADER) or self._settings.default_key
        if not key:
            return None
        ttl_s = self._settings.ttl_s
        if (ttl := headers.get(CACHE_TTL_HEADER)) is not None:
            try:
                ttl_s = parse_duration(ttl)
            except ValueError:
                raise InvalidRequestError(
                    f"{CACHE_TTL_HEADER} must be seconds or a duration such as 30s, 5m, 1h; "
                    f"got {ttl[:40]!r}",
                    code="invalid_cache_ttl",
                ) from None
        no_store = headers.get(CACHE_NO_STORE_HEADER, "").strip().lower() == "true"
        return CacheRequest(key=key, ttl_s=ttl_s, no_store=no_store)

    def lookup(
        self,
        request: CacheRequest,
        caller: Caller,
        route: Route,
        declared_sha256: bytes | None = None,
        task: Task = "transcription",
    ) -> CacheLookup:
        """One request's use of the cache, for the primary ``route``."""
        return CacheLookup(
            self,
            request,
            scope=cache_scope(caller),
            route=route,
            declared_sha256=declared_sha256,
            task=task,
        )

    async def get(self, key: str, wanted_format: str) -> CacheHit | None:
        """The entry under ``key`` and its answer in ``wanted_format``, or None on a miss."""
        try:
            raw = await self._store.get(key)
        except CacheStoreError as exc:
            log.warning("transcript cache unavailable, treated as a miss: %s", exc)
            self._metrics.cache_errors.inc()
            raw = None
        entry = CachedAnswer.decode(raw) if raw is not None else None
        answer = entry.as_format(wanted_format) if entry is not None else None
        if entry is None or answer is None:
            self._metrics.cache_misses.inc()
            return None
        self._metrics.cache_hits.inc()
        return entry, answer

    async def put(self, key: str, entry: CachedAnswer, ttl_s: float) -> None:
        """Store ``entry`` under ``key``; a failure is logged and forgotten."""
        try:
            evicted = await self._store.put(key, entry.encode(), ttl_s)
        except CacheStoreError as exc:
            log.warning("transcript cache unavailable, answer not stored: %s", exc)
            self._metrics.cache_errors.inc()
            return
        self._metrics.cache_stores.inc()
        self._metrics.cache_evictions.inc(evicted)

    def upstream_cancelled(self) -> None:
        """Count an upstream request abandoned because the cache had the answer."""
        self._metrics.cache_upstream_cancelled.inc()
