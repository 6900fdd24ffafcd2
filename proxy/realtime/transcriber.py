"""A synthesized session's turns transcribed, several at once, each into its own events.

A provider that says it has live passes (``capabilities.live_passes``: the
embedded model) transcribes a turn while it is spoken, for partial captions,
and gives its transcript at the commit; any other, and a live pass that
fails, get the committed turn as an ordinary request through the router and
dispatch (:mod:`.turn_request`). A turn's deltas are never taken back: after
partial captions, only what extends them goes out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from typing import Any

from ..answers.formats import transcript_text
from ..audio.decoder import SAMPLE_BYTES, SAMPLE_RATE
from ..config import RealtimeSettings
from ..dispatch import Dispatcher
from ..errors import ProxyError
from ..metrics import Metrics
from ..models import RequestFacts, TranscriptDone
from ..plugins.base import Pipeline, PipelineRun
from ..providers.base import LivePasses, LivePassOptions, SpokenTurn, has_live_passes
from .protocol import transcription_completed, transcription_delta, transcription_failed
from .reporter import Turn
from .turn_request import TurnRequest, transcribe_turn

log = logging.getLogger(__name__)


class TurnTranscriber:
    """The transcripts of one session's turns: live passes over the turn being spoken, and
    every committed turn's transcription until its events are all in its queue."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        pipeline: Pipeline,
        metrics: Metrics,
        settings: RealtimeSettings,
        request: TurnRequest,
    ) -> None:
        self._dispatcher = dispatcher
        self._pipeline = pipeline
        self._metrics = metrics
        self._settings = settings
        #: What each turn's request is made of (a session update may change it).
        self.request = request
        #: The live passes over the turn being spoken, when its provider has them.
        self._passes: LivePasses | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Committed turns whose transcripts have not been made yet.
        self.pending = 0
        self._caught_up = asyncio.Event()
        self._caught_up.set()

    def live(self) -> bool:
        """Whether where speech pauses is of use: to the turn being spoken, when it has
        live passes, or to a turn begun now (its provider has them)."""
        return self._passes is not None or has_live_passes(self.request.routes[0].provider)

    def began(self, turn: Turn, spoken: SpokenTurn) -> None:
        """A turn began: its provider's live passes over it start, if it has them."""
        provider = self.request.routes[0].provider
        if not has_live_passes(provider):
            return
        interval = self._settings.partial_interval_ms
        transcription = self.request.transcription
        options = LivePassOptions(
            language=transcription.language,
            prompt=transcription.prompt,
            beam_size=self._settings.beam_size,
            partial_beam_size=self._settings.partial_beam_size,
            interval_s=interval / 1000 if interval else None,
        )
        self._passes = provider.open_live_passes(
            spoken, options, lambda text: turn.add(transcription_delta(turn.item_id, text))
        )

    def silence_began(self) -> None:
        """The speaker of the turn being spoken may have finished."""
        if self._passes is not None:
            self._passes.silence_began()

    async def dropped(self) -> None:
        """The turn being spoken was dropped: its live passes stop."""
        passes, self._passes = self._passes, None
        if passes is not None:
            await passes.aclose()

    def committed(self, turn: Turn, pcm: bytes, speech_end: int | None) -> None:
        """Transcribe the committed ``turn`` (its audio ``pcm``; its speech ended at
        ``speech_end``, when that was heard), alongside the turns before it."""
        passes, self._passes = self._passes, None
        self.pending += 1
        self._caught_up.clear()
        task = asyncio.ensure_future(self._transcribe(turn, pcm, passes, speech_end))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def caught_up(self) -> None:
        """Wait until every committed turn has its transcript (or its failure)."""
        await self._caught_up.wait()

    async def aclose(self) -> None:
        """Stop the live passes and every transcription still running."""
        await self.dropped()
        running = list(self._tasks)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _transcribe(
        self, turn: Turn, pcm: bytes, passes: LivePasses | None, speech_end: int | None
    ) -> None:
        """One committed turn's transcript, as events in its queue: a request of its own
        through the hooks around dispatch."""
        facts = self.request.turn_facts(turn.item_id)
        facts.audio_bytes = len(pcm)
        outcome = "failed"
        try:
            async with self._pipeline.run(facts) as run:
                await run.before(facts)
                text, done = await self._transcript(turn, pcm, passes, speech_end, facts, run)
                facts.answer = done
                turn.add(transcription_completed(turn.item_id, text, _usage(done, len(pcm))))
                outcome = "completed"
        except ProxyError as exc:
            turn.add(transcription_failed(turn.item_id, exc.type, exc.code, exc.message, exc.param))
        except Exception:
            log.exception("a realtime turn failed")
            turn.add(
                transcription_failed(
                    turn.item_id, "server_error", "internal_error", "transcription failed", None
                )
            )
        finally:
            self.pending -= 1
            if not self.pending:
                self._caught_up.set()
            turn.done()
            self._metrics.realtime_turns.labels(outcome=outcome).inc()
            if turn.committed_at is not None and outcome == "completed":
                self._metrics.realtime_turn_seconds.observe(time.monotonic() - turn.committed_at)

    async def _transcript(
        self,
        turn: Turn,
        pcm: bytes,
        passes: LivePasses | None,
        speech_end: int | None,
        facts: RequestFacts,
        run: PipelineRun,
    ) -> tuple[str, TranscriptDone | None]:
        """The turn's transcript: from its live passes, else from its routes."""
        sent = ""
        if passes is not None:
            text, sent = await self._from_passes(turn, passes, pcm, speech_end)
            if text is not None:
                return text, None
        return await self._from_routes(turn, pcm, facts, run, sent)

    async def _from_passes(
        self, turn: Turn, passes: LivePasses, pcm: bytes, speech_end: int | None
    ) -> tuple[str | None, str]:
        """The transcript from the live passes (the last deltas sent on the way), and what
        their partial captions had sent; None when the provider failed, for the routes'
        fallbacks to answer."""
        sent = passes.sent
        try:
            transcript = await passes.transcript(speech_end, pcm)
        except ProxyError:
            log.warning("live passes failed a realtime turn; trying its routes")
            return None, sent
        if transcript.delta.strip():
            turn.add(transcription_delta(turn.item_id, transcript.delta))
        return transcript.text, sent

    async def _from_routes(
        self,
        turn: Turn,
        pcm: bytes,
        facts: RequestFacts,
        run: PipelineRun,
        already_sent: str = "",
    ) -> tuple[str, TranscriptDone | None]:
        """The transcript from the session's routes, its deltas relayed as they stream
        (after partial captions, only what extends them: deltas are never taken back)."""
        sent: list[str] = []
        done: TranscriptDone | None = None
        async with aclosing(
            transcribe_turn(self._dispatcher, self.request, pcm, facts, run)
        ) as pieces:
            async for piece in pieces:
                if isinstance(piece, TranscriptDone):
                    done = piece
                elif not already_sent:
                    sent.append(piece)
                    turn.add(transcription_delta(turn.item_id, piece))
        text = transcript_text(done) if done is not None else "".join(sent).strip()
        if already_sent:
            rest = text[len(already_sent) :] if text.startswith(already_sent) else ""
            if rest:
                turn.add(transcription_delta(turn.item_id, rest))
            return already_sent + rest, done
        if not sent and text:
            turn.add(transcription_delta(turn.item_id, text))
        return text, done


def _usage(done: TranscriptDone | None, pcm_bytes: int) -> dict[str, Any]:
    """The turn's usage: the upstream's, else its audio's duration."""
    usage = done.document.get("usage") if done is not None and done.document else None
    if isinstance(usage, dict) and usage.get("type") in ("tokens", "duration"):
        return usage
    return {"type": "duration", "seconds": round(pcm_bytes / SAMPLE_BYTES / SAMPLE_RATE, 3)}
