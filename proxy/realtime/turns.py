"""The audio of the turn being spoken, and the turns a session has begun.

:class:`TurnAudio` keeps the audio of the turn in progress from its start
(prefix padding included), and, between turns, only the last stretch a
next turn's prefix may reach back into: memory holds one turn at most,
and a turn is at most 30 s (it is cut at its quietest point before that).

:class:`Turn` is one turn's place in the session's order: its item ids and
the events it has for the client, which are sent in the order turns began
however their transcriptions finish.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any

from ..audio.decoder import SAMPLE_BYTES, SAMPLE_RATE
from ..audio.silence import quietest
from ..providers.local.windows import CUT_SEARCH_S, WINDOW_S

#: The longest turn: Whisper hears 30 s at a time; a longer one is cut at its
#: quietest point in the seconds before.
MAX_TURN_SAMPLES = int(WINDOW_S * SAMPLE_RATE)
_CUT_SEARCH_SAMPLES = int(CUT_SEARCH_S * SAMPLE_RATE)


class TurnAudio:
    """PCM of the turn in progress (16 kHz), positions in samples since the session began."""

    def __init__(self, keep_before_samples: int) -> None:
        #: Between turns, how much of the latest audio is kept (a next turn's prefix).
        self.keep_before = keep_before_samples
        self._pcm = bytearray()
        #: The sample position of ``_pcm``'s first byte.
        self._base = 0
        #: Where the turn in progress starts, if one is.
        self.turn_start: int | None = None

    @property
    def end(self) -> int:
        """The position after the last sample appended."""
        return self._base + len(self._pcm) // SAMPLE_BYTES

    @property
    def turn_samples(self) -> int:
        """Samples in the turn in progress so far."""
        return 0 if self.turn_start is None else self.end - self.turn_start

    def append(self, pcm: bytes) -> None:
        """Add ``pcm`` (a turn may start inside it: see :meth:`settle`)."""
        self._pcm += pcm

    def settle(self) -> None:
        """Between turns, forget all but the prefix a next turn may need."""
        if self.turn_start is None:
            self._forget_before(self.end - self.keep_before)

    def start(self, sample: int) -> None:
        """A turn starts at ``sample`` (no earlier than what is kept)."""
        self.turn_start = max(sample, self._base)

    def so_far(self) -> bytes:
        """The turn in progress's audio so far."""
        if self.turn_start is None:
            return b""
        offset = (self.turn_start - self._base) * SAMPLE_BYTES
        return bytes(self._pcm[offset:])

    def take(self, end: int | None = None) -> bytes:
        """The turn's audio up to ``end`` (all so far by default); the turn is over."""
        start = self.turn_start if self.turn_start is not None else self._base
        end = self.end if end is None else min(end, self.end)
        pcm = bytes(
            self._pcm[(start - self._base) * SAMPLE_BYTES : (end - self._base) * SAMPLE_BYTES]
        )
        self.turn_start = None
        self._forget_before(end)
        return pcm

    def quietest_cut(self) -> int:
        """Where a turn at its longest is best cut: its quietest point in the seconds
        before its 30th (however much more has been appended)."""
        assert self.turn_start is not None
        limit = min(self.end, self.turn_start + MAX_TURN_SAMPLES)
        stretch_start = max(self.turn_start, limit - _CUT_SEARCH_SAMPLES)
        stretch = self._pcm[
            (stretch_start - self._base) * SAMPLE_BYTES : (limit - self._base) * SAMPLE_BYTES
        ]
        return stretch_start + quietest(bytes(stretch)) // SAMPLE_BYTES

    def clear(self) -> None:
        """Drop everything appended so far."""
        self._forget_before(self.end)
        self.turn_start = None

    def _forget_before(self, position: int) -> None:
        if position > self._base:
            del self._pcm[: (position - self._base) * SAMPLE_BYTES]
            self._base = position


class TurnState(enum.Enum):
    """Where a turn is in its life."""

    SPEAKING = "speaking"
    COMMITTED = "committed"
    DROPPED = "dropped"


@dataclass(eq=False)
class Turn:
    """One turn: its item, and the events it has for the client, in order."""

    item_id: str
    #: Where its audio starts, in samples since the session began.
    start: int
    state: TurnState = TurnState.SPEAKING
    previous_item_id: str | None = None
    #: When it was committed (the event loop's clock).
    committed_at: float | None = None
    #: Events for the client; None ends them.
    events: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)

    def commit(self, previous_item_id: str | None) -> None:
        """The turn's audio is complete."""
        self.state = TurnState.COMMITTED
        self.previous_item_id = previous_item_id
        self.committed_at = time.monotonic()

    def drop(self) -> None:
        """The turn will never be committed (its audio was cleared): it has no events."""
        self.state = TurnState.DROPPED
        self.events.put_nowait(None)
