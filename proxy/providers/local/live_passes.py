"""The embedded model's passes over a realtime turn while it is spoken.

Two kinds of pass. Partial passes, every ``partial_interval_ms``, greedy (the
partial beam): the turn so far transcribed again, and the words two passes
agree on sent as captions (:class:`~.agreement.LocalAgreement`); they are
interim text, never the transcript. Whole passes, at the transcript's beam
(the HTTP path's): when the speech detector hears silence begin, one starts
at once over everything said; if the silence lasts until the turn is
committed, that pass already holds the whole turn and is its transcript,
``silence_duration_ms`` sooner than a pass begun at the commit would give it.
At the commit a partial pass still running is abandoned, never waited for.

Realtime reaches this through :class:`~proxy.providers.base.LivePasses`,
never by importing it: the model is imported only when it is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ...audio.decoder import SAMPLE_BYTES, SAMPLE_RATE
from ...errors import ProxyError
from ..base import SpokenTurn, TurnTranscript
from .agreement import LocalAgreement
from .passes import DecodeOptions

#: A pass needs this much of a turn (its prefix padding included) to hear anything.
MIN_PASS_SAMPLES = SAMPLE_RATE
#: How soon a turn too short for a pass is looked at again.
_RECHECK_S = 0.1


class PcmModel(Protocol):
    """What the passes ask of the model: PCM at hand, transcribed."""

    async def transcribe_pcm(
        self, pcm: bytes, options: DecodeOptions, *, wait: bool = True, whole: bool = True
    ) -> str | None:
        """``pcm``'s text; None, without ``wait``, when the model is busy."""


@dataclass(frozen=True)
class Heard:
    """What a pass heard of the turn, up to the sample position it covered; ``whole``
    when it heard all of it (a partial pass leaves the unfinished last words out)."""

    end: int
    text: str
    whole: bool


class TurnPasses:
    """Passes over one turn being spoken (runs until the turn is committed or dropped)."""

    def __init__(
        self,
        model: PcmModel,
        turn: SpokenTurn,
        *,
        partial: DecodeOptions,
        whole: DecodeOptions,
        interval_s: float | None,
        emit: Callable[[str], None],
    ) -> None:
        self._model = model
        self._turn = turn
        self._partial = partial
        self._whole = whole
        self._interval_s = interval_s
        self._emit = emit
        self._agreement = LocalAgreement() if interval_s else None
        #: The last whole pass: the turn's transcript, if it heard all its speech.
        self._heard_whole: Heard | None = None
        self._running: asyncio.Task[Heard | None] | None = None
        #: Whether the pass running (or the last one) is a whole pass.
        self._running_whole = False
        self._wake = asyncio.Event()
        #: Whether silence has begun since the last pass started (the next is whole).
        self._silence = False
        self._loop = asyncio.ensure_future(self._passes())

    @property
    def sent(self) -> str:
        """What the partial captions have sent so far ("" without them)."""
        return self._agreement.text if self._agreement is not None else ""

    def silence_began(self) -> None:
        """The speaker may have finished: a pass over all of it, now (if none runs)."""
        self._silence = True
        self._wake.set()

    async def transcript(self, speech_end: int | None, pcm: bytes) -> TurnTranscript:
        """The committed turn's transcript: a whole pass that covered all its speech
        (``speech_end``, where known), else a whole pass over ``pcm``, its audio; and
        what the partial captions still lack of it."""
        await self._stop_passes()
        heard = self._heard_whole
        running = self._running
        if running is not None and self._running_whole:
            # Waited for (or, if it ended as the passes were stopped, taken), not awaited:
            # this task's own cancellation must not be taken for the pass's. It is what a
            # pass begun now would decode.
            await asyncio.wait((running,))
            if not running.cancelled() and running.exception() is None:
                heard = running.result() or heard
        else:
            # A caption nobody will see: its model slot frees itself when the decode
            # under way ends; the transcript does not wait for that.
            await self._cancel_running()
        if heard is None or not _covers(heard, speech_end):
            text = await self._model.transcribe_pcm(pcm, self._whole) or ""
        else:
            text = heard.text
        if self._agreement is None:
            return TurnTranscript(text, text)
        return TurnTranscript(text, self._agreement.finish(text.split()))

    async def aclose(self) -> None:
        """Stop every pass (the turn was dropped, or the session ended)."""
        await self._stop_passes()
        await self._cancel_running()

    async def _cancel_running(self) -> None:
        if self._running is not None:
            self._running.cancel()
            await asyncio.gather(self._running, return_exceptions=True)

    async def _stop_passes(self) -> None:
        self._loop.cancel()
        await asyncio.gather(self._loop, return_exceptions=True)

    async def _passes(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while self._turn.speaking:
            # Every interval from the last pass's start (or at once, when silence begins).
            wait = None if self._interval_s is None else max(0.0, next_at - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
            pcm = self._turn.so_far()
            if len(pcm) < MIN_PASS_SAMPLES * SAMPLE_BYTES:
                next_at = loop.time() + _RECHECK_S
                continue
            started = loop.time()
            whole = self._running_whole = self._silence
            self._silence = False
            self._running = asyncio.ensure_future(self._pass(pcm, self._turn.end, whole=whole))
            try:
                heard = await asyncio.shield(self._running)
            except ProxyError:
                return  # the turn's own transcription says what went wrong
            next_at = started + (self._interval_s or 0.0)
            if heard is None:
                continue  # the model was busy: a caption is not worth waiting for
            if heard.whole:
                self._heard_whole = heard
            if self._agreement is not None:
                delta = self._agreement.delta(heard.text.split())
                if delta:
                    self._emit(delta)

    async def _pass(self, pcm: bytes, end: int, *, whole: bool) -> Heard | None:
        # A caption is not worth a wait for the model (None when it is busy); a whole
        # pass, likely the transcript, waits its turn.
        options = self._whole if whole else self._partial
        text = await self._model.transcribe_pcm(pcm, options, wait=whole, whole=whole)
        return Heard(end, text, whole) if text is not None else None


def _covers(heard: Heard, speech_end: int | None) -> bool:
    """Whether ``heard`` is the whole turn: all of it, up to where the speech ended."""
    return heard.whole and speech_end is not None and heard.end >= speech_end
