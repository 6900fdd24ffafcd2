"""The audio of the turn being spoken (16 kHz PCM), and only as much before it as a next
turn's prefix may reach back into: memory holds one turn at most, and a turn is at most
30 s (it is cut at its quietest point before that).
"""

from __future__ import annotations

from ..audio.decoder import SAMPLE_BYTES, SAMPLE_RATE
from ..audio.silence import quietest

#: The longest turn: Whisper hears 30 s at a time (as the embedded model's windows do);
#: a longer one is cut at its quietest point in the seconds before.
MAX_TURN_S = 30.0
#: How far before a turn's longest its cut may fall.
CUT_SEARCH_S = 5.0
MAX_TURN_SAMPLES = int(MAX_TURN_S * SAMPLE_RATE)
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
