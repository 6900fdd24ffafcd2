"""An MP3's duration: from its Xing, Info or VBRI header if it has one, else from its bitrate.

MPEG audio has no container: a file is frames, maybe after an ID3v2 tag and before ID3v1
and APE tags. Only a VBR header, which encoders write into the first frame, declares how
many frames follow, and a LAME tag in it how many samples of priming and padding to take
off. Without one, a constant bitrate turns the bytes sent into seconds; and since a lone
sync word can be chance, bytes without magic only count as MP3 after a run of frames.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from .buffers import HEAD_BYTES, Buf


def id3v2_size(head: Buf) -> int | None:
    """The whole size of the ID3v2 tag that ``head`` starts with, or None."""
    if len(head) < 10 or head[3] == 0xFF or head[4] == 0xFF or any(b & 0x80 for b in head[6:10]):
        return None
    size = head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]
    return 10 + size + (10 if head[5] & 0x10 else 0)


class _Frame(NamedTuple):
    key: int  # version, layer and rate bits: equal in every frame of a stream
    layer: int
    bitrate: int  # bits per second; 0 for free format
    rate: int
    samples: int
    length: int
    side: int  # where a Xing header would start, from the frame's start


_BITRATES = {  # kbit/s by (MPEG-1, layer)
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
#: LAME's encoder delay plus the decoder's: what a stream without a LAME tag is assumed to prime.
_MP3_PRIMING = 576 + 529


def _frame(buf: Buf, i: int) -> _Frame | None:
    """The MPEG audio frame header at ``buf[i]``, if one is there."""
    if i + 4 > len(buf) or buf[i] != 0xFF or buf[i + 1] < 0xE0:
        return None
    b1, b2, b3 = buf[i + 1], buf[i + 2], buf[i + 3]
    version, layer_bits, index, rate_index = b1 >> 3 & 3, b1 >> 1 & 3, b2 >> 4, b2 >> 2 & 3
    if version == 1 or layer_bits == 0 or index == 15 or rate_index == 3 or b3 & 3 == 2:
        return None
    mpeg1, layer = version == 3, 4 - layer_bits
    bitrate = _BITRATES[mpeg1, layer][index] * 1000
    rate, padding = _RATES[version][rate_index], b2 >> 1 & 1
    if layer == 1:
        samples, length = 384, (12 * bitrate // rate + padding) * 4
    else:
        samples = 1152 if mpeg1 or layer == 2 else 576
        length = samples // 8 * bitrate // rate + padding
    mono = b3 >> 6 == 3
    side = 4 + ((17 if mono else 32) if mpeg1 else (9 if mono else 17))
    return _Frame((b1 & 0x1E) << 8 | b2 & 0x0C, layer, bitrate, rate, samples, length, side)


def starts_with_frame(head: Buf) -> bool:
    """Whether ``head`` starts with an MPEG audio frame header."""
    return _frame(head, 0) is not None


#: Where MPEG audio starts in a head: the first frame's offset and header.
FirstFrame = tuple[int, "_Frame"]


def first_frame(head: Buf, chain: int) -> FirstFrame | None:
    """The first frame of ``chain`` alike in a row: a lone sync word can be chance.

    A search through the head: the reader does it once per head, and hands its result
    to the functions below. The regular expression finds the 11-bit sync words in C, so
    bytes that are no audio at all cost a few candidates, not one per 0xFF."""
    found = _SYNC.search(head)
    while found is not None:
        i = found.start()
        if (frame := _frame(head, i)) is not None and _chained(head, i, frame, chain):
            return i, frame
        found = _SYNC.search(head, i + 1)  # from the next byte: ``ff ff e3`` holds two
    return None


#: A frame's sync word: eleven bits set.
_SYNC = re.compile(rb"\xff[\xe0-\xff]")


def _chained(head: Buf, i: int, frame: _Frame, chain: int) -> bool:
    for _ in range(chain - 1):
        if not frame.length:
            return False
        i += frame.length
        if i + 4 > len(head):
            return len(head) == HEAD_BYTES or i == len(head)
        following = _frame(head, i)
        if following is None or following.key != frame.key:
            return False
    return True


def seconds(head: Buf, found: FirstFrame | None, at: int, tail: bytes, seen: int) -> float | None:
    """The audio's length, or None if ``head`` holds no run of frames alike (``found``,
    :func:`first_frame`'s).

    ``head`` starts at byte ``at`` of the upload, past any ID3v2 tag; ``tail`` is its
    last bytes, and ``seen`` how many there were in all.
    """
    if found is None:
        return None
    i, frame = found
    audio = seen - _trailing_tags(tail) - (at + i)
    if audio <= 0:
        return None
    vbr = _vbr_header(head, i, frame)
    if vbr is not None and vbr[0]:
        frames, size, trim = vbr
        seconds = _counted(frame, frames, trim)
        if size and audio < size:  # cut short: the header describes more than was sent
            seconds *= audio / size
        # A Xing header can claim anything: no MPEG audio is thinner than 8 kbit/s (nor
        # thicker than its layer's top bitrate, which the reader's floor holds it to).
        return min(seconds, audio * 8 / 8000)
    if not frame.bitrate:
        return None
    if vbr is not None:  # an Info frame without a count holds no audio
        audio -= frame.length
    # Without a LAME tag to say how much, assume half a frame of padding, and LAME's priming
    # for layer III (most of it is LAME's; it adds 40 to 90 ms, too much to ignore).
    padding = frame.samples // 2 + (_MP3_PRIMING if frame.layer == 3 else 0)
    return max((audio * 8 / frame.bitrate) - padding / frame.rate, 0.0)


def declared(head: Buf, found: FirstFrame | None) -> float | None:
    """The length a Xing, Info or VBRI header declares, from ``head`` alone, or None.

    None too if ``head`` holds no run of frames alike (``found``), or its first frame no
    such header, or one that does not count its frames.
    """
    if found is None:
        return None
    i, frame = found
    vbr = _vbr_header(head, i, frame)
    return _counted(frame, vbr[0], vbr[2]) if vbr is not None and vbr[0] else None


def layer(found: FirstFrame | None) -> int | None:
    """The layer (1, 2 or 3) of the first run of frames alike (``found``), or None."""
    return found[1].layer if found is not None else None


def _counted(frame: _Frame, frames: int, trim: int) -> float:
    """The seconds ``frames`` frames like ``frame`` hold, less ``trim`` samples of priming
    and padding (when the frames hold more than that)."""
    samples = frames * frame.samples
    return (samples - trim if trim < samples else samples) / frame.rate


def _vbr_header(head: Buf, i: int, frame: _Frame) -> tuple[int, int, int] | None:
    """(frames, bytes, priming and padding samples) from a Xing, Info or VBRI header."""
    if frame.layer != 3:
        return None
    x = i + frame.side
    if head[x : x + 4] in (b"Xing", b"Info") and len(head) >= x + 8:
        flags, x = int.from_bytes(head[x + 4 : x + 8], "big"), x + 8
        frames = size = 0
        if flags & 1:
            frames, x = int.from_bytes(head[x : x + 4], "big"), x + 4
        if flags & 2:
            size, x = int.from_bytes(head[x : x + 4], "big"), x + 4
        x += (100 if flags & 4 else 0) + (4 if flags & 8 else 0)
        trim = 0
        if len(head) >= x + 24 and bytes(head[x : x + 4]).isalnum():  # a LAME-style tag
            delays = int.from_bytes(head[x + 21 : x + 24], "big")
            trim = (delays >> 12) + (delays & 0xFFF)
        return frames, size, trim
    v = i + 36
    if head[v : v + 4] == b"VBRI" and len(head) >= v + 18:
        return (
            int.from_bytes(head[v + 14 : v + 18], "big"),
            int.from_bytes(head[v + 10 : v + 14], "big"),
            0,
        )
    return None


def _trailing_tags(tail: bytes) -> int:
    """How many of the last bytes are an ID3v1 and an APE tag, not audio."""
    end = len(tail)
    if end >= 128 and tail[end - 128 : end - 125] == b"TAG":
        end -= 128
    if end >= 32 and tail[end - 32 : end - 24] == b"APETAGEX":
        size, flags = struct.unpack_from("<II", tail, end - 20)
        size += 32 if flags & 0x80000000 else 0  # the footer counts itself, not the header
        end -= size if size <= end else 0
    return len(tail) - end
