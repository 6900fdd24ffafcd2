"""Where speech starts and stops in a session's audio: OpenAI's ``server_vad``.

A :class:`SpeechScore` gives each short frame of 16 kHz PCM a probability
of speech: Silero VAD (shipped with faster-whisper, so with the ``local``
extra) when it is installed, a loudness score otherwise. :class:`TurnDetector`
applies ``server_vad``'s rules to those scores: speech starts at the first
frame at or over ``threshold`` (the turn's audio starts ``prefix_padding_ms``
before it); it stops once ``silence_duration_ms`` pass below it (the turn's
audio ends there, the silence included, as OpenAI's does). Positions are in
samples since the session's first byte of audio.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

from ..audio.decoder import SAMPLE_BYTES, SAMPLE_RATE
from .audio_in import rms
from .session_config import ServerVad

log = logging.getLogger(__name__)

#: Once speaking, a frame this far under the threshold still counts as speech
#: (Silero's own hysteresis).
_HYSTERESIS = 0.15


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


@dataclass(frozen=True)
class SpeechStarted:
    """Speech began; the turn's audio starts at ``sample`` (the prefix padding included)."""

    sample: int


@dataclass(frozen=True)
class SpeechStopped:
    """Speech ended at ``speech_end``; the turn's audio ends at ``sample`` (the closing
    silence included)."""

    sample: int
    speech_end: int


@dataclass(frozen=True)
class SilenceBegan:
    """A speaker's first quiet frame: speech may have ended at ``sample`` (if the silence
    lasts ``silence_duration_ms``, :class:`SpeechStopped` follows)."""

    sample: int


VadEvent = SpeechStarted | SpeechStopped | SilenceBegan


class TurnDetector:
    """``server_vad`` over a stream of scores: where each turn starts and stops."""

    def __init__(self, vad: ServerVad, score: SpeechScore, *, position: int = 0) -> None:
        self._vad = vad
        self._score = score
        self._frame = score.frame_samples
        self._prefix = vad.prefix_padding_ms * SAMPLE_RATE // 1000
        self._silence = vad.silence_duration_ms * SAMPLE_RATE // 1000
        #: Samples scored so far (a detector may start mid-session).
        self._position = position
        #: Where the last turn's audio ended (the next one's prefix starts no earlier).
        self._last_end = position
        self.speaking = False
        self._quiet = 0

    @property
    def settings(self) -> ServerVad:
        """The ``server_vad`` settings applied."""
        return self._vad

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """The starts and stops of speech that ``pcm`` shows."""
        events: list[VadEvent] = []
        threshold = self._vad.threshold
        for score in self._score.feed(pcm):
            start, self._position = self._position, self._position + self._frame
            if not self.speaking:
                if score >= threshold:
                    self.speaking = True
                    self._quiet = 0
                    events.append(SpeechStarted(max(self._last_end, start - self._prefix)))
                continue
            if score >= threshold - _HYSTERESIS:
                self._quiet = 0
                continue
            if not self._quiet:
                events.append(SilenceBegan(start))
            self._quiet += self._frame
            if self._quiet >= self._silence:
                self.speaking = False
                self._last_end = self._position
                events.append(SpeechStopped(self._position, self._position - self._quiet))
        return events

    def reset(self) -> None:
        """The turn was ended by the client (committed or cleared): listen for a new one."""
        self.speaking = False
        self._quiet = 0
        self._last_end = self._position

    def cut(self, sample: int) -> None:
        """A turn was cut at ``sample`` while speech goes on: the next starts there."""
        self._last_end = sample


def describe(score: SpeechScore) -> str:
    """The detector's name, for logs and metrics."""
    return "silero" if isinstance(score, SileroScore) else "loudness"
