"""A recording's PCM, handed from the decoding thread to the model's, taken a window at a time.

The shared decoder (:class:`~proxy.audio.decoder.StreamingDecoder`) puts
the upload's 16 kHz PCM into a :class:`PcmFeed` as the upload arrives; the
model's thread takes it out a window at a time. The feed holds a window's
worth (a batch's, when batching): when the model is slower than the client,
the decoder waits,
the decoder's pipe fills, and the client's socket is read no further.

Two ways to take windows:

- :class:`SeekWindows`, one at a time: a window is the audio from where the
  previous pass ended (the end of its last complete segment, as Whisper's
  own whole-file loop goes on) up to 30 s;
- :class:`SilenceWindows`, several at a time for the batched pipeline: each
  window ends at the quietest point of its last seconds (the cutter long
  audio uses), and the windows already there are taken together.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator

from ...audio.decoder import PCM_BYTES_PER_S, SAMPLE_BYTES, DecodingStopped
from ...audio.silence import CUT, SilenceCutter, quietest

#: Whisper hears 30 s at a time.
WINDOW_S = 30.0
#: How far before a full window a batched window's cut may fall.
CUT_SEARCH_S = 5.0


class PcmFeed:
    """PCM from the decoding thread to the model's thread, at most ``max_bytes`` waiting.

    :meth:`put` blocks while the feed is full; :meth:`read` blocks until what
    it asks for is there or the recording has ended. :meth:`end` comes from
    the event loop once the decoder is done; after :meth:`stop` (the decoder
    failed, or the request ended) both sides get :class:`DecodingStopped`.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._changed = threading.Condition()
        self._pieces: deque[bytes] = deque()
        self._bytes = 0
        self._ended = False
        self._stopped = False
        #: Bytes put in so far: the length of the recording once it has ended.
        self.total_bytes = 0

    # --- the decoding thread --------------------------------------------------------------

    def put(self, pcm: bytes) -> None:
        """Add ``pcm``, waiting while the feed is full."""
        with self._changed:
            while self._bytes >= self._max and not self._stopped:
                self._changed.wait()
            if self._stopped:
                raise DecodingStopped()
            self._pieces.append(pcm)
            self._bytes += len(pcm)
            self.total_bytes += len(pcm)
            self._changed.notify_all()

    def fill(self, pcm: Iterator[bytes]) -> None:
        """Put every piece of ``pcm``: the decoder's ``consume``."""
        for piece in pcm:
            self.put(piece)

    # --- the event loop ---------------------------------------------------------------------

    def end(self) -> None:
        """The recording is over: reads get what is left, then nothing."""
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def stop(self) -> None:
        """Nothing more is read or written: both sides get :class:`DecodingStopped`."""
        with self._changed:
            self._stopped = True
            self._pieces.clear()
            self._bytes = 0
            self._changed.notify_all()

    # --- the model's thread -----------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Bytes there to read without waiting."""
        return self._bytes

    @property
    def ended(self) -> bool:
        """Whether the recording is over and all of it has been read."""
        return self._ended and not self._bytes

    def read(self, size: int, *, wait: bool = True) -> bytes:
        """Up to ``size`` bytes: all of them unless the recording ends first (or, with
        ``wait`` false, unless fewer are there now)."""
        with self._changed:
            while wait and self._bytes < size and not self._ended and not self._stopped:
                self._changed.wait()
            if self._stopped:
                raise DecodingStopped()
            out: list[bytes] = []
            wanted = size
            while wanted and self._pieces:
                piece = self._pieces.popleft()
                if len(piece) > wanted:
                    self._pieces.appendleft(piece[wanted:])
                    piece = piece[:wanted]
                out.append(piece)
                wanted -= len(piece)
            self._bytes -= size - wanted
            self._changed.notify_all()
        return b"".join(out)


def _whole_samples(seconds: float) -> int:
    """``seconds`` of PCM in bytes, a whole number of samples."""
    return int(seconds * PCM_BYTES_PER_S) // SAMPLE_BYTES * SAMPLE_BYTES


class SeekWindows:
    """Windows one at a time, each starting where the previous pass stopped.

    A window is the audio from there up to 30 s, cut at the quietest point
    of its last seconds (a window ending inside a word makes Whisper write
    the word's first half as if it were whole); ``first_s`` is the first
    window's length (shorter than 30 s: the first caption comes sooner).
    """

    def __init__(self, feed: PcmFeed, *, first_s: float = WINDOW_S) -> None:
        self._feed = feed
        self._next_bytes = _whole_samples(min(first_s, WINDOW_S))
        #: Audio read and not yet transcribed: the next window starts with it.
        self._buffer = b""
        self._window_bytes = 0
        #: Bytes of the recording before the buffer.
        self.start_byte = 0

    def next(self) -> bytes | None:
        """The next window (waiting for it to arrive), or None when the recording is done."""
        wanted = self._next_bytes
        self._next_bytes = _whole_samples(WINDOW_S)
        if len(self._buffer) < wanted:
            self._buffer += self._feed.read(wanted - len(self._buffer))
        window = self._buffer[:wanted]
        if len(window) == wanted and not self.at_end:
            # More is coming: end the window where it is quietest.
            search = min(_whole_samples(CUT_SEARCH_S), wanted // 2 // SAMPLE_BYTES * SAMPLE_BYTES)
            window = window[: wanted - search + quietest(window[-search:])]
        self._window_bytes = len(window)
        return window or None

    @property
    def at_end(self) -> bool:
        """Whether the recording ends with the window just taken (or the next one)."""
        return self._feed.ended and len(self._buffer) <= self._next_bytes

    def advance(self, consumed: int) -> None:
        """The last window's first ``consumed`` bytes are transcribed; the rest of it
        (and of the audio read with it) begins the next window."""
        consumed = consumed // SAMPLE_BYTES * SAMPLE_BYTES
        consumed = min(self._window_bytes, max(SAMPLE_BYTES, consumed))
        self._buffer = self._buffer[consumed:]
        self.start_byte += consumed


class SilenceWindows:
    """Windows cut at silence, as many as are already there (up to ``most``) at a time."""

    def __init__(self, feed: PcmFeed, *, first_s: float = WINDOW_S) -> None:
        self._feed = feed
        self._cutter = SilenceCutter(WINDOW_S, CUT_SEARCH_S, first_max_s=first_s)
        self._ready: deque[bytes] = deque()
        self._current: list[bytes] = []
        self._start = 0
        self._done = False

    def next_batch(self, most: int) -> list[tuple[int, bytes]]:
        """Up to ``most`` windows with their start (in bytes): the first waited for, the
        rest only if already there. Empty when the recording is done."""
        while not self._ready and not self._done:
            self._take(self._feed.read(_whole_samples(1.0)))
        while len(self._ready) < most and not self._done and self._feed.waiting:
            self._take(self._feed.read(self._feed.waiting, wait=False))
        batch: list[tuple[int, bytes]] = []
        while self._ready and len(batch) < most:
            window = self._ready.popleft()
            batch.append((self._start, window))
            self._start += len(window)
        return batch

    def _take(self, pcm: bytes) -> None:
        items = self._cutter.feed(pcm) if pcm else self._cutter.end()
        if not pcm:
            self._done = True
        for item in items:
            if item is CUT:
                if self._current:
                    self._ready.append(b"".join(self._current))
                self._current = []
            else:
                assert isinstance(item, bytes)
                self._current.append(item)
