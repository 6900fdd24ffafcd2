"""A WebM's duration: where its last block ends, bounded by any Duration its Info declares.

Matroska (WebM is a subset) may declare a Duration in the Segment's Info, but a muxer
that streams, such as a browser's MediaRecorder, writes none and leaves its Segment and
Clusters of unknown size; a Duration written up front cannot know the upload stopped
early either. Every cluster carries a timecode and every block one relative to it, and
an Opus packet tells its own length, so the last block in the tail says where the
stream got to. A cluster can outgrow the tail, so the timecode of the last one to start
is remembered as the bytes pass: walked to while sizes are known, searched for after.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

from .boxes import Boxes
from .buffers import Buf

#: The EBML header's id, which a WebM starts with.
EBML_ID = b"\x1a\x45\xdf\xa3"
#: A Cluster's id: the element whose timecode the blocks in it count from.
CLUSTER_ID = b"\x1f\x43\xb6\x75"
_SEGMENT_ID = b"\x18\x53\x80\x67"
#: A cluster's id and the 8-byte unknown size that streaming muxers give it.
_OPEN_CLUSTER = CLUSTER_ID + b"\x01" + b"\xff" * 7
_EBML, _SEGMENT, _CLUSTER = (int.from_bytes(i, "big") for i in (EBML_ID, _SEGMENT_ID, CLUSTER_ID))
_INFO, _TRACKS, _SCALE, _DURATION = 0x1549A966, 0x1654AE6B, 0x2AD7B1, 0x4489
_TRACK, _TRACK_TYPE, _CODEC, _CODEC_DELAY = 0xAE, 0x83, 0x86, 0x56AA
_TIMECODE, _SIMPLE_BLOCK, _BLOCK_GROUP, _BLOCK, _BLOCK_DURATION = 0xE7, 0xA3, 0xA0, 0xA1, 0x9B
#: What a cluster holds: anything else ends one of unknown size.
_IN_CLUSTER = {0xE7, 0x5854, 0xA7, 0xAB, 0xA3, 0xA0, 0xAF, 0xEC, 0xBF}
#: A Segment's children, which follow a cluster.
_TOP = {_CLUSTER, _INFO, _TRACKS, 0x1C53BB6B, 0x1254C367, 0x1043A770, 0x1941A469, 0x114D9B74}


def walker() -> Boxes:
    """A walk into the Segment that skips clusters by their sizes, keeping each one's timecode."""
    return Boxes(0, "ebml", {CLUSTER_ID: 40}, enter=_SEGMENT_ID)


def timecode_leaving(
    boxes: Boxes, piece: Buf, end: int, window: Callable[[Buf, int, int], bytes]
) -> int | None:
    """The timecode of the last cluster of unknown size to start in ``piece[:end]``, if any.

    ``piece[:end]`` is leaving the tail; ``window(piece, k, size)`` gives ``size`` bytes
    from ``piece[k]`` on, running on into the tail still kept.
    """
    cluster = boxes.found.get(CLUSTER_ID)
    if cluster is None or cluster.size is not None:
        return None
    # The walk stopped at a cluster of unknown size: the next ones must be searched for,
    # as they leave the tail, since one can outgrow it and its timecode must outlive its
    # start. The id with its unknown size, 12 bytes, is found twice as fast as the bare id.
    edge = max(end - 11, 0)
    k = window(piece, edge, 22).rfind(_OPEN_CLUSTER, 0, end - edge + 11)
    k = edge + k if k >= 0 else piece.rfind(_OPEN_CLUSTER, 0, end)
    while k >= 0:
        if (timecode := _cluster_timecode(window(piece, k, 40))) is not None:
            return timecode
        k = piece.rfind(_OPEN_CLUSTER, 0, min(k + 11, end))
    return None


def seconds(head: Buf, tail: bytes, boxes: Boxes | None, dropped: int | None) -> float | None:
    """Where the last block ends, or the Info's Duration if that is sooner, in seconds.

    ``dropped`` is the timecode of the last cluster of unknown size to leave the tail.
    """
    cluster = boxes.found.get(CLUSTER_ID) if boxes is not None else None
    if dropped is None and cluster is not None:  # the last the walk went past
        found = _timecode(cluster.body, 0, len(cluster.body))
        dropped = found[0] if found else None
    return _matroska_seconds(head, tail, dropped)


def declared(head: Buf) -> float | None:
    """The Duration the Segment's Info declares, in seconds, however many blocks follow;
    None without one (a streaming muxer writes none)."""
    info = _head_info(head)
    if info is None or info.duration is None:
        return None
    return _seconds(info.duration, info)


class _Element(NamedTuple):
    id: int
    body: int
    end: int | None  # None: unknown size, as streamed Segments and Clusters have


def _element(buf: Buf, i: int) -> _Element | None:
    if i >= len(buf) or (width := 9 - buf[i].bit_length()) > 4 or i + width >= len(buf):
        return None
    ident, i = int.from_bytes(buf[i : i + width], "big"), i + width
    if (width := 9 - buf[i].bit_length()) > 8 or i + width > len(buf):
        return None
    size, body = int.from_bytes(buf[i : i + width], "big") & (1 << 7 * width) - 1, i + width
    return _Element(ident, body, None if size == (1 << 7 * width) - 1 else body + size)


def _children(buf: Buf, i: int, end: int) -> Iterator[_Element]:
    """The elements in ``buf[i:end]``; the last may run past ``end`` or have no size."""
    while i < end and (element := _element(buf, i)) is not None:
        yield element
        if element.end is None or element.end > end:
            return
        i = element.end


def _uint(buf: Buf, element: _Element) -> int:
    return int.from_bytes(buf[element.body : element.end], "big")


class _Info(NamedTuple):
    """What the elements before the first cluster say: the Info's and the audio track's."""

    scale: int  # nanoseconds a tick of the timecodes
    duration: float | None  # in ticks
    codec: bytes
    delay: int  # the codec's, in nanoseconds


def _head_info(head: Buf) -> _Info | None:
    """The Info and audio track of the Segment ``head`` starts with, or None if none does."""
    header = _element(head, 0)
    segment = _element(head, header.end) if header and header.id == _EBML and header.end else None
    if segment is None or segment.id != _SEGMENT:
        return None
    scale, duration, codec, delay = 1_000_000, None, b"", 0
    for child in _children(head, segment.body, min(segment.end or len(head), len(head))):
        if child.id == _CLUSTER or child.end is None:
            break
        if child.id == _INFO:
            fields = _fields(head, child)
            scale = int.from_bytes(fields.get(_SCALE, b""), "big") or scale
            if len(raw := fields.get(_DURATION, b"")) in (4, 8):
                duration = float(struct.unpack(">f" if len(raw) == 4 else ">d", raw)[0])
        elif child.id == _TRACKS:
            codec, delay = _audio_track(head, child)
    return _Info(scale, duration, codec, delay)


def _matroska_seconds(head: Buf, tail: bytes, dropped: int | None) -> float | None:
    info = _head_info(head)
    if info is None:
        return None
    ticks = _last_ticks(tail, dropped, info.codec == b"A_OPUS", info.scale)
    # A Duration written up front cannot know that the upload stopped early.
    ends = [end for end in (info.duration, ticks) if end is not None]
    return _seconds(min(ends), info) if ends else None


def _seconds(ticks: float, info: _Info) -> float:
    # Timecodes, and so the Duration, include the codec's delay (Opus's pre-skip), not
    # part of the audio.
    return max(ticks * info.scale - info.delay, 0) / 1e9


def _fields(buf: Buf, parent: _Element) -> dict[int, Buf]:
    return {f.id: buf[f.body : f.end] for f in _children(buf, parent.body, parent.end or len(buf))}


def _audio_track(buf: Buf, tracks: _Element) -> tuple[bytes, int]:
    """The codec and codec delay (in ns) of the first audio track."""
    for track in _children(buf, tracks.body, tracks.end or len(buf)):
        fields = _fields(buf, track) if track.id == _TRACK else {}
        if fields.get(_TRACK_TYPE) == b"\x02":
            delay = int.from_bytes(fields.get(_CODEC_DELAY, b""), "big")
            return bytes(fields.get(_CODEC, b"")).rstrip(b"\0"), delay
    return b"", 0


def _cluster_timecode(buf: Buf) -> int | None:
    """The timecode of the cluster ``buf`` starts with, if it does."""
    found = _cluster_at(buf, 0)
    return found[0] if found else None


def _cluster_at(buf: Buf, k: int) -> tuple[int, int, int] | None:
    """(timecode, where its blocks start, where it ends in ``buf``) of the cluster at ``k``."""
    cluster = _element(buf, k)
    if cluster is None or cluster.id != _CLUSTER:
        return None
    end = len(buf) if cluster.end is None else min(cluster.end, len(buf))
    found = _timecode(buf, cluster.body, end)
    return (*found, end) if found is not None else None


def _timecode(buf: Buf, i: int, end: int) -> tuple[int, int] | None:
    """A cluster's timecode, from its body at ``buf[i]``, and where its blocks start."""
    for child in _children(buf, i, end):
        if child.id == _TIMECODE and child.end is not None and child.end - child.body <= 8:
            return _uint(buf, child), child.end
        if child.id not in (0xBF, 0xEC, 0xA7, 0xAB):  # it comes first, bar these
            return None
    return None


class _Walk(NamedTuple):
    hops: int
    settled: bool  # ended right at the end, or at a Segment child: not at garbage
    last: tuple[int, float | None] | None  # the last block's timecode and length, if known
    previous: int | None  # the timecode of the block before it


def _blocks(buf: bytes, i: int, end: int, opus: bool, scale: int) -> _Walk:
    """Walks the blocks of a cluster from ``i``: only at the end, so Python's pace is fine."""
    hops, last, previous = 0, None, None
    while i < end:
        element = _element(buf, i)
        if element is None or element.id not in _IN_CLUSTER:
            return _Walk(hops, element is not None and element.id in _TOP, last, previous)
        if element.end is None or element.end > len(buf):  # the last block, cut short
            return _Walk(hops, False, last, previous)
        block, length = None, None
        if element.id == _SIMPLE_BLOCK:
            block = _block(buf, element.body, element.end, opus, scale)
        elif element.id == _BLOCK_GROUP:
            for field in _children(buf, element.body, element.end):
                if field.id == _BLOCK:
                    block = _block(buf, field.body, field.end or element.end, opus, scale)
                elif field.id == _BLOCK_DURATION:
                    length = float(_uint(buf, field))
        if block is not None:
            if last is not None:
                previous = last[0]
            last = (block[0], length if length is not None else block[1])
        hops, i = hops + 1, element.end
    return _Walk(hops, i == end, last, previous)


def _block(buf: bytes, i: int, end: int, opus: bool, scale: int) -> tuple[int, float | None] | None:
    """A block's timecode, relative to its cluster's, and its length in ticks if Opus tells."""
    if i >= end or (width := 9 - buf[i].bit_length()) > 8 or i + width + 3 > end:
        return None
    i += width
    timecode = int.from_bytes(buf[i : i + 2], "big", signed=True)
    laced, payload = buf[i + 2] & 0x06, i + 3
    length = None
    if opus and not laced and payload < end:
        length = _opus_ms(buf[payload], buf[payload + 1] if payload + 1 < end else 0) * 1e6 / scale
    return timecode, length


def _opus_ms(toc: int, count: int) -> float:
    """An Opus packet's length from its TOC byte (RFC 6716, 3.1)."""
    config = toc >> 3
    if config < 12:
        size = (10.0, 20.0, 40.0, 60.0)[config & 3]
    elif config < 16:
        size = (10.0, 20.0)[config & 1]
    else:
        size = (2.5, 5.0, 10.0, 20.0)[config & 3]
    frames = (1, 2, 2, count & 0x3F)[toc & 3]
    return size * frames


def _last_ticks(tail: bytes, dropped: int | None, opus: bool, scale: int) -> float | None:
    """Where the last block in the tail ends, in ticks of the timecode scale."""
    k, found = tail.rfind(CLUSTER_ID), None
    while k >= 0 and (found := _cluster_at(tail, k)) is None:
        k = tail.rfind(CLUSTER_ID, 0, k + 3)
    if k >= 0 and found is not None:
        timecode, start, end = found
        walk = _blocks(tail, start, end, opus, scale)
    elif dropped is not None:  # the cluster began before the tail: find its blocks' rhythm
        timecode, walk = dropped, _resync(tail, opus, scale)
    else:
        return None
    if walk.last is None:
        return float(timecode) if k >= 0 else None
    at, length = walk.last
    if length is None:
        length = float(at - walk.previous) if walk.previous is not None else 0.0
    return timecode + at + length


def _resync(tail: bytes, opus: bool, scale: int) -> _Walk:
    """The walk from the first place in ``tail`` where a run of blocks plainly starts."""
    for tries, match in enumerate(re.finditer(rb"[\xa0\xa3]", tail)):
        walk = _blocks(tail, match.start(), len(tail), opus, scale)
        # Blocks that chain on and on, or to just where a cluster ends, are no accident.
        if walk.hops >= 8 or (walk.hops >= 2 and walk.settled):
            return walk
        if tries > 4096:
            break
    return _Walk(0, False, None, None)
