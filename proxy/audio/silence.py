"""Cutting PCM at silence: pieces of at most a given length, each ending where it is quietest.

Whoever cuts a recording into pieces a model or a provider takes (long
audio's chunks, the local model's windows, a realtime turn past its longest)
feeds :class:`SilenceCutter` the PCM as it is decoded and gets back the PCM
to add to the current piece, and :data:`CUT` where a piece ends. Only the
stretch a cut may fall in is held back, never the whole piece.

16-bit little-endian mono PCM throughout. NumPy is not used: its import
alone would cost a long upload 11 MiB of RSS.
"""

from __future__ import annotations

import enum
import operator
from array import array
from collections import deque

from .decoder import SAMPLE_BYTES, SAMPLE_RATE

#: A cut lands in the middle of the quietest window this long.
QUIET_WINDOW_S = 0.1
_FRAME_SAMPLES = SAMPLE_RATE // 100  # 10 ms energy frames


class Cut(enum.Enum):
    """The end of a piece."""

    CUT = "cut"


CUT = Cut.CUT


class SilenceCutter:
    """PCM in, pieces out: each at most ``max_s`` long, ending at the quietest 100 ms of its
    last ``search_s`` seconds (so a cut falls between words whenever there is silence).

    ``first_max_s`` makes the first piece shorter (a first caption sooner).
    """

    def __init__(self, max_s: float, search_s: float, *, first_max_s: float | None = None) -> None:
        # In bytes, always a whole number of samples.
        self._max, self._search = _limits(max_s, search_s)
        self._later: tuple[int, int] | None = None
        if first_max_s is not None and first_max_s < max_s:
            self._later = (self._max, self._search)
            self._max, self._search = _limits(first_max_s, search_s)
        #: Bytes of the current piece already given out.
        self._given = 0
        # Not given out yet: at most the stretch a cut may fall in, kept as
        # the pieces fed (joined only to cut).
        self._tail: deque[bytes] = deque()
        self._tail_bytes = 0

    def feed(self, pcm: bytes) -> list[bytes | Cut]:
        """What ``pcm`` adds: PCM for the current piece, and a :data:`CUT` where one ends."""
        out: list[bytes | Cut] = []
        self._tail.append(pcm)
        self._tail_bytes += len(pcm)
        while self._given + self._tail_bytes >= self._max:
            # The piece is full: it ends at the quietest point of its last stretch.
            tail = self._joined_tail()
            window_end = self._max - self._given
            window_start = max(0, window_end - self._search)
            self._end_piece(tail, window_start + quietest(tail[window_start:window_end]), out)
        # What lies before the stretch a cut may fall in can be given out now.
        while self._tail and self._tail_bytes - len(self._tail[0]) >= self._search:
            piece = self._tail.popleft()
            self._tail_bytes -= len(piece)
            self._give(piece, out)
        return out

    def end(self) -> list[bytes | Cut]:
        """The rest, and the last piece's :data:`CUT`."""
        out: list[bytes | Cut] = []
        tail = self._joined_tail()
        self._end_piece(tail, len(tail), out)
        return out

    def _joined_tail(self) -> bytes:
        tail = b"".join(self._tail)
        self._tail = deque([tail])
        return tail

    def _end_piece(self, tail: bytes, cut: int, out: list[bytes | Cut]) -> None:
        """End the piece after ``tail[:cut]``; the rest of ``tail`` begins the next."""
        self._give(tail[:cut], out)
        rest = tail[cut:]
        self._tail = deque([rest]) if rest else deque()
        self._tail_bytes = len(rest)
        out.append(CUT)
        self._given = 0
        if self._later is not None:
            self._max, self._search = self._later
            self._later = None

    def _give(self, pcm: bytes, out: list[bytes | Cut]) -> None:
        if pcm:
            out.append(pcm)
            self._given += len(pcm)


def _limits(max_s: float, search_s: float) -> tuple[int, int]:
    """A piece's longest length and the stretch its cut may fall in, in bytes."""
    max_samples = int(max_s * SAMPLE_RATE)
    search_samples = max(
        2 * int(QUIET_WINDOW_S * SAMPLE_RATE),
        min(int(search_s * SAMPLE_RATE), max_samples // 2),
    )
    return max_samples * SAMPLE_BYTES, search_samples * SAMPLE_BYTES


def quietest(pcm: bytes) -> int:
    """Where in ``pcm`` the quietest 100 ms is centred (the latest of equals), in bytes."""
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) // SAMPLE_BYTES * SAMPLE_BYTES])
    frames = len(samples) // _FRAME_SAMPLES
    window = max(1, int(QUIET_WINDOW_S * SAMPLE_RATE) // _FRAME_SAMPLES)
    if frames <= window:
        return len(pcm)
    energy = []
    for start in range(0, frames * _FRAME_SAMPLES, _FRAME_SAMPLES):
        frame = samples[start : start + _FRAME_SAMPLES]
        energy.append(sum(map(operator.mul, frame, frame)))
    # A running sum over the window; the latest quiet window, so pieces come
    # out as long as allowed.
    total = sum(energy[:window])
    best, best_at = total, 0
    for first in range(1, frames - window + 1):
        total += energy[first + window - 1] - energy[first - 1]
        if total <= best:
            best, best_at = total, first
    return (best_at + window // 2) * _FRAME_SAMPLES * SAMPLE_BYTES
