"""A FLAC's duration: the samples STREAMINFO declares, bounded by where its last frame ends.

STREAMINFO, the first metadata block, declares the sample rate and the total samples;
but an encoder that streamed its output may leave the total at 0, and an upload can stop
before it. Every frame header numbers its frame (or, with variable blocking, its first
sample) and is guarded by a CRC-8, so the last whole header in the tail tells reliably how
far the stream got.
"""

from __future__ import annotations

from typing import NamedTuple

from .buffers import Buf


class StreamInfo(NamedTuple):
    """What a FLAC's STREAMINFO block declares."""

    rate: int  # samples a second; 0 is invalid
    total: int  # samples in all; 0: not known when it was written
    block: int  # the most samples a frame holds
    channels: int
    bits: int  # bits a sample


def streaminfo(buf: Buf, i: int) -> StreamInfo | None:
    """The STREAMINFO block at ``buf[i]``, if it is there whole."""
    if len(buf) < i + 38 or buf[i] & 0x7F != 0:
        return None
    packed = int.from_bytes(buf[i + 14 : i + 22], "big")
    return StreamInfo(
        rate=packed >> 44,
        total=packed & (1 << 36) - 1,
        block=int.from_bytes(buf[i + 6 : i + 8], "big"),
        channels=(packed >> 41 & 7) + 1,
        bits=(packed >> 36 & 31) + 1,
    )


def seconds(head: Buf, tail: bytes) -> float | None:
    """The samples STREAMINFO declares, or fewer if the last frame in ``tail`` ends sooner."""
    info = _head_info(head)
    if info is None:
        return None
    # The last frame says where the stream got to, even when STREAMINFO was never filled in.
    end = _flac_end(tail, info.block)
    total = info.total
    samples = total if end is None else min(total, end) if total else end
    return samples / info.rate if samples else None


def declared(head: Buf) -> float | None:
    """The samples STREAMINFO declares, in seconds, however many frames follow; None if it
    declares none (an encoder that streamed its output leaves the count at 0)."""
    info = _head_info(head)
    return info.total / info.rate if info is not None and info.total else None


def pcm_rate(head: Buf) -> int | None:
    """The bytes a second of the PCM STREAMINFO declares (rate x channels x bytes a
    sample): None before it has come, 0 if it is unreadable. Lossless, a FLAC never
    takes more than its PCM."""
    if len(head) < 42:
        return None
    info = _head_info(head)
    return info.rate * info.channels * ((info.bits + 7) // 8) if info is not None else 0


def audio_at(head: Buf) -> int:
    """Where the frames start in ``head``, past the metadata blocks that decoders skip by
    their sizes (a PICTURE can be megabytes), or as far as ``head`` shows them; 0 if it
    is not a FLAC's."""
    if head[:4] != b"fLaC":
        return 0
    i = 4
    while i + 4 <= len(head):
        last = head[i] & 0x80
        i += 4 + int.from_bytes(head[i + 1 : i + 4], "big")
        if last:
            break
    return i


def _head_info(head: Buf) -> StreamInfo | None:
    """The STREAMINFO a FLAC starts with, if it has a sample rate."""
    info = streaminfo(head, 4) if head[:4] == b"fLaC" else None
    return info if info is not None and info.rate else None


def _flac_end(buf: bytes, block: int) -> int | None:
    """The sample where the last whole frame header in ``buf`` says its frame ends."""
    k, tries = len(buf), 4096
    while tries and (k := buf.rfind(b"\xff", 0, k)) >= 0:
        if (frame := _flac_frame(buf, k, block)) is not None:
            return frame
        tries -= 1
    return None


#: Block sizes by code; the negative ones are read from the header, 1 or 2 bytes wide.
_FLAC_BLOCKS = (0, 192, 576, 1152, 2304, 4608, -1, -2, *(256 << n for n in range(8)))


def _flac_frame(buf: bytes, i: int, block: int) -> int | None:
    header = buf[i : i + 16]
    if len(header) < 6 or header[1] & 0xFE != 0xF8 or header[2] >> 4 == 0 or header[2] & 15 == 15:
        return None
    if header[3] >> 4 > 10 or header[3] & 1 or header[3] >> 1 & 7 == 3:
        return None
    first = header[4]
    extra = 0 if first < 0x80 else 8 - (first ^ 0xFF).bit_length() - 1
    if first >= 0x80 and not 1 <= extra <= 6:
        return None
    number, j = first & (0x7F >> extra), 5
    for _ in range(extra):
        if j >= len(header) or header[j] & 0xC0 != 0x80:
            return None
        number, j = number << 6 | header[j] & 0x3F, j + 1
    size = _FLAC_BLOCKS[header[2] >> 4]
    if size < 0:
        width = -size
        size, j = int.from_bytes(header[j : j + width], "big") + 1, j + width
    j += {12: 1, 13: 2, 14: 2}.get(header[2] & 15, 0)
    if j >= len(header) or _crc8(header[:j]) != header[j]:
        return None
    start = number if header[1] & 1 else number * block  # variable blocking counts samples
    return start + size


def _crc8_table() -> bytes:
    table = bytearray()
    for value in range(256):
        for _ in range(8):
            value = (value << 1 ^ 0x07 if value & 0x80 else value << 1) & 0xFF
        table.append(value)
    return bytes(table)


_CRC8 = _crc8_table()


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = _CRC8[crc ^ byte]
    return crc
