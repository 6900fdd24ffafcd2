"""The transcript cache: a repeated upload answered without paying the provider again.

Bifrost's conventions: caching engages for a request that carries
``x-bf-cache-key`` (or for every request when ``proxy.cache.default_key`` is
set); ``x-bf-cache-ttl`` sets the entry's lifetime, ``x-bf-cache-no-store:
true`` reads without writing.

An entry is keyed on what was said, not on the file's name: the sha256 of
the audio bytes (hashed as they stream through), the route, every field
that changes the answer, and the cache key, all scoped to the caller, so
one tenant never reads another's transcript. ``response_format`` is not in
the key: a stored answer serves every format it can be rendered as.

The audio's digest is known only once the whole file is read, while the
upstream request is already in flight. :meth:`CacheLookup.hold` keeps back
the end of that request's body until the cache has been asked; on a hit the
upstream request is abandoned before it is complete, so the upstream never
has a whole request to transcribe.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..answers.formats import format_of, render
from ..audio.sources import PassThroughAudio
from ..config import CacheSettings, parse_duration
from ..errors import AnsweredFromCacheError, InvalidRequestError
from ..form.fields import PROXY_ONLY_FIELDS, first_value
from ..governance.credentials import Caller
from ..metrics import Metrics
from ..models import AudioSource, FormField, RequestFacts, TranscriptDone
from ..router import Route
from .stores import CacheStore, CacheStoreError

log = logging.getLogger(__name__)

CACHE_KEY_HEADER = "x-bf-cache-key"
CACHE_TTL_HEADER = "x-bf-cache-ttl"
CACHE_NO_STORE_HEADER = "x-bf-cache-no-store"

#: Fields that do not change what was said: how the answer is framed, where
#: it may come from. Everything else the client sends is part of the key.
_NOT_IN_KEY = frozenset({"model", "response_format", "stream", *PROXY_ONLY_FIELDS})
#: Bumped whenever what a key covers changes, so old entries are not misread.
_KEY_VERSION = "transcript-v1"


@dataclass(frozen=True)
class CacheRequest:
    """How one request asked to use the cache."""

    key: str
    ttl_s: float
    no_store: bool


@dataclass(frozen=True)
class CachedAnswer:
    """A complete successful answer as stored, and who first gave it."""

    format: str
    done: TranscriptDone
    provider: str
    model: str

    def encode(self) -> bytes:
        """The entry as stored."""
        return orjson.dumps(
            {
                "format": self.format,
                "document": self.done.document,
                "text": self.done.text,
                "provider": self.provider,
                "model": self.model,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer | None:
        """The entry ``raw`` holds, or None when it is not one (then it counts as a miss)."""
        try:
            entry = orjson.loads(raw)
            document, text = entry["document"], entry["text"]
            if not (isinstance(document, dict) or isinstance(text, str)):
                return None
            done = TranscriptDone(
                raw=b"", document=document if isinstance(document, dict) else None, text=text
            )
            return cls(str(entry["format"]), done, str(entry["provider"]), str(entry["model"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None

    def as_format(self, wanted: str) -> TranscriptDone | None:
        """The answer in format ``wanted``, or None when this entry cannot give it."""
        return render(self.done, self.format, wanted)


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

    async def get(self, key: str, wanted_format: str) -> tuple[CachedAnswer, TranscriptDone] | None:
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


def cache_scope(caller: Caller) -> str:
    """Whose entries a caller may read: its virtual key's, never another tenant's."""
    if caller.virtual_key is not None:
        return f"vk:{caller.virtual_key.id}"
    if caller.direct_key is not None:
        # The caller's own provider key is its identity; only a digest is kept.
        return "direct:" + hashlib.sha256(caller.direct_key.encode()).hexdigest()
    return caller.kind


def cache_key(
    *, scope: str, request_key: str, route: Route, fields: Sequence[FormField], audio_sha256: str
) -> str:
    """The entry's key: everything that decides what the answer says."""
    relevant = sorted(
        (field.name.removesuffix("[]"), field.value)
        for field in fields
        if field.name not in _NOT_IN_KEY
    )
    # A diarized answer is another kind of document: it gets entries of its own.
    family = "diarized" if first_value(fields, "response_format") == "diarized_json" else "text"
    material = orjson.dumps(
        [
            _KEY_VERSION,
            scope,
            request_key,
            route.provider.name,
            route.model,
            family,
            audio_sha256,
            relevant,
        ]
    )
    return hashlib.sha256(material).hexdigest()


class CacheLookup:
    """One request's use of the cache: its lookups, its hit and what it stores."""

    def __init__(
        self, cache: TranscriptCache, request: CacheRequest, *, scope: str, route: Route
    ) -> None:
        self._cache = cache
        self._request = request
        self._scope = scope
        self._route = route
        #: The key last looked up (``cache_debug.cache_id``).
        self.cache_id: str | None = None
        self._missed: set[str] = set()
        #: Set once the whole form is read and the cache asked: the hit, or None.
        self.hit: asyncio.Future[tuple[CachedAnswer, TranscriptDone] | None] = (
            asyncio.get_running_loop().create_future()
        )

    def key(self, fields: Sequence[FormField], audio_sha256: str) -> str:
        """The entry key for this audio and these fields."""
        return cache_key(
            scope=self._scope,
            request_key=self._request.key,
            route=self._route,
            fields=fields,
            audio_sha256=audio_sha256,
        )

    async def find(
        self, fields: Sequence[FormField], audio_sha256: str
    ) -> tuple[CachedAnswer, TranscriptDone] | None:
        """The cached answer for this audio and these fields, in the format they ask for."""
        self.cache_id = self.key(fields, audio_sha256)
        if self.cache_id in self._missed:
            return None  # asked already (from a Repr-Digest); one miss per request
        found = await self._cache.get(
            self.cache_id, first_value(fields, "response_format") or "json"
        )
        if found is None:
            self._missed.add(self.cache_id)
        return found

    def hold(
        self,
        audio: AudioSource,
        all_fields: Callable[[], Sequence[FormField]],
        audio_sha256: Callable[[], str],
    ) -> AudioSource:
        """``audio`` whose end waits for the cache: on a hit the upstream request is abandoned.

        ``all_fields`` and ``audio_sha256`` are called once the file has been
        read, when both are known.
        """
        return _HeldAudio(audio, self, all_fields, audio_sha256)

    async def settle_in_flight(self, fields: Sequence[FormField], audio_sha256: str) -> None:
        """Ask the cache once the form is whole; raise to abandon the upstream request on a hit."""
        if not self.hit.done():
            found = await self.find(fields, audio_sha256)
            if not self.hit.done():
                self.hit.set_result(found)
        if self.hit.result() is not None:
            raise AnsweredFromCacheError("answered from the transcript cache")

    async def save(
        self, done: TranscriptDone, fields: Sequence[FormField], facts: RequestFacts
    ) -> None:
        """Store a complete successful answer, unless the request said not to."""
        if self._request.no_store or self.cache_id is None:
            return
        requested = first_value(fields, "response_format") or "json"
        entry = CachedAnswer(
            format=format_of(done, requested),
            done=done,
            provider=facts.provider or self._route.provider.name,
            model=facts.model_deployment or self._route.model,
        )
        await self._cache.put(self.cache_id, entry, self._request.ttl_s)

    def debug(self, entry: CachedAnswer | None) -> dict[str, Any]:
        """``extra_fields.cache_debug``: a direct hit and who first served it, or a miss."""
        facts: dict[str, Any] = {"cache_hit": entry is not None, "cache_id": self.cache_id}
        if entry is not None:
            facts["hit_type"] = "direct"
        facts["requested_provider"] = self._route.provider.name
        facts["requested_model"] = self._route.model
        if entry is not None:
            facts["provider_used"] = entry.provider
            facts["model_used"] = entry.model
        return facts


class _HeldAudio(PassThroughAudio):
    """An audio source whose last step is asking the cache (see :meth:`CacheLookup.hold`)."""

    def __init__(
        self,
        inner: AudioSource,
        lookup: CacheLookup,
        all_fields: Callable[[], Sequence[FormField]],
        audio_sha256: Callable[[], str],
    ) -> None:
        super().__init__(inner)
        self._lookup = lookup
        self._all_fields = all_fields
        self._audio_sha256 = audio_sha256

    async def chunks(self) -> AsyncIterator[bytes]:
        """The audio; then, before the body can end, the cache is asked."""
        async for chunk in self._inner.chunks():
            yield chunk
        await self._lookup.settle_in_flight(self._all_fields(), self._audio_sha256())
