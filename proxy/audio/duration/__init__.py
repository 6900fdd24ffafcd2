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
"""

from __future__ import annotations

import math
import struct
from collections import deque

from . import flac, mp3, mp4, ogg, wav, webm
from .boxes import Boxes
from .buffers import HEAD_BYTES, TAIL_BYTES, Buf

__all__ = ["DurationReader"]

#: Chunks shorter than this are merged in the tail, so that it holds few objects.
_SMALL = 4096


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
        """The duration in seconds, or None for an unknown or unreadable container."""
        if self._sniffing:
            self._sniff(b"", self._seen, final=True)
        try:
            seconds = self._measure()
        except (ValueError, IndexError, KeyError, struct.error, ZeroDivisionError, OverflowError):
            # The parsers check what they read; this is the net under a file built to trip them.
            return None
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            return None
        return seconds

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
        # Bytes without magic may be MP3 after some junk: a run of frames says so, and a
        # shorter one will do when the name or type agrees, or after an ID3v2 tag.
        chain = 2 if kind == "mp3" else 3 if self._mp3_hint or self._head_at else 5
        seconds = mp3.seconds(head, self._head_at, tail, self._seen, chain)
        if seconds is not None:
            self._container = "mp3"
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
