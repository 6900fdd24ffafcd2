"""A WAV's duration: the bytes of its data chunk that were sent, over its byte rate.

A RIFF, RF64 or BW64 WAVE declares its format in the fmt chunk (and, past 4 GiB, its
real sizes in ds64) and the size of its data chunk in that chunk's header. But a WAV
written as it streamed never fills that size in, and an upload can stop short of what
it declares, so the size is only believed as a bound: the bytes actually sent decide.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .boxes import Box, Boxes

#: Formats whose byte rate is exactly sample rate times block align.
_PCM_TAGS = {1, 3, 6, 7, 0xFFFE}
#: A data chunk's size as a WAV written while it streamed leaves it: never filled in.
_UNFILLED = (0, 0xFFFFFFFF)


class _Format(NamedTuple):
    """The fields of a fmt chunk that say how many bytes a second takes."""

    tag: int
    channels: int
    rate: int
    byte_rate: int  # as declared: only believed for formats that are not PCM
    align: int
    bits: int


def walker() -> Boxes:
    """A walk over the RIFF chunks that keeps the format and notes where the data starts."""
    keep = {b"fmt ": 1024, b"ds64": 1024, b"data": 0}
    return Boxes(12, "riff", keep, last=b"data")


def seconds(boxes: Boxes | None, seen: int) -> float | None:
    """The audio sent, given the walk over the chunks and the ``seen`` bytes of the upload."""
    found = _format_and_data(boxes)
    if boxes is None or found is None:
        return None
    byte_rate, data = found
    sent = max(seen - data.at, 0)
    declared = _declared_size(boxes, data)
    return float((sent if declared is None else min(declared, sent)) / byte_rate)


def declared(boxes: Boxes | None) -> float | None:
    """The length the data chunk's header declares, however much of it was sent; None for
    a WAV written as it streamed, whose header says nothing."""
    found = _format_and_data(boxes)
    if boxes is None or found is None:
        return None
    byte_rate, data = found
    size = _declared_size(boxes, data)
    return None if size is None else size / byte_rate


def pcm_rate(boxes: Boxes | None) -> int | None:
    """The bytes a second of the PCM the fmt chunk declares (rate x channels x bytes a
    sample): None before the fmt chunk has come, 0 if it is unreadable.

    A format that is not PCM (ADPCM, say) takes fewer bytes a second than the PCM it
    decodes to, so this is the most its bytes can take for any format.
    """
    box = boxes.found.get(b"fmt ") if boxes is not None else None
    if box is None or (len(box.body) < 16 and (box.size is None or box.size >= 16)):
        return None  # not yet, or not all of what it needs
    fmt = _format(boxes)
    if fmt is None:  # whole, and too short to say
        return 0
    width = fmt.channels * ((fmt.bits + 7) // 8)
    if fmt.tag in _PCM_TAGS:  # samples padded out to their block take its whole width
        width = max(width, fmt.align)
    return fmt.rate * width


def audio_at(boxes: Boxes | None) -> int:
    """Where the data chunk's body starts, once the walk has come to it; else 0."""
    data = boxes.found.get(b"data") if boxes is not None else None
    return data.at if data is not None else 0


def _format(boxes: Boxes | None) -> _Format | None:
    fmt = boxes.found.get(b"fmt ") if boxes is not None else None
    if fmt is None or len(fmt.body) < 16:
        return None
    return _Format(*struct.unpack_from("<HHIIHH", fmt.body))


def _format_and_data(boxes: Boxes | None) -> tuple[int, Box] | None:
    """The byte rate and the data chunk, once the walk has come to both."""
    fmt = _format(boxes)
    data = boxes.found.get(b"data") if boxes is not None else None
    if fmt is None or data is None:
        return None
    byte_rate = fmt.byte_rate
    if fmt.tag in _PCM_TAGS and fmt.rate and fmt.align:
        byte_rate = fmt.rate * fmt.align
    return (byte_rate, data) if byte_rate else None


def _declared_size(boxes: Boxes, data: Box) -> int | None:
    """The data chunk's size as declared (in ds64 past 4 GiB); None if never filled in."""
    size = data.size
    ds64 = boxes.found.get(b"ds64")
    if size == 0xFFFFFFFF and ds64 is not None and len(ds64.body) >= 16:
        size = int.from_bytes(ds64.body[8:16], "little")
    # Size 0 or all ones: a WAV written as it streamed, whose header was never filled in.
    return None if size is None or size in _UNFILLED else size
