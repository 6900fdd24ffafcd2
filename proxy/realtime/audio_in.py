"""A session's incoming audio: base64 frames in the session's format, out as 16 kHz PCM.

``audio/pcm`` is 24 kHz mono 16-bit little-endian; ``audio/pcmu`` and
``audio/pcma`` are G.711 at 8 kHz. Everything downstream (turn detection,
the embedded model, the WAV each turn is sent as) takes 16 kHz mono 16-bit
PCM, which is what Whisper hears. The conversion is the standard library's
``audioop`` (``audioop-lts`` from Python 3.13): C, a few tens of
microseconds for 100 ms of audio, where NumPy would cost every process
that serves sessions its import.
"""

from __future__ import annotations

import binascii
import warnings
from typing import Any

from ..audio.decoder import SAMPLE_RATE
from .protocol import ClientEventError
from .session_config import AudioFormat

with warnings.catch_warnings():
    # Deprecated in 3.11 and 3.12, gone from 3.13 (where audioop-lts provides it).
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

#: Samples per second and bytes per sample of each format, as sent.
_SOURCE: dict[AudioFormat, tuple[int, int]] = {
    "audio/pcm": (24_000, 2),
    "audio/pcmu": (8_000, 1),
    "audio/pcma": (8_000, 1),
}


class InputAudio:
    """Decodes one session's appended audio; counts the seconds it held."""

    def __init__(self, audio_format: AudioFormat) -> None:
        self._format = audio_format
        self._resampling: Any = None
        #: Seconds of audio appended so far.
        self.seconds = 0.0

    def switch(self, audio_format: AudioFormat) -> None:
        """Take later frames in ``audio_format``."""
        if audio_format != self._format:
            self._format = audio_format
            self._resampling = None

    def decode(self, encoded: object) -> bytes:
        """One ``input_audio_buffer.append``'s ``audio`` as 16 kHz PCM."""
        if not isinstance(encoded, str):
            raise ClientEventError("audio must be a base64 string", param="audio")
        try:
            data = binascii.a2b_base64(encoded, strict_mode=True)
        except binascii.Error:
            raise ClientEventError(
                "audio is not valid base64", code="invalid_audio", param="audio"
            ) from None
        rate, width = _SOURCE[self._format]
        if len(data) % width:
            raise ClientEventError(
                "audio/pcm is 16-bit: an append must hold a whole number of samples "
                f"(an even number of bytes, not {len(data)})",
                code="invalid_audio",
                param="audio",
            )
        if self._format == "audio/pcmu":
            data = audioop.ulaw2lin(data, 2)
        elif self._format == "audio/pcma":
            data = audioop.alaw2lin(data, 2)
        self.seconds += len(data) / 2 / rate
        pcm, self._resampling = audioop.ratecv(data, 2, 1, rate, SAMPLE_RATE, self._resampling)
        return pcm


def rms(pcm: bytes) -> int:
    """The loudness of 16-bit PCM (root mean square of its samples)."""
    return int(audioop.rms(pcm, 2))
