"""The transcript cache around dispatch (README, "Transcript cache").

A request that engages the cache (``x-bf-cache-key``, or ``proxy.cache.default_key``)
has its upload hashed as it is read. Before anything goes upstream, a hit
known from the digest answers it; otherwise the end of a streamed upload
waits for the lookup, and a hit then answers in the upstream's place (the
upstream request is abandoned before it is whole). A complete answer from
the upstream is stored.
"""

from __future__ import annotations

import time

from ..cache.lookup import CacheHit, CacheLookup
from ..cache.transcripts import CacheRequest, TranscriptCache
from ..form import repr_digest_sha256
from ..models import RequestFacts
from .base import Answer, EarlyAnswer, RequestHooks


class CachePlugin:
    """Answers repeated uploads from the cache, and fills it."""

    def __init__(self, cache: TranscriptCache) -> None:
        self._cache = cache

    def start(self, facts: RequestFacts, early: EarlyAnswer) -> RequestHooks | None:
        """Take part when the request asks for the cache (a malformed TTL is a 400)."""
        asked = self._cache.engage(facts.headers)
        return None if asked is None else _Cached(self._cache, asked, early)


class _Cached(RequestHooks):
    """One request's use of the cache."""

    hashes_audio = True
    answers_early = True

    def __init__(self, cache: TranscriptCache, asked: CacheRequest, early: EarlyAnswer) -> None:
        self._cache = cache
        self._asked = asked
        self._early = early
        self._lookup: CacheLookup | None = None

    async def before(self, facts: RequestFacts) -> Answer | None:
        """A hit known before anything is sent answers now; else the upload's end waits."""
        form = facts.form
        assert facts.caller is not None
        assert form is not None
        lookup = self._lookup = self._cache.lookup(
            self._asked,
            facts.caller,
            facts.routes[0],
            repr_digest_sha256(facts.headers),
            task=facts.task,
        )
        looking = time.monotonic()
        hit = await lookup.before_sending(form)
        if lookup.cache_id is not None:
            # It looked (a streamed upload without a digest is looked up at its end).
            facts.phase("cache.lookup", looking)
        if hit is not None:
            return _answered(facts, lookup, hit)

        def offer(hit: CacheHit) -> bool:
            entry, done = hit
            if not self._early.offer(Answer(done, entry.provider, entry.model)):
                return False
            facts.cache_debug = lookup.debug(entry)
            return True

        lookup.hold(form, offer)
        return None

    async def on_first_event(self, facts: RequestFacts) -> None:
        """The upstream answers: a miss, said in ``extra_fields.cache_debug``."""
        if self._lookup is not None:
            self._lookup.answering()
            facts.cache_debug = self._lookup.debug(None)

    async def after(self, facts: RequestFacts) -> None:
        """Keep a complete answer the upstream gave (not one the cache gave)."""
        lookup, form, answer = self._lookup, facts.form, facts.answer
        complete = facts.error is None and (facts.events_sent == 0 or facts.stream_complete)
        if lookup is None or form is None or answer is None or facts.cache_hit or not complete:
            return
        await lookup.save(answer, form, facts)


def _answered(facts: RequestFacts, lookup: CacheLookup, hit: CacheHit) -> Answer:
    """The request's answer from ``hit``, said in ``extra_fields.cache_debug``."""
    entry, done = hit
    facts.cache_debug = lookup.debug(entry)
    return Answer(done, entry.provider, entry.model)
