"""A WAV's duration: the bytes of its data chunk that were sent, over its byte rate.

A RIFF, RF64 or BW64 WAVE declares its format in the fmt chunk (and, past 4 GiB, its
real sizes in ds64) and the size of its data chunk in that chunk's header. But a WAV
written as it streamed never fills that size in, and an upload can stop short of what
it declares, so the size is only believed as a bound: the bytes actually sent decide.
"""

from __future__ import annotations

import struct

from .boxes import Boxes

#: Formats whose byte rate is exactly sample rate times block align.
_PCM_TAGS = {1, 3, 6, 7, 0xFFFE}


def walker() -> Boxes:
    """A walk over the RIFF chunks that keeps the format and notes where the data starts."""
    keep = {b"fmt ": 1024, b"ds64": 1024, b"data": 0}
    return Boxes(12, "riff", keep, last=b"data")


def seconds(boxes: Boxes | None, seen: int) -> float | None:
    """The audio sent, given the walk over the chunks and the ``seen`` bytes of the upload."""
    if boxes is None or b"fmt " not in boxes.found or b"data" not in boxes.found:
        return None
    fmt, data = boxes.found[b"fmt "].body, boxes.found[b"data"]
    if len(fmt) < 16:
        return None
    tag, rate, byte_rate, align = struct.unpack_from("<H2xIIH", fmt)
    if tag in _PCM_TAGS and rate and align:
        byte_rate = rate * align
    if not byte_rate:
        return None
    declared = data.size
    ds64 = boxes.found.get(b"ds64")
    if declared == 0xFFFFFFFF and ds64 is not None and len(ds64.body) >= 16:
        declared = int.from_bytes(ds64.body[8:16], "little")
    sent = max(seen - data.at, 0)
    # Size 0 or all ones: a WAV written as it streamed, whose header was never filled in.
    size = sent if declared in (None, 0, 0xFFFFFFFF) else min(declared, sent)
    return float(size / byte_rate)
