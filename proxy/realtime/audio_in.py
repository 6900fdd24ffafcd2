"""A session's incoming audio: base64 frames in the session's format, out as 16 kHz PCM.

``audio/pcm`` is 24 kHz mono 16-bit little-endian; ``audio/pcmu`` and
``audio/pcma`` are G.711 at 8 kHz. Everything downstream (turn detection,
the embedded model, the WAV each turn is sent as) takes 16 kHz mono 16-bit
PCM, which is what Whisper hears.

G.711 is expanded by the standard library's ``audioop`` (``audioop-lts``
from Python 3.13). The rate is changed by FFmpeg's resampler (PyAV, with
the ``local`` or ``long-audio`` extra), whose low-pass filter keeps what is
above 8 kHz from folding into the speech band; without PyAV, by
``audioop.ratecv``, which interpolates without one (the embedded model
heard "the address" as "the rest" through it). Either costs about 40
microseconds per 100 ms of audio.
"""

from __future__ import annotations

import binascii
import warnings
from collections.abc import Callable
from typing import Any

from ..audio.decoder import SAMPLE_BYTES, SAMPLE_RATE, decoder_installed, pcm_of
from .client_events import ClientEventError
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


Resample = Callable[[bytes], bytes]


def resampler(rate: int) -> Resample:
    """Mono 16-bit PCM at ``rate`` to 16 kHz, piece after piece (state kept between)."""
    if decoder_installed():
        import av

        swr: Any = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

        def with_filter(pcm: bytes) -> bytes:
            frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // SAMPLE_BYTES)
            frame.planes[0].update(pcm)
            frame.sample_rate = rate
            return b"".join(pcm_of(out) for out in swr.resample(frame))

        return with_filter
    state: Any = None

    def interpolated(pcm: bytes) -> bytes:
        nonlocal state
        out, state = audioop.ratecv(pcm, SAMPLE_BYTES, 1, rate, SAMPLE_RATE, state)
        return bytes(out)

    return interpolated


class InputAudio:
    """Decodes one session's appended audio; counts the seconds it held."""

    def __init__(self, audio_format: AudioFormat) -> None:
        self._format = audio_format
        self._resample = resampler(_SOURCE[audio_format][0])
        #: Seconds of audio appended so far, and the bytes they came in.
        self.seconds = 0.0
        self.size = 0

    def switch(self, audio_format: AudioFormat) -> None:
        """Take later frames in ``audio_format``."""
        if audio_format != self._format:
            self._format = audio_format
            self._resample = resampler(_SOURCE[audio_format][0])

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
        if not data:
            return b""
        if len(data) % width:
            raise ClientEventError(
                "audio/pcm is 16-bit: an append must hold a whole number of samples "
                f"(an even number of bytes, not {len(data)})",
                code="invalid_audio",
                param="audio",
            )
        self.size += len(data)
        if self._format == "audio/pcmu":
            data = audioop.ulaw2lin(data, 2)
        elif self._format == "audio/pcma":
            data = audioop.alaw2lin(data, 2)
        self.seconds += len(data) / SAMPLE_BYTES / rate
        return self._resample(data)


def rms(pcm: bytes) -> int:
    """The loudness of 16-bit PCM (root mean square of its samples)."""
    return int(audioop.rms(pcm, 2))
