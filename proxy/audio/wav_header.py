"""PCM as a WAV file: what a realtime turn is sent upstream as."""

from __future__ import annotations

import struct

from .decoder import SAMPLE_BYTES, SAMPLE_RATE


def wav_header(data_bytes: int, rate: int = SAMPLE_RATE) -> bytes:
    """The 44-byte header of a mono 16-bit WAV of ``data_bytes`` of samples at ``rate``."""
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * SAMPLE_BYTES, SAMPLE_BYTES, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def wav_bytes(pcm: bytes, rate: int = SAMPLE_RATE) -> bytes:
    """Mono 16-bit ``pcm`` at ``rate`` as a complete WAV file."""
    return wav_header(len(pcm), rate) + pcm
