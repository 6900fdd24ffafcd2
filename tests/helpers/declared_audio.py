"""Uploads whose containers declare a length, true or false, made at run time.

For the tests of what a request reserves before it sends anything and of the floor its
bytes set (tests/test_declared_length.py): the files of tests/test_duration.py, and
these besides, real files (PyAV encodes them; the tests skip without it) whose headers
are then made to lie the way an attacker's would, checksums kept right where the
container has them.
"""

from __future__ import annotations

import functools
import io
import struct
from typing import Any

import pytest


@functools.cache
def silent_flac(rate: int, seconds: int) -> bytes:
    """``seconds`` of digital silence as a mono 16-bit FLAC: about 190 bytes a second."""
    av, np = pytest.importorskip("av"), pytest.importorskip("numpy")
    out = io.BytesIO()
    step = rate * 8  # big frames: seconds of silence cost no Python work each
    zeros = np.zeros((1, step), dtype=np.int16)
    container: Any
    with av.open(out, "w", format="flac") as container:
        stream: Any = container.add_stream("flac", rate=rate, layout="mono")
        total = rate * seconds
        for start in range(0, total, step):
            frame = av.AudioFrame.from_ndarray(
                zeros[:, : min(step, total - start)], format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


@functools.cache
def ogg_vorbis(rate: int, seconds: float) -> bytes:
    """``seconds`` of a stereo tone as Ogg Vorbis (FFmpeg's own encoder: stereo only)."""
    av, np = pytest.importorskip("av"), pytest.importorskip("numpy")
    out = io.BytesIO()
    count = round(rate * seconds)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(count) / rate)).astype(np.float32)
    planes = np.stack([tone, tone])
    container: Any
    with av.open(out, "w", format="ogg") as container:
        stream: Any = container.add_stream("vorbis", rate=rate, layout="stereo")
        stream.codec_context.options = {"strict": "experimental"}
        for start in range(0, count, 4096):
            piece = np.ascontiguousarray(planes[:, start : start + 4096])
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def wav_header(
    rate: int,
    channels: int,
    bits: int,
    data_size: int,
    *,
    tag: int = 1,
    byte_rate: int | None = None,
) -> bytes:
    """A canonical 44-byte WAV header whose data chunk declares ``data_size`` bytes."""
    align = channels * ((bits + 7) // 8)
    fmt = struct.pack(
        "<HHIIHH",
        tag,
        channels,
        rate,
        rate * align if byte_rate is None else byte_rate,
        align,
        bits,
    )
    riff = 4 + 8 + len(fmt) + 8 + data_size
    return (
        b"RIFF"
        + struct.pack("<I", riff & 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
    )


def wav_declaring(rate: int, declared_s: float, sent_s: float) -> bytes:
    """A mono 16-bit WAV whose header declares ``declared_s`` but that holds ``sent_s``."""
    data = bytes(range(256)) * (round(rate * sent_s) * 2 // 256 + 1)
    return wav_header(rate, 1, 16, round(rate * declared_s) * 2) + data[: round(rate * sent_s) * 2]


def with_xing_frames(mp3: bytes, frames: int) -> bytes:
    """``mp3`` with the frame count of its Xing or Info header set to ``frames``."""
    data = bytearray(mp3)
    at = max(data.find(b"Xing", 0, 1000), data.find(b"Info", 0, 1000))
    assert at >= 0, "no Xing or Info header"
    assert int.from_bytes(data[at + 4 : at + 8], "big") & 1, "no frame count"
    struct.pack_into(">I", data, at + 8, frames)
    return bytes(data)


def with_mvhd_duration(mp4: bytes, duration: int) -> bytes:
    """``mp4`` with its (version 0) movie header's duration set to ``duration`` ticks."""
    data = bytearray(mp4)
    at = data.index(b"mvhd") + 4
    assert data[at] == 0, "a version 1 mvhd"
    struct.pack_into(">I", data, at + 16, duration)
    return bytes(data)


def mvhd_timescale(mp4: bytes) -> int:
    """The ticks a second of ``mp4``'s (version 0) movie header."""
    return int.from_bytes(mp4[mp4.index(b"mvhd") + 16 : mp4.index(b"mvhd") + 20], "big")


def with_mehd(mp4: bytes, duration: int) -> bytes:
    """A fragmented ``mp4`` with a (version 0) mehd declaring ``duration`` ticks in its mvex."""
    data = bytearray(mp4)
    moov, mvex = data.index(b"moov") - 4, data.index(b"mvex") - 4
    mehd = struct.pack(">I4sII", 16, b"mehd", 0, duration)
    data[mvex + 8 : mvex + 8] = mehd
    for box in (moov, mvex):  # both grow by the box put in
        struct.pack_into(">I", data, box, int.from_bytes(data[box : box + 4], "big") + len(mehd))
    return bytes(data)


def with_webm_duration(webm: bytes, ticks: float) -> bytes:
    """``webm`` with its Info's (8-byte) Duration set to ``ticks``."""
    data = bytearray(webm)
    at = data.index(b"\x44\x89\x88") + 3
    struct.pack_into(">d", data, at, ticks)
    return bytes(data)


def with_last_granule(ogg: bytes, granule: int) -> bytes:
    """``ogg`` with its last page's granule position set to ``granule``, its CRC redone."""
    data = bytearray(ogg)
    at = data.rindex(b"OggS")
    struct.pack_into("<q", data, at + 6, granule)
    struct.pack_into("<I", data, at + 22, 0)
    struct.pack_into("<I", data, at + 22, _ogg_crc(bytes(data[at:])))
    return bytes(data)


def _ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, starting at 0."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1 ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def mpeg_layer1(frames: int) -> bytes:
    """``frames`` MPEG-1 layer I frames at 448 kbit/s and 44.1 kHz, of silence."""
    header = b"\xff\xff\xe0\x00"  # no CRC; bitrate index 14: 448 kbit/s; 44.1 kHz; stereo
    length = (12 * 448_000 // 44_100) * 4
    return (header + bytes(length - len(header))) * frames


def flac_with_picture(flac: bytes, size: int) -> bytes:
    """``flac`` with a PICTURE block of ``size`` bytes put after its STREAMINFO."""
    data = bytearray(flac)
    data[4] &= 0x7F  # STREAMINFO is no longer the last block, if it was
    last = 0x80 if flac[4] & 0x80 else 0
    block = bytes((6 | last,)) + size.to_bytes(3, "big") + bytes(size)
    return bytes(data[:42] + block + data[42:])
