"""How much like speech each short frame of a session's audio is.

A :class:`SpeechScore` gives each short frame of 16 kHz PCM a probability
of speech: Silero VAD (shipped with faster-whisper, so with the ``local``
extra) when it is installed, a loudness score otherwise.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

from ..audio.decoder import SAMPLE_BYTES, SAMPLE_RATE
from .audio_in import rms

log = logging.getLogger(__name__)


class SpeechScore(Protocol):
    """Speech probabilities, one per frame of 16 kHz PCM."""

    @property
    def frame_samples(self) -> int:
        """Samples per scored frame."""

    def feed(self, pcm: bytes) -> list[float]:
        """Scores for the whole frames ``pcm`` completes (the rest waits for more)."""


class LoudnessScore:
    """Speech as loudness: -55 dBFS and below scores 0, -25 dBFS and above 1 (the default
    threshold, 0.5, is -40 dBFS). For clean microphones; Silero tells noise from speech."""

    frame_samples = SAMPLE_RATE // 50  # 20 ms

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, pcm: bytes) -> list[float]:
        """Scores for the whole 20 ms frames ``pcm`` completes."""
        data = self._pending + pcm
        size = self.frame_samples * SAMPLE_BYTES
        whole = len(data) // size * size
        self._pending = data[whole:]
        scores = []
        for start in range(0, whole, size):
            loudness = rms(data[start : start + size])
            decibels = 20 * math.log10(loudness / 32768) if loudness else -120.0
            scores.append(min(1.0, max(0.0, (decibels + 55) / 30)))
        return scores


class SileroScore:
    """Silero VAD (faster-whisper's ONNX copy, loaded once), its state kept between feeds."""

    frame_samples = 512  # 32 ms, the model's window at 16 kHz
    _CONTEXT = 64

    def __init__(self) -> None:
        import numpy as np
        from faster_whisper.vad import get_vad_model

        self._np = np
        self._session = get_vad_model().session
        self._state = np.zeros((1, 1, 128), dtype="float32"), np.zeros((1, 1, 128), dtype="float32")
        self._context = np.zeros(self._CONTEXT, dtype="float32")
        self._pending = b""

    def feed(self, pcm: bytes) -> list[float]:
        """Scores for the whole 32 ms frames ``pcm`` completes."""
        np = self._np
        data = self._pending + pcm
        size = self.frame_samples * SAMPLE_BYTES
        frames = len(data) // size
        self._pending = data[frames * size :]
        if not frames:
            return []
        audio = np.frombuffer(data[: frames * size], dtype=np.int16).astype(np.float32) / 32768
        audio = audio.reshape(frames, self.frame_samples)
        # Each frame is scored with the end of the one before it, as the model was trained.
        contexts = np.vstack([self._context[None, :], audio[:-1, -self._CONTEXT :]])
        batch = np.concatenate([contexts, audio], axis=1)
        h, c = self._state
        scores, h, c = self._session.run(None, {"input": batch, "h": h, "c": c})
        self._state = h, c
        self._context = audio[-1, -self._CONTEXT :].copy()
        return [float(s) for s in np.asarray(scores).reshape(-1)]


def speech_score(prefer_silero: bool = True) -> SpeechScore:
    """Silero when it can be loaded (the ``local`` extra), loudness otherwise."""
    if prefer_silero:
        try:
            return SileroScore()
        except ImportError:
            pass
        except Exception as exc:  # a faster-whisper whose VAD is shaped otherwise
            log.warning("Silero VAD could not be loaded (%r); telling speech by loudness", exc)
    return LoudnessScore()
