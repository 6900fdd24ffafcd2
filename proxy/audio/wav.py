"""PCM as a WAV file: what a realtime turn is sent upstream as."""

from __future__ import annotations

import struct

from .decoder import SAMPLE_BYTES, SAMPLE_RATE


def wav_bytes(pcm: bytes, rate: int = SAMPLE_RATE) -> bytes:
    """Mono 16-bit ``pcm`` at ``rate`` as a complete WAV file."""
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * SAMPLE_BYTES, SAMPLE_BYTES, 16)
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )
