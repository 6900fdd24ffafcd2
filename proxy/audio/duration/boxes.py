"""A walk over size-prefixed boxes as they pass: RIFF chunks, MP4 boxes or EBML elements.

WAV, MP4 and WebM put what tells their duration in boxes that can come anywhere and
be of any length: a WAV's data chunk, an MP4's moov (before or after megabytes of mdat),
a WebM's clusters. The walk keeps the first bytes of the boxes asked for and skips the
rest by their declared sizes, so it never holds more than it was asked to and a chunk
costs it O(1) work, however long the box it falls in.
"""

from __future__ import annotations

from typing import NamedTuple


class Box(NamedTuple):
    """A box kept: where its body starts, its size and the first bytes of its body."""

    at: int  # where its body starts in the stream
    size: int | None  # its body's declared size; None: to the end of the stream
    body: bytearray  # as much of the body as was wanted and has come


class Boxes:
    """Walks size-prefixed boxes as they pass: RIFF chunks, MP4 boxes or EBML elements.

    The first bytes of wanted boxes are kept; the rest is skipped by arithmetic, so a
    box of any length costs nothing per chunk.
    """

    def __init__(
        self, at: int, layout: str, keep: dict[bytes, int], last: bytes = b"", enter: bytes = b""
    ) -> None:
        self._at = at  # the next byte the walk needs
        self._layout = layout  # "riff", "mp4" or "ebml"
        self._keep = keep  # box type: how many bytes of its body to keep
        self._last = last  # the box that ends the walk
        self._enter = enter  # the box whose body is walked too: Matroska's Segment
        self._header = bytearray()
        self._open: tuple[bytes, int | None] | None = None
        self._body = bytearray()
        self._want = 0
        self.found: dict[bytes, Box] = {}  # the last of each type kept
        self.done = False

    def feed(self, data: bytes, base: int) -> None:
        """Walks on through ``data``, the stream's bytes from offset ``base``."""
        i = self._at - base
        while i < len(data) and not self.done:
            if self._open is not None:
                piece = data[i : i + self._want]
                self._body += piece
                i += len(piece)
                self._want -= len(piece)
                if not self._want:
                    i += self._close()
                continue
            if not (size := self._header_size()):
                self.done = True  # not a header: the walk is lost
                break
            piece = data[i : i + size - len(self._header)]
            self._header += piece
            i += len(piece)
            # A header's first bytes can show it is longer: an MP4 largesize, EBML widths.
            if len(self._header) == self._header_size():
                i += self._start(base + i)
        self._at = base + i

    def _header_size(self) -> int:
        """How long the header being read is, as far as its first bytes tell; 0: no header."""
        header = self._header
        if self._layout != "ebml":
            return 16 if self._layout == "mp4" and header[:4] == b"\0\0\0\1" else 8
        if not header:
            return 1
        if (width := 9 - header[0].bit_length()) > 4:
            return 0
        if len(header) <= width:
            return width + 1
        return width + size_width if (size_width := 9 - header[width].bit_length()) <= 8 else 0

    def _start(self, at: int) -> int:
        """Reads the header just completed; returns how many bytes to skip."""
        header, self._header = bytes(self._header), bytearray()
        kind, size = self._parse(header)
        if kind == self._enter:
            return 0
        if kind not in self._keep:
            self.done = size is None  # a size unknown can only be walked into
            return 0 if size is None else self._padded(size)
        self._open = (kind, size)
        self._body = bytearray()
        # Recorded now: a moov cut short by the upload's end still has its mvhd.
        self.found[kind] = Box(at, size, self._body)
        self._want = self._keep[kind] if size is None else min(self._keep[kind], size)
        return 0 if self._want else self._close()

    def _parse(self, header: bytes) -> tuple[bytes, int | None]:
        """A header's box type and body size; None: unknown, or to the end of the stream."""
        if self._layout == "riff":
            return header[:4], int.from_bytes(header[4:8], "little")
        if self._layout == "ebml":
            width = 9 - header[0].bit_length()
            size = int.from_bytes(header[width:], "big") & (1 << 7 * (len(header) - width)) - 1
            unknown = size == (1 << 7 * (len(header) - width)) - 1
            return header[:width], None if unknown else size
        size = int.from_bytes(header[:4], "big")
        if size == 1:
            size = int.from_bytes(header[8:16], "big")
        elif size == 0:
            return header[4:8], None  # the last box, running to the end
        # A box shorter than its header is garbage: walk into it, and get lost there.
        return header[4:8], max(size - len(header), 0)

    def _close(self) -> int:
        """Ends the box kept; returns how many bytes of its body remain to skip."""
        assert self._open is not None
        kind, size = self._open
        self._open = None
        if kind == self._last or size is None:
            self.done = True
            return 0
        return self._padded(size) - len(self._body)

    def _padded(self, size: int) -> int:
        return size + (size & 1) if self._layout == "riff" else size
