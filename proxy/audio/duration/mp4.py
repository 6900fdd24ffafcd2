"""An MP4's duration: the one its movie header declares, in mvhd or, if fragmented, mehd.

MP4 (and M4A, MOV, 3GP) declares its length in the moov box, which a muxer may write
before or after the media data, so the walk keeps moov wherever it comes and skips mdat
by its size. Frames are not counted, so an MP4 cut short is believed to last as long
as it declares.
"""

from __future__ import annotations

import struct

from .boxes import Boxes
from .buffers import Buf

#: How much of an MP4's moov box is kept: mvhd comes first in it, and a fragmented
#: file's moov (where mehd is) has no sample tables, so its start is enough; a moov of
#: megabytes (long files, or one built to be) is not held.
_MOOV_BYTES = 64 * 1024


def walker() -> Boxes:
    """A walk over the top-level boxes that keeps moov, wherever it comes."""
    return Boxes(0, "mp4", {b"moov": _MOOV_BYTES}, last=b"moov")


def seconds(boxes: Boxes | None) -> float | None:
    """The length declared by the moov box the walk kept: in mvhd, or mehd if fragmented.

    It is also what the MP4 declares: None until its moov has come.
    """
    moov = boxes.found.get(b"moov") if boxes is not None else None
    mvhd = _mp4_child(moov.body, b"mvhd") if moov is not None else None
    if moov is None or mvhd is None or len(mvhd) < (32 if mvhd[:1] == b"\x01" else 20):
        return None
    if mvhd[0] == 1:
        timescale, duration = struct.unpack_from(">IQ", mvhd, 20)
        unknown = (1 << 64) - 1
    else:
        timescale, duration = struct.unpack_from(">II", mvhd, 12)
        unknown = (1 << 32) - 1
    if duration in (0, unknown):  # fragmented: the movie may declare its whole length in mehd
        mehd = _mp4_child(_mp4_child(moov.body, b"mvex") or b"", b"mehd")
        if mehd is None or len(mehd) < (12 if mehd[:1] == b"\x01" else 8):
            return None
        duration = int.from_bytes(mehd[4:12] if mehd[0] == 1 else mehd[4:8], "big")
    return duration / timescale if timescale else None


def _mp4_child(buf: Buf, kind: bytes) -> Buf | None:
    i = 0
    while i + 8 <= len(buf):
        size, name = struct.unpack_from(">I4s", buf, i)
        start = i + 8
        if size == 1:
            size, start = int.from_bytes(buf[i + 8 : i + 16], "big"), i + 16
        elif size == 0:
            size = len(buf) - i
        if size < start - i:
            return None
        if name == kind:
            return buf[start : i + size]
        i += size
    return None
