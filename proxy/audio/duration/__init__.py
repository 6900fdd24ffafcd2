"""An upload's duration, learnt from its container as its bytes pass on their way upstream.

Nothing is decoded and nothing is read twice. The reader keeps the first bytes,
where containers name their codec and often declare their length, and a bounded
tail, where a streamed file shows how far it got. In between it counts, skips
boxes by their sizes and, for WebM clusters of unknown size only, lets C search
the bytes leaving the tail: a chunk costs O(1) Python work, and parsing happens
at the head and at the end. This module sniffs the container and keeps the bytes;
each container's own module reads them.
Where the container allows, the bytes actually sent outrank what a header
claims: a WAV that declares an hour and ends after two seconds lasts two.

Before the rest has come, the head tells what the header declares (:meth:`declared`,
what a request reserves before it sends anything); and whatever any header claims, the
bytes can hold no fewer seconds than their count over the codec's highest rate
(:meth:`floor`, :mod:`.rates`), below which a length is never charged.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Callable

from . import flac, mp3, mp4, ogg, wav, webm
from .boxes import Boxes
from .buffers import HEAD_BYTES, TAIL_BYTES, Buf
from .rates import MAX_BYTES_PER_S, MPEG_LAYERS

__all__ = ["DurationReader"]

#: Chunks shorter than this are merged in the tail, so that it holds few objects.
_SMALL = 4096
#: Containers whose length is a claim (a header's count, a page's or a block's number)
#: that the bytes can contradict: :meth:`DurationReader.finish` holds them to the floor.
#: Not WAV: its length is its data bytes over the PCM rate, the floor's own sum, and a
#: floor from the whole upload would count its header and other chunks as audio too.
_CLAIMED = {"mp3", "flac", "ogg", "webm", "mp4"}


class DurationReader:
    """Fed an upload's bytes in order as they pass; tells its duration at the end."""

    def __init__(self, filename: str | None = None, content_type: str | None = None) -> None:
        self._mp3_hint = _hints_mp3(filename, content_type)
        self._container: str | None = None
        self._sniffing = True
        self._seen = 0
        self._head = bytearray()
        self._head_at = 0  # moves past ID3v2 tags, which can be megabytes of cover art
        self._tail: deque[Buf] = deque()
        self._tail_bytes = 0
        self._boxes: Boxes | None = None
        self._dropped_cluster: int | None = None  # timecode of the last one to leave the tail
        # WAV and MP4 are read by their walk alone: no head or tail is kept for them.
        self._keeps_ends = True
        # The head's MPEG frame search, and what it was done on.
        self._frame_key: tuple[int, int, str | None] | None = None
        self._frame: mp3.FirstFrame | None = None

    @property
    def container(self) -> str | None:
        """The container sniffed: "wav", "mp3", "ogg", "webm", "flac", "mp4", or None yet."""
        return self._container

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Takes the upload's next ``chunk``."""
        # Only immutable bytes are kept by reference: a caller may reuse its buffer.
        data = chunk if isinstance(chunk, bytes) else bytes(chunk)
        if not data:
            return
        base = self._seen
        self._seen += len(data)
        if self._keeps_ends and len(self._head) < HEAD_BYTES:
            self._keep_head(data, base)
        if self._sniffing:
            self._sniff(data, base)
        if self._boxes is not None:
            self._boxes.feed(data, base)
        if self._keeps_ends:
            self._keep_tail(data)

    def finish(self) -> float | None:
        """The duration in seconds, or None for an unknown or unreadable container.

        Never less than :meth:`floor` of the bytes seen where the length is a claim the
        bytes can contradict (a Xing count, STREAMINFO, a granule, a Duration, an mvhd).
        """
        if self._sniffing:
            self._sniff(b"", self._seen, final=True)
        seconds = _checked(self._measure)
        if seconds is not None and self._container in _CLAIMED:
            seconds = max(seconds, self.floor(self._seen))
        return seconds

    def declared(self) -> float | None:
        """The length in seconds the container's header declares, from the bytes fed so far.

        Read from the head (the first ``HEAD_BYTES`` past any ID3v2 tag), it does not
        change with how many bytes follow: what a request reserves before it sends any.
        None when the container declares no length (Ogg; a WAV or FLAC written as it
        streamed; an MP3 without a VBR header; an MP4 whose moov has not come) or its
        header has not been fed yet. A header can claim anything: see :meth:`floor`.
        """
        if self._sniffing:
            return None
        return _checked(self._declare)

    def floor(self, size: int) -> float:
        """The fewest seconds ``size`` bytes of this container can hold at its codec's
        highest byte rate (:data:`.rates.MAX_BYTES_PER_S`; for WAV and FLAC, the PCM rate
        their header declares); before the container is known, 48 kHz 16-bit stereo PCM's.

        What comes before the audio is not counted once it is known: ID3v2 tags (cover
        art, megabytes of it), a WAV's chunks before its data, a FLAC's metadata blocks.
        Decoders skip them by their sizes, as :meth:`finish` does.
        """
        return max(size - self._lead(), 0) / self._max_bytes_per_s()

    def _keep_head(self, data: bytes, base: int) -> None:
        start = self._head_at + len(self._head) - base
        if 0 <= start < len(data):
            self._head += data[start : start + HEAD_BYTES - len(self._head)]

    def _sniff(self, data: bytes, base: int, final: bool = False) -> None:
        head = self._head
        while head[:3] == b"ID3" and (size := mp3.id3v2_size(head)) is not None:
            del head[:size]
            self._head_at += size
            self._keep_head(data, base)
        if len(head) < 12 and not final:
            return
        self._sniffing = False
        if self._head_at:  # what follows an ID3v2 tag
            self._container = "flac" if head[:4] == b"fLaC" else None
        else:
            self._container = _magic(head)
        if self._container is None and mp3.starts_with_frame(head):
            self._container = "mp3"
        if self._container == "wav":
            self._boxes = wav.walker()
        elif self._container == "mp4":
            self._boxes = mp4.walker()
        elif self._container == "webm":
            self._boxes = webm.walker()
        if self._boxes is not None:
            # Sniffing waits for 12 bytes, so all that came before this chunk is in the head.
            self._boxes.feed(bytes(head[:base]), 0)
        if self._container in ("wav", "mp4"):
            self._keeps_ends = False
            self._head = bytearray()
            self._tail.clear()
            self._tail_bytes = 0

    def _keep_tail(self, data: bytes) -> None:
        tail = self._tail
        last = tail[-1] if tail else None
        if len(data) < _SMALL and isinstance(last, bytearray) and len(last) < _SMALL:
            last += data
        else:
            tail.append(bytearray(data) if len(data) < _SMALL else data)
        self._tail_bytes += len(data)
        while self._tail_bytes - len(tail[0]) >= TAIL_BYTES:
            piece = tail.popleft()
            self._forget(piece, len(piece))
        first = tail[0]
        if len(first) > TAIL_BYTES:  # one chunk longer than the whole tail
            cut = len(first) - TAIL_BYTES
            self._forget(first, cut)
            tail[0] = first[cut:]

    def _forget(self, piece: Buf, end: int) -> None:
        """Lets ``piece[:end]`` leave the tail, noting any WebM cluster of unknown size in it."""
        self._tail_bytes -= end
        if self._container != "webm" or self._boxes is None:
            return
        timecode = webm.timecode_leaving(self._boxes, piece, end, self._window)
        if timecode is not None:
            self._dropped_cluster = timecode

    def _window(self, piece: Buf, k: int, size: int) -> bytes:
        """``size`` bytes from ``piece[k]`` on, running on into the tail still kept.

        A piece cut from the tail's first chunk is followed by itself, not by the tail: but
        then ``k`` is far enough from its end for the window to fit in it.
        """
        window = bytearray(piece[k : k + size])
        for item in self._tail:
            if len(window) >= size:
                break
            window += item[: size - len(window)]
        return bytes(window)

    def _declare(self) -> float | None:
        kind, head = self._container, self._head
        if kind == "wav":
            return wav.declared(self._boxes)
        if kind == "mp4":  # an MP4's length is only ever the one it declares
            return mp4.seconds(self._boxes)
        if kind == "flac":
            return flac.declared(head)
        if kind == "webm":
            return webm.declared(head)
        if kind == "ogg" or not head:  # Ogg declares no length anywhere
            return None
        return mp3.declared(head, self._first_frame())

    def _lead(self) -> int:
        """How many of the first bytes are known not to be audio, skipped by their sizes."""
        if self._sniffing:  # nothing has followed the ID3v2 tags yet: they may be all there is
            return 0
        if self._container == "wav":
            return wav.audio_at(self._boxes)
        if self._container == "flac":
            return self._head_at + flac.audio_at(self._head)
        return self._head_at

    def _max_bytes_per_s(self) -> int:
        kind = self._container
        if kind in ("wav", "flac"):
            pcm = wav.pcm_rate(self._boxes) if kind == "wav" else flac.pcm_rate(self._head)
            if pcm is None:  # its header has not come: no better known than any upload
                return MAX_BYTES_PER_S[None]
            return min(pcm, MAX_BYTES_PER_S[kind]) if pcm > 0 else MAX_BYTES_PER_S[kind]
        if kind in (None, "mp3") and not self._sniffing and self._head:
            # MPEG audio has no magic: frames that run in the head are what finish() counts
            # as MPEG audio, and their layer sets the rate.
            layer = mp3.layer(self._first_frame())
            if layer is not None:
                return MAX_BYTES_PER_S[MPEG_LAYERS[layer]]
        return MAX_BYTES_PER_S[kind]

    def _first_frame(self) -> mp3.FirstFrame | None:
        """Where MPEG audio starts in the head (searched once for each head it is asked of:
        the length, the declared length and the floor all want it)."""
        key = (len(self._head), self._head_at, self._container)
        if self._frame_key != key:
            self._frame_key = key
            self._frame = mp3.first_frame(self._head, self._mp3_chain())
        return self._frame

    def _mp3_chain(self) -> int:
        """How many frames alike in a row make MPEG audio of the head.

        Bytes without magic may be MP3 after some junk: a run of frames says so, and a
        shorter one will do when the name or type agrees, or after an ID3v2 tag.
        """
        return 2 if self._container == "mp3" else 3 if self._mp3_hint or self._head_at else 5

    def _measure(self) -> float | None:
        kind = self._container
        if kind == "wav":
            return wav.seconds(self._boxes, self._seen)
        if kind == "mp4":
            return mp4.seconds(self._boxes)
        head, tail = self._head, b"".join(self._tail)
        if kind == "ogg":
            return ogg.seconds(head, tail)
        if kind == "webm":
            return webm.seconds(head, tail, self._boxes, self._dropped_cluster)
        if kind == "flac":
            return flac.seconds(head, tail)
        if kind is None and not head:
            return None
        seconds = mp3.seconds(head, self._first_frame(), self._head_at, tail, self._seen)
        if seconds is not None:
            self._container = "mp3"
        return seconds


def _checked(measure: Callable[[], float | None]) -> float | None:
    """What ``measure`` finds, if it is a length: None if not, or if the file trips it."""
    try:
        seconds = measure()
    except (ValueError, IndexError, KeyError, struct.error, ZeroDivisionError, OverflowError):
        # The parsers check what they read; this is the net under a file built to trip them.
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _hints_mp3(filename: str | None, content_type: str | None) -> bool:
    name = (filename or "").lower()
    mime = (content_type or "").split(";")[0].strip().lower()
    return name.endswith((".mp3", ".mpga", ".mp2")) or mime in {
        "audio/mpeg",
        "audio/mp3",
        "audio/mpeg3",
        "audio/x-mpeg-3",
        "audio/mpga",
    }


def _magic(head: Buf) -> str | None:
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == webm.EBML_ID:
        return "webm"
    if head[:4] == b"fLaC":
        return "flac"
    size = int.from_bytes(head[:4], "big")
    if head[4:8] == b"ftyp" or (bytes(head[4:8]) in _MP4_FIRST and (size >= 8 or size in (0, 1))):
        return "mp4"
    return None


#: Boxes an MP4 without ftyp may start with.
_MP4_FIRST = {b"moov", b"mdat", b"free", b"skip", b"wide"}
