"""Where speech starts and stops in a session's audio: OpenAI's ``server_vad``.

:class:`TurnDetector` applies ``server_vad``'s rules to the scores of a
:class:`~.speech_score.SpeechScore`: speech starts at the first frame at or
over ``threshold`` (the turn's audio starts ``prefix_padding_ms`` before
it); it stops once ``silence_duration_ms`` pass below it (the turn's audio
ends there, the silence included, as OpenAI's does). Positions are in
samples since the session's first byte of audio.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..audio.decoder import SAMPLE_RATE
from .session_config import ServerVad
from .speech_score import SpeechScore

#: Once speaking, a frame this far under the threshold still counts as speech
#: (Silero's own hysteresis).
_HYSTERESIS = 0.15
#: How long a silence lasts before it is told as a pause (Whisper hears a word's end
#: in the 0.2 s after it; gaps between words and at commas are shorter).
_PAUSE_SAMPLES = SAMPLE_RATE // 5


@dataclass(frozen=True)
class Onset:
    """Speech began; the turn's audio starts at ``sample`` (the prefix padding included)."""

    sample: int


@dataclass(frozen=True)
class Offset:
    """Speech ended at ``speech_end``; the turn's audio ends at ``sample`` (the closing
    silence included)."""

    sample: int
    speech_end: int


@dataclass(frozen=True)
class Pause:
    """A speaker has been quiet for 0.2 s: speech may have ended at ``sample`` (if the
    silence lasts ``silence_duration_ms``, :class:`Offset` follows)."""

    sample: int


VadEvent = Onset | Offset | Pause


class TurnDetector:
    """``server_vad`` over a stream of scores: where each turn starts and stops."""

    def __init__(self, vad: ServerVad, score: SpeechScore, *, position: int = 0) -> None:
        self._vad = vad
        self._score = score
        self._frame = score.frame_samples
        self._prefix = vad.prefix_padding_ms * SAMPLE_RATE // 1000
        self._silence = vad.silence_duration_ms * SAMPLE_RATE // 1000
        # A pause is told once it has lasted a little: a comma's gap is no pause, and a
        # pass over the turn begun then hears its last word end rather than cut off.
        self._pause = min(self._silence, _PAUSE_SAMPLES)
        #: Samples scored so far (a detector may start mid-session).
        self._position = position
        #: Where the last turn's audio ended (the next one's prefix starts no earlier).
        self._last_end = position
        self.speaking = False
        self._quiet = 0
        #: Where the silence under way began (None while speech is heard).
        self.quiet_since: int | None = None

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
                    self.quiet_since = None
                    events.append(Onset(max(self._last_end, start - self._prefix)))
                continue
            if score >= threshold - _HYSTERESIS:
                self._quiet = 0
                self.quiet_since = None
                continue
            if not self._quiet:
                self.quiet_since = start
            self._quiet += self._frame
            if self._quiet - self._frame < self._pause <= self._quiet:
                events.append(Pause(self.quiet_since or start))
            if self._quiet >= self._silence:
                self.speaking = False
                self._last_end = self._position
                events.append(Offset(self._position, self._position - self._quiet))
        return events

    def reset(self) -> None:
        """The turn was ended by the client (committed or cleared): listen for a new one."""
        self.speaking = False
        self._quiet = 0
        self.quiet_since = None
        self._last_end = self._position

    def cut(self, sample: int) -> None:
        """A turn was cut at ``sample`` while speech goes on: the next starts there."""
        self._last_end = sample
