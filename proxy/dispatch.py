"""How one upload gets to an answer: the way it is sent, chosen once, behind one interface.

An upload under its routes' upload limit is sent whole through them, with
retries and fallbacks (:class:`RouteDispatch`); one over it is cut into
chunks (the ``cut`` given to :class:`Dispatcher`, which is
:mod:`proxy.long_audio`'s); one whose length is not known until it has all
arrived is sent whole until it crosses the limit, then cut
(:class:`UntilOverLimit`). Each is a :class:`Dispatch`: the handler reads
its events and asks who served it, never which way it went.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from .audio.sources import LiveAudio
from .audio.spool import Spool
from .config import NetworkConfig
from .errors import (
    BadGatewayError,
    GatewayTimeoutError,
    ProxyError,
    UploadOverLimitError,
    UpstreamError,
)
from .form import PIECE_BYTES
from .metrics import Metrics
from .models import AudioSource, FormField, Task, TranscriptEvent, UpstreamCall
from .router import Route

log = logging.getLogger(__name__)

#: Failures of the upstream or of the way to it, which another attempt (or
#: another provider) may not repeat. A failure of the request itself, or of
#: the client's side of it, ends the request.
_UPSTREAM_FAILURES = (UpstreamError, BadGatewayError, GatewayTimeoutError)


@dataclass(frozen=True)
class AttemptStarted:
    """An upstream try about to begin, as the hooks around dispatch are told of it."""

    route: Route
    #: The route's place among the request's: 0 the primary, then each fallback.
    fallback: int = 0
    #: 0 for the route's first try, then 1, 2, ... for its retries.
    retry: int = 0
    #: The route whose failure led to this one (a fallback's first try).
    after: Route | None = None
    #: A long recording's chunk: its index and where it lies in the recording (s).
    chunk: int | None = None
    span_s: tuple[float, float] | None = None
    #: Headers for this try's upstream request, which hooks may add to in ``on_attempt``
    #: (a trace's ``traceparent``); a provider sends only the propagation headers among
    #: them, never in place of its own. Not part of the try's identity.
    headers: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class AttemptEnded:
    """How an upstream try ended: its status (200 when it answered), and its error."""

    status: int
    error: ProxyError | None = None


class DispatchHooks(Protocol):
    """What a dispatch tells the hooks around it (:mod:`proxy.plugins`)."""

    async def on_attempt(self, attempt: AttemptStarted) -> None:
        """An upstream try begins."""

    async def on_attempt_end(self, attempt: AttemptStarted, ended: AttemptEnded) -> None:
        """An upstream try is over: answered whole, or failed."""

    async def on_audio(self, seconds: float) -> None:
        """The audio reaches ``seconds`` before more of it is sent on; raises to refuse."""


class NoHooks:
    """Hooks that do nothing: a dispatch nobody watches (a test's, a benchmark's)."""

    async def on_attempt(self, attempt: AttemptStarted) -> None:
        """Nothing."""

    async def on_attempt_end(self, attempt: AttemptStarted, ended: AttemptEnded) -> None:
        """Nothing."""

    async def on_audio(self, seconds: float) -> None:
        """Nothing."""


@dataclass(frozen=True)
class TranscriptionJob:
    """One upload to be answered: where it may go, and what it carries."""

    #: The primary route, then one per fallback.
    routes: Sequence[Route]
    #: The client's fields sent before the file (the rest follow it upstream).
    fields: Sequence[FormField]
    audio: AudioSource
    #: Passed upstream as ``x-request-id``, so one id follows the request.
    request_id: str | None = None
    #: A provider key the client brought (``allow_direct_keys``), used instead of ours.
    api_key: str | None = field(default=None, repr=False)
    task: Task = "transcription"
    #: Told of each upstream try, and of the audio's length before audio cut or decoded
    #: here is sent on.
    hooks: DispatchHooks = field(default_factory=NoHooks)


@dataclass(frozen=True)
class Served:
    """Who answered, as the answer reports it (``extra_fields``)."""

    route: Route
    #: Every attempt, when the answer is not the primary's first try.
    attempts: list[dict[str, Any]] | None = None
    #: How many chunks a long upload was cut into (None: it was sent whole).
    audio_chunks: int | None = None


class Dispatch(Protocol):
    """One upload's way to an answer."""

    @property
    def served(self) -> Served:
        """Who is answering: the primary until a route answers, the whole story at the end."""

    def events(self) -> AsyncGenerator[TranscriptEvent, None]:
        """Delta events, then one :class:`~proxy.models.TranscriptDone`.

        Before its first event it raises the request's error (the primary's
        when every route failed upstream); after it, nothing is tried again.
        """


#: How an upload past ``limit`` bytes is cut and sent: ``cut(job, limit)``.
Cut = Callable[["TranscriptionJob", int], Dispatch]


def upload_limit(routes: Sequence[Route]) -> int | None:
    """The smallest upload limit among ``routes`` (any of them may end up serving it)."""
    limits = [limit for r in routes if (limit := r.provider.capabilities.max_upload) is not None]
    return min(limits) if limits else None


def may_retry(routes: Sequence[Route]) -> bool:
    """Whether the request may need its upload more than once."""
    return len(routes) > 1 or routes[0].provider.network.max_retries > 0


class Dispatcher:
    """Chooses each upload's way, once, from its size and its routes' upload limit."""

    def __init__(
        self,
        *,
        cut: Cut,
        metrics: Metrics,
        spool_dir: str | None = None,
        max_spool_bytes: int = 1024 * 1024 * 1024,
    ) -> None:
        self._cut = cut
        self._metrics = metrics
        self._spool_dir = spool_dir
        self._max_spool_bytes = max_spool_bytes

    async def dispatch(self, job: TranscriptionJob, declared_length: int | None) -> Dispatch:
        """The way for ``job``; ``declared_length`` is its body's Content-Length, if any.

        A live upload that may be needed again (a retry, a fallback, a cut
        once it proves too long) is recorded as it streams; any other
        touches no disk at all.
        """
        audio = job.audio
        limit = upload_limit(job.routes)
        # The body's length is the file's and a few hundred bytes of fields.
        size = audio.size if audio.size is not None else declared_length
        if limit is not None and size is not None and size > limit:
            return self._cut(_unheld(job), limit)
        whole = RouteDispatch(job)
        if not isinstance(audio, LiveAudio):
            return whole
        if limit is not None and size is None:
            # Too long or not is found out on the way: what was read is kept
            # so that the recording can still be cut.
            await self._record(audio, limit + 2 * PIECE_BYTES)
            return UntilOverLimit(job, audio, limit, whole=whole, cut=self._cut)
        if may_retry(job.routes):
            await self._record(audio, self._max_spool_bytes)
        return whole

    async def _record(self, audio: LiveAudio, max_bytes: int) -> None:
        spool = await Spool.create(self._spool_dir, written=self._metrics.spool_bytes)
        audio.record(spool, max_bytes)


def _unheld(job: TranscriptionJob) -> TranscriptionJob:
    """``job`` with its upload's end held back by nothing: a cut upload's chunks are sent
    as it arrives, so the cache's check at its end could only come after answers began."""
    if isinstance(job.audio, LiveAudio):
        job.audio.hold_end(None)
    return job


class UntilOverLimit:
    """An upload of unknown length: sent whole until it crosses the limit, then cut.

    The whole request is abandoned upstream before its body is complete, and
    the recording (kept since the first byte) is cut from its start.
    """

    def __init__(
        self, job: TranscriptionJob, audio: LiveAudio, limit: int, *, whole: Dispatch, cut: Cut
    ) -> None:
        self._job = job
        self._audio = audio
        self._limit = limit
        self._cut = cut
        self._current = whole

    @property
    def served(self) -> Served:
        """Who the way taken says served it."""
        return self._current.served

    async def events(self) -> AsyncGenerator[TranscriptEvent, None]:
        """The whole upload's events, or, past the limit, the cut one's."""
        self._audio.limit(self._limit)
        async with aclosing(self._current.events()) as events:
            try:
                first = await anext(events, None)
            except UploadOverLimitError:
                pass  # what was sent is abandoned
            else:
                if first is not None:
                    yield first
                async for event in events:
                    yield event
                return
        self._audio.limit(None)
        self._current = self._cut(_unheld(self._job), self._limit)
        async with aclosing(self._current.events()) as events:
            async for event in events:
                yield event


@dataclass(frozen=True)
class Attempt:
    """One try at one provider, as the answer reports it."""

    provider: str
    model: str
    status: int
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The attempt as listed in ``extra_fields.attempts``."""
        out: dict[str, Any] = {"provider": self.provider, "model": self.model}
        out["status"] = self.status
        if self.message is not None:
            out["error"] = self.message
        return out


Sleep = Callable[[float], Awaitable[None]]


class RouteDispatch:
    """An upload sent whole through its routes: the primary and its retries, then each fallback.

    Nothing is retried once a route has produced its first event: by then
    the client may have part of the answer.
    """

    def __init__(
        self,
        job: TranscriptionJob,
        *,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        chunk: tuple[int, float, float] | None = None,
    ) -> None:
        self._job = job
        self._audio = job.audio
        self._sleep = sleep
        self._jitter = jitter
        #: A long recording's chunk this dispatch sends: its index and span (s).
        self._chunk = chunk
        #: The route that is answering, once one is.
        self.route = job.routes[0]
        self.attempts: list[Attempt] = []

    @property
    def fell_back(self) -> bool:
        """Whether the answer comes from anything but the primary's first try."""
        return len(self.attempts) > 1

    @property
    def served(self) -> Served:
        """The route that answered and, when it was not the primary's first try, the attempts."""
        return Served(self.route, [a.as_dict() for a in self.attempts] if self.fell_back else None)

    async def events(self) -> AsyncGenerator[TranscriptEvent, None]:
        """The answering route's events; raises the primary's error if every route fails."""
        primary_error: ProxyError | None = None
        routes = self._job.routes
        for position, route in enumerate(routes):
            answered = False
            try:
                # Closed here, not left to the garbage collector, when the
                # consumer stops early (as it does once it has the answer).
                previous = routes[position - 1] if position else None
                async with aclosing(self._try_route(route, position, previous)) as attempt:
                    async for event in attempt:
                        answered = True
                        yield event
                return
            except ProxyError as exc:
                if answered:
                    raise  # part of this answer is out: it cannot be replaced
                primary_error = primary_error or exc
                last = position == len(routes) - 1
                if not last and self._worth_another(exc, note_if_not_replayable=True):
                    log.info(
                        "provider %s failed (%s); falling back", route.provider.name, exc.message
                    )
                    continue
                # Every route failed upstream: the primary's failure is the answer.
                every_route_failed = last and isinstance(exc, _UPSTREAM_FAILURES)
                raise self._with_attempts(primary_error if every_route_failed else exc) from None

    async def _try_route(
        self, route: Route, position: int, previous: Route | None
    ) -> AsyncGenerator[TranscriptEvent, None]:
        network = route.provider.network
        job = self._job
        retry = 0
        while True:
            index, start_s, end_s = self._chunk if self._chunk is not None else (None, 0.0, 0.0)
            started = AttemptStarted(
                route,
                fallback=position,
                retry=retry,
                after=previous if not retry else None,
                chunk=index,
                span_s=(start_s, end_s) if index is not None else None,
            )
            await job.hooks.on_attempt(started)
            events = route.provider.transcribe(
                UpstreamCall(
                    model=route.model,
                    fields=job.fields,
                    audio=job.audio,
                    request_id=job.request_id,
                    api_key=job.api_key,
                    task=job.task,
                    named_deployment=route.named_deployment,
                    on_audio=job.hooks.on_audio,
                    headers=started.headers,
                )
            )
            async with aclosing(events):
                try:
                    first = await anext(events)
                except ProxyError as exc:
                    await job.hooks.on_attempt_end(started, AttemptEnded(exc.status_code, exc))
                    self.attempts.append(
                        Attempt(route.provider.name, route.model, exc.status_code, exc.message)
                    )
                    if retry >= network.max_retries or not self._worth_another(
                        exc, note_if_not_replayable=True
                    ):
                        raise
                    delay = self._backoff(exc, retry, network)
                    if delay is None:
                        raise
                    retry += 1
                    log.info(
                        "provider %s failed (%s); retry %d in %.2f s",
                        route.provider.name,
                        exc.message,
                        retry,
                        delay,
                    )
                    await self._sleep(delay)
                    continue
                self.route = route
                self.attempts.append(Attempt(route.provider.name, route.model, 200))
                ended = AttemptEnded(200)
                try:
                    yield first
                    async for event in events:
                        yield event
                except ProxyError as exc:
                    ended = AttemptEnded(exc.status_code, exc)
                    raise
                finally:
                    await job.hooks.on_attempt_end(started, ended)
                return

    def _worth_another(self, error: ProxyError, *, note_if_not_replayable: bool = False) -> bool:
        """Whether another attempt could succeed where ``error`` ended this one."""
        if not isinstance(error, _UPSTREAM_FAILURES):
            return False
        if not self._audio.replayable:
            if note_if_not_replayable and "spool limit" not in error.message:
                error.message += (
                    "; not retried: the upload is larger than the spool limit "
                    "(proxy.max_spool_mb), so it could not be sent again"
                )
            return False
        return True

    def _backoff(self, error: ProxyError, retry: int, network: NetworkConfig) -> float | None:
        """Seconds to wait before the next retry, or None when it should not be retried."""
        if not error.retryable:
            return None
        ceiling = network.retry_backoff_max_ms / 1000
        exponential = min(ceiling, network.retry_backoff_initial_ms / 1000 * 2.0**retry)
        # Jitter spreads the retries of many clients that failed together.
        delay = exponential * (0.5 + self._jitter() / 2)
        retry_after = retry_after_seconds(error.headers.get("Retry-After"))
        if retry_after is not None:
            if retry_after > ceiling:
                return None  # longer than we would ever wait: try the next route
            delay = max(delay, retry_after)
        return delay

    def _with_attempts(self, error: ProxyError) -> ProxyError:
        error.attempts = [a.as_dict() for a in self.attempts]
        return error


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header's wait: delta seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
