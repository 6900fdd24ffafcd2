"""Plugins around dispatch: the one seam for everything that is not "read the form, pick the
route, send, answer".

A plugin (:class:`Plugin`) is asked, as each request begins (its headers read,
its caller known), whether it takes part; if it does, it gives the request
its :class:`RequestHooks`, which the request calls at fixed points of its life:

``before(facts)``
    the form is read and the routes planned, nothing has gone upstream: a hook
    may answer in the upstream's place (the cache) or refuse (governance,
    by raising the error the client is told);
``on_audio(seconds)``
    the request's audio is known to reach ``seconds`` before more of it is
    sent on (a long recording's next chunk, the embedded model's next window,
    an upload of unknown length as its bytes pass): a hook may refuse the rest;
``on_attempt(attempt)``, ``on_attempt_end(attempt, ended)``
    each upstream try begins (a retry, a fallback, a chunk), and ends;
``on_routes(facts)``
    the request's routes changed on the way (a realtime session's model);
``on_first_event(facts)``
    the answer begins: from here the upstream's answer is the one given;
``after(facts)``
    the request is over, answered or not (``facts.status``, ``facts.error``):
    settle, store, log, trace. Every hook that began gets it, in the list's
    order (so each sees what those before it concluded: governance's usage and
    cost for the log and the trace), whatever the others do.

A realtime session is one request through the same hooks (its audio told as
it is appended, with ``on_audio``), and each of its turns another, whose
``parent_request_id`` is the session's.

A hook may also answer while the upstream request is in flight, before its
first event, by offering an answer to :attr:`PipelineRun.early` (the cache,
when the end of a streamed upload shows it has the transcript): the upstream
request is then abandoned. The order of plugins is one list in the app
(:func:`proxy.plugins.plugins_for`); the handler never names one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..dispatch import AttemptEnded, AttemptStarted
from ..errors import ClientGoneError, ProxyError
from ..models import RequestFacts, TranscriptDone

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Answer:
    """An answer a plugin gives in the upstream's place."""

    done: TranscriptDone
    #: Who first made it, as the answer reports it.
    provider: str
    model: str


class RequestHooks:
    """One plugin's part in one request. Every hook does nothing until overridden."""

    #: Whether this plugin needs the upload's sha256 (taken as the form is read).
    hashes_audio: bool = False
    #: Whether this plugin may give an answer while the upstream request is in flight
    #: (:class:`EarlyAnswer`); when none may, the upstream's first event is not raced.
    answers_early: bool = False

    async def before(self, facts: RequestFacts) -> Answer | None:
        """The form is read and the routes planned; an answer here is the request's."""
        return None

    async def on_audio(self, seconds: float) -> None:
        """The audio reaches ``seconds`` before more of it is sent on; raise to refuse."""

    async def on_attempt(self, attempt: AttemptStarted) -> None:
        """An upstream try begins."""

    async def on_attempt_end(self, attempt: AttemptStarted, ended: AttemptEnded) -> None:
        """An upstream try is over: answered whole (or as far as the client read), or
        failed."""

    async def on_routes(self, facts: RequestFacts) -> None:
        """``facts.routes`` changed on the way (a realtime session switched its model)."""

    async def on_first_event(self, facts: RequestFacts) -> None:
        """The upstream's answer begins."""

    async def after(self, facts: RequestFacts) -> None:
        """The request is over."""


class Plugin(Protocol):
    """A concern hung around dispatch: governance, the cache, metrics, logs, traces."""

    def start(self, facts: RequestFacts, early: EarlyAnswer) -> RequestHooks | None:
        """This plugin's hooks for the request ``facts`` describes (headers read, caller
        known), or None when it takes no part; raises the request's refusal. ``early``
        takes an answer its hooks may give while the upstream request is in flight."""


class EarlyAnswer:
    """An answer a hook may give while the upstream request is in flight, until the
    upstream's own answer begins: whichever comes first is the one given."""

    def __init__(self) -> None:
        self._offered: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._closed = False

    def offer(self, answer: Answer) -> bool:
        """Give ``answer``; whether it is taken (the upstream's has not begun)."""
        if self._closed or self._offered.done():
            return False
        self._offered.set_result(answer)
        return True

    def close(self) -> None:
        """The upstream's answer has begun: no offer is taken from now on."""
        self._closed = True

    async def first_of(self, waiting: Awaitable[_T]) -> _T | Answer:
        """``waiting``'s result, or an answer offered before it (then ``waiting`` is
        cancelled: the upstream request it holds is abandoned)."""
        if self._closed:
            return await waiting
        pending = asyncio.ensure_future(waiting)
        try:
            await asyncio.wait((pending, self._offered), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            pending.cancel()
            raise
        if pending.done():
            self.close()
            return pending.result()
        pending.cancel()
        # Waited for, not awaited: its cancellation is not this task's to catch.
        await asyncio.wait((pending,))
        if not pending.cancelled():
            pending.exception()  # seen: what the abandoned try ended with does not matter
        return self._offered.result()


class PipelineRun:
    """The hooks one request called, in the app's order."""

    def __init__(self, hooks: Sequence[RequestHooks], early: EarlyAnswer) -> None:
        self._hooks = tuple(hooks)
        #: An answer a hook gives before the upstream's begins.
        self.early = early
        if not any(h.answers_early for h in self._hooks):
            early.close()

    @property
    def hashes_audio(self) -> bool:
        """Whether a hook needs the upload's sha256."""
        return any(hooks.hashes_audio for hooks in self._hooks)

    async def before(self, facts: RequestFacts) -> Answer | None:
        """Each hook's ``before`` in order; the first answer given is the request's."""
        for hooks in self._hooks:
            if (answer := await hooks.before(facts)) is not None:
                return answer
        return None

    async def on_audio(self, seconds: float) -> None:
        """Each hook's ``on_audio``; the first refusal is raised."""
        for hooks in self._hooks:
            await hooks.on_audio(seconds)

    async def on_attempt(self, attempt: AttemptStarted) -> None:
        """Each hook's ``on_attempt``."""
        for hooks in self._hooks:
            await hooks.on_attempt(attempt)

    async def on_attempt_end(self, attempt: AttemptStarted, ended: AttemptEnded) -> None:
        """Each hook's ``on_attempt_end``."""
        for hooks in self._hooks:
            await hooks.on_attempt_end(attempt, ended)

    async def on_routes(self, facts: RequestFacts) -> None:
        """Each hook's ``on_routes``; the first refusal is raised."""
        for hooks in self._hooks:
            await hooks.on_routes(facts)

    async def on_first_event(self, facts: RequestFacts) -> None:
        """The upstream's answer has begun: no early answer any more; each hook told."""
        self.early.close()
        for hooks in self._hooks:
            await hooks.on_first_event(facts)


class Pipeline:
    """The app's plugins, in their fixed order."""

    def __init__(self, plugins: Sequence[Plugin]) -> None:
        self._plugins = tuple(plugins)

    @contextlib.asynccontextmanager
    async def run(self, facts: RequestFacts) -> AsyncIterator[PipelineRun]:
        """One request through the plugins: each is asked to take part now, and every one
        that did gets ``after`` once the request is over, however it ends."""
        started: list[RequestHooks] = []
        early = EarlyAnswer()
        try:
            for plugin in self._plugins:
                if (hooks := plugin.start(facts, early)) is not None:
                    started.append(hooks)
            yield PipelineRun(started, early)
        except ProxyError as error:
            facts.failed(error)
            raise
        except asyncio.CancelledError:
            facts.failed(ClientGoneError("the client closed the connection"))
            raise
        except Exception:
            facts.failed(ProxyError("internal error"))
            raise
        finally:
            facts.ended()
            await _after_each(started, facts)


async def _after_each(started: Sequence[RequestHooks], facts: RequestFacts) -> None:
    """Each hook's ``after``, in order; one that fails is logged, the rest still run."""
    for hooks in started:
        try:
            await hooks.after(facts)
        except Exception:
            log.exception("a plugin failed after the request (%s)", type(hooks).__name__)
