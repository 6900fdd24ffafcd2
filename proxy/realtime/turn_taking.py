"""What a synthesized session's segmenter finds, acted on: events to the client, turns to
the reporter, audio to the transcriber, in the order it was found."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .protocol import (
    ServerEvent,
    cleared,
    commit_empty_error,
    committed,
    speech_started,
    speech_stopped,
)
from .reporter import Turn, TurnReporter, TurnState
from .segmenter import (
    AlreadyCommitted,
    Cleared,
    NothingToCommit,
    SegmentEvent,
    SilenceBegan,
    SpeechStarted,
    SpeechStopped,
    TurnCommitted,
    TurnOpened,
    TurnSegmenter,
)
from .session_config import ServerVad
from .transcriber import TurnTranscriber


@dataclass(frozen=True)
class _SpokenTurn:
    """A turn being spoken as live passes read it: its state, and the segmenter's audio."""

    turn: Turn
    segmenter: TurnSegmenter

    @property
    def speaking(self) -> bool:
        return self.turn.state is TurnState.SPEAKING

    @property
    def end(self) -> int:
        return self.segmenter.end

    def so_far(self) -> bytes:
        return self.segmenter.turn_so_far()


class TurnTaking:
    """One synthesized session's turns, from its audio and its client's commits and clears."""

    def __init__(
        self,
        segmenter: TurnSegmenter,
        reporter: TurnReporter,
        transcriber: TurnTranscriber,
        send: Callable[[ServerEvent], Awaitable[None]],
    ) -> None:
        self._segmenter = segmenter
        self._reporter = reporter
        self._transcriber = transcriber
        self._send = send

    def detect(self, turn_detection: ServerVad | None) -> None:
        """Find turns with ``turn_detection`` from now on (None: the client commits them);
        a turn in progress goes on."""
        self._segmenter.configure(turn_detection)

    async def append(self, pcm: bytes) -> None:
        """Audio appended (16 kHz PCM)."""
        await self._take(self._segmenter.append(pcm))

    async def commit(self, caused_by: str | None) -> None:
        """The client's commit (``caused_by``: its event's id)."""
        await self._take(self._segmenter.commit(), caused_by)

    async def clear(self) -> None:
        """The client's clear."""
        await self._take(self._segmenter.clear())

    async def flush(self) -> None:
        """The session ends: the turn in progress is committed as far as it got."""
        await self._take(self._segmenter.flush())

    async def _take(self, events: list[SegmentEvent], caused_by: str | None = None) -> None:
        for event in events:
            await self._act(event, caused_by)

    async def _act(self, event: SegmentEvent, caused_by: str | None) -> None:
        reporter = self._reporter
        transcriber = self._transcriber
        if isinstance(event, SpeechStarted | TurnOpened):
            turn = reporter.begin()
            if isinstance(event, SpeechStarted):
                await self._send(speech_started(event.audio_start_ms, turn.item_id))
            transcriber.began(turn, _SpokenTurn(turn, self._segmenter))
        elif isinstance(event, SilenceBegan):
            transcriber.silence_began()
        elif isinstance(event, SpeechStopped):
            assert reporter.speaking is not None, "speech stops only in a turn"
            await self._send(speech_stopped(event.audio_end_ms, reporter.speaking.item_id))
        elif isinstance(event, TurnCommitted):
            turn = reporter.commit()
            await self._send(committed(turn.item_id, turn.previous_item_id))
            transcriber.committed(turn, event.pcm, event.speech_end)
        elif isinstance(event, NothingToCommit):
            await self._send(commit_empty_error(event.buffered_ms, caused_by))
        elif isinstance(event, AlreadyCommitted):
            return  # its turn's events are on their way
        else:
            assert isinstance(event, Cleared)
            await transcriber.dropped()
            reporter.drop()
            await self._send(cleared())
