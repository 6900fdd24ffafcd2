"""An Ogg's duration: the granule position of its last page, less the codec's pre-skip.

Ogg declares no length anywhere. Each page carries a granule position, for audio the
count of samples decoded by its end, at a rate the stream's identification packet gives
(Opus always counts at 48 kHz and says how many samples to skip first). So the first
pages name the codec and the last whole page in the tail tells where the stream got to,
whether or not the upload was cut short.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .buffers import Buf
from .flac import streaminfo


class _Page(NamedTuple):
    granule: int
    serial: int
    first: bool
    body: int
    end: int
    lacing: bytes


def _page(buf: Buf, i: int) -> _Page | None:
    if buf[i : i + 4] != b"OggS" or i + 27 > len(buf) or buf[i + 4] != 0:
        return None
    granule, serial = struct.unpack_from("<qI", buf, i + 6)
    body = i + 27 + buf[i + 26]
    if body > len(buf):
        return None
    lacing = bytes(buf[i + 27 : body])
    return _Page(granule, serial, bool(buf[i + 5] & 2), body, body + sum(lacing), lacing)


def seconds(head: Buf, tail: bytes) -> float | None:
    """Where the audio stream's last whole page in ``tail`` ends, in seconds."""
    i, stream = 0, None
    while stream is None and (page := _page(head, i)) is not None and page.first:
        size = 0
        for value in page.lacing:
            size += value
            if value < 255:
                break
        stream = _ogg_codec(head[page.body : page.body + size])
        serial, i = page.serial, page.end
    if stream is None:
        return None
    rate, pre_skip = stream
    # The last whole page of the stream: a cut one at the very end does not fit.
    k = tail.rfind(b"OggS")
    while k >= 0:
        page = _page(tail, k)
        if page and page.end <= len(tail) and page.serial == serial and page.granule >= 0:
            return max(page.granule - pre_skip, 0) / rate
        k = tail.rfind(b"OggS", 0, k)
    return None


def _ogg_codec(packet: Buf) -> tuple[int, int] | None:
    """(granule rate, samples to skip) from a stream's identification packet."""
    if packet[:8] == b"OpusHead" and len(packet) >= 12:
        return 48000, int.from_bytes(packet[10:12], "little")  # Opus always counts at 48 kHz
    rate = 0
    if packet[:7] == b"\x01vorbis" and len(packet) >= 16:
        rate = int.from_bytes(packet[12:16], "little")
    elif packet[:5] == b"\x7fFLAC" and packet[9:13] == b"fLaC":
        info = streaminfo(packet, 13)
        rate = info.rate if info is not None else 0
    elif packet[:8] == b"Speex   " and len(packet) >= 40:
        rate = int.from_bytes(packet[36:40], "little")
    return (rate, 0) if rate else None
