"""One request's use of the transcript cache (:mod:`.transcripts`).

The audio's digest is known only once the whole file is read, while a
streamed upload's upstream request is already in flight. One request's use
of the cache is a :class:`CacheLookup`, asked in order by the cache plugin

1. :meth:`CacheLookup.before_sending`: a hit found before anything goes
   upstream, when the digest is known up front (a spooled or buffered file,
   hashed as it was read; a ``Repr-Digest`` header);
2. :meth:`CacheLookup.hold`: otherwise the end of the upload waits for the
   lookup; a hit is offered as the request's answer, and when it is taken the
   upstream request is abandoned before it is complete (the upstream never
   has a whole request to bill);
3. :meth:`CacheLookup.answering`: the upstream's answer has begun, and is
   the one given;
4. :meth:`CacheLookup.debug` for ``extra_fields.cache_debug``, and
   :meth:`CacheLookup.save` to store a complete answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..answers.formats import format_of
from ..audio.sources import LiveAudio
from ..errors import InvalidRequestError
from ..form import TranscriptionForm
from ..form.fields import first_value
from ..models import FormField, RequestFacts, Task, TranscriptDone
from ..router import Route
from .entries import CachedAnswer, cache_key

if TYPE_CHECKING:
    from .transcripts import CacheRequest, TranscriptCache

#: A cached entry and its answer in the format the request asks for.
CacheHit = tuple[CachedAnswer, TranscriptDone]


class CacheLookup:
    """One request's use of the cache: its lookups, its hit and what it stores (see the
    module's docstring for the order they are asked in)."""

    def __init__(
        self,
        cache: TranscriptCache,
        request: CacheRequest,
        *,
        scope: str,
        route: Route,
        declared_sha256: bytes | None = None,
        task: Task = "transcription",
    ) -> None:
        self._cache = cache
        self._task = task
        self._request = request
        self._scope = scope
        self._route = route
        self._declared_sha256 = declared_sha256
        self._missed: set[str] = set()
        self._answering = False
        #: The key last looked up (``cache_debug.cache_id``).
        self.cache_id: str | None = None

    def key(self, fields: Sequence[FormField], audio_sha256: str) -> str:
        """The entry key for this audio and these fields."""
        return cache_key(
            scope=self._scope,
            request_key=self._request.key,
            route=self._route,
            fields=fields,
            audio_sha256=audio_sha256,
            task=self._task,
        )

    async def find(self, fields: Sequence[FormField], audio_sha256: str) -> CacheHit | None:
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

    async def before_sending(self, form: TranscriptionForm) -> CacheHit | None:
        """A hit found before anything goes upstream, when the audio's digest is known up front.

        A spooled or buffered file was hashed as it was read. A streaming file
        is known up front only by its ``Repr-Digest``: on a hit, the rest of
        the body is read (and checked against the digest) without going
        upstream.
        """
        if form.audio_sha256 is not None:
            return await self.find(form.all_fields(), form.audio_sha256)
        if self._declared_sha256 is None or form.audio is None:
            return None
        found = await self.find(form.fields, self._declared_sha256.hex())
        if found is None:
            return None  # streamed upstream; the cache is asked again at the end of the file
        async for _ in form.audio.pieces():
            pass  # read and hashed; a digest that does not match is a 400
        every_field = form.all_fields()
        if len(every_field) != len(form.fields):
            # Fields after the file may change the key; the audio is read and gone.
            assert form.audio_sha256 is not None
            found = await self.find(every_field, form.audio_sha256)
            if found is None:
                raise InvalidRequestError(
                    "with Repr-Digest, send every field before the file: fields after it "
                    "changed the request, and the file was read without forwarding it",
                    code="fields_after_file",
                )
        return found

    def hold(self, form: TranscriptionForm, offer: Callable[[CacheHit], bool]) -> None:
        """Make the end of a streaming upload wait for the cache (see the module's docstring).

        On a hit the answer is ``offer``-ed; when it is taken, the upload never ends:
        the pass that is sending it waits until the request abandons it.
        """
        audio = form.audio
        if not isinstance(audio, LiveAudio):
            return  # whole already, and looked up before sending

        async def ask() -> None:
            assert form.audio_sha256 is not None
            fields = form.all_fields()
            if self._answering:  # the upstream's answer has begun; it is the one given
                self.cache_id = self.key(fields, form.audio_sha256)
                return
            found = await self.find(fields, form.audio_sha256)
            if found is not None and offer(found):
                self._cache.upstream_cancelled()
                # Never returns: the upstream must not get the end of a request it would
                # then transcribe (and bill); the request abandons this pass.
                await asyncio.Event().wait()

        audio.hold_end(ask)

    def answering(self) -> None:
        """The upstream's answer has begun: no hit may replace it any more."""
        self._answering = True

    async def save(
        self,
        done: TranscriptDone,
        form: TranscriptionForm,
        facts: RequestFacts,
    ) -> None:
        """Store a complete successful answer, unless the request said not to."""
        if self._request.no_store or form.audio_sha256 is None:
            return
        fields = form.all_fields()
        self.cache_id = self.key(fields, form.audio_sha256)
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
