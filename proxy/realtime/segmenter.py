"""A session's audio cut into turns, without I/O: 16 kHz PCM in, speech and turn events out.

With ``server_vad`` the segmenter hears where speech starts and stops
(:mod:`.vad`); without it, a turn begins with the first audio and ends at
the client's commit. Either way a turn is cut at 30 s at its quietest point
and the speech goes on in the next. It has no socket, no clock and no event
loop: the session feeds it audio and the client's commits and clears, and
acts on the events it gives back, in their order.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from ..audio.decoder import SAMPLE_BYTES, SAMPLE_RATE
from .session_config import ServerVad
from .speech_score import SpeechScore
from .turn_audio import MAX_TURN_SAMPLES, TurnAudio
from .vad import Offset, Onset, Pause, TurnDetector, VadEvent

#: The shortest audio a client's commit takes, as OpenAI's (100 ms).
MIN_COMMIT_SAMPLES = SAMPLE_RATE // 10


def samples_ms(samples: int) -> int:
    """A position or length in samples, in whole milliseconds."""
    return samples * 1000 // SAMPLE_RATE


class CommitReason(enum.Enum):
    """Why a turn was committed."""

    #: ``server_vad`` heard its speech stop.
    SPEECH_STOPPED = "speech_stopped"
    #: The client committed it (``input_audio_buffer.commit``).
    CLIENT = "client"
    #: It reached 30 s and was cut at its quietest point; the speech goes on in the next.
    LONGEST = "longest"
    #: The session is ending: the turn in progress, as far as it got.
    FLUSH = "flush"


@dataclass(frozen=True)
class SpeechStarted:
    """``server_vad`` heard speech begin: a turn starts at ``start`` (the prefix included)."""

    start: int

    @property
    def audio_start_ms(self) -> int:
        """Where the turn starts, in milliseconds since the session's first audio."""
        return samples_ms(self.start)


@dataclass(frozen=True)
class TurnOpened:
    """Without turn detection, audio arrived with no turn open: a turn starts at ``start``
    and goes on until the client commits it."""

    start: int


@dataclass(frozen=True)
class SilenceBegan:
    """The speaker may have finished at ``sample`` (if the silence lasts, speech stops)."""

    sample: int


@dataclass(frozen=True)
class SpeechStopped:
    """Speech stopped (or the turn was cut): the turn's audio ends at ``end``."""

    end: int

    @property
    def audio_end_ms(self) -> int:
        """Where the turn ends, in milliseconds since the session's first audio."""
        return samples_ms(self.end)


@dataclass(frozen=True)
class TurnCommitted:
    """The turn in progress is over: its audio, why, and where its speech ended (when a
    detector heard it end: ``server_vad``'s, or the one listening while the client
    commits)."""

    pcm: bytes = field(repr=False)
    reason: CommitReason
    speech_end: int | None = None


@dataclass(frozen=True)
class NothingToCommit:
    """The client's commit found less than 100 ms to commit (``buffered_ms``)."""

    buffered_ms: int


@dataclass(frozen=True)
class AlreadyCommitted:
    """The client's commit came just after the server had committed the turn it meant
    (``server_vad`` heard the speech stop before the client's own detector did): the
    turn is in hand, so the commit is taken as said, without an error."""


@dataclass(frozen=True)
class Cleared:
    """The client cleared the buffer: the turn in progress, if any, is dropped."""


SegmentEvent = (
    SpeechStarted
    | TurnOpened
    | SilenceBegan
    | SpeechStopped
    | TurnCommitted
    | NothingToCommit
    | AlreadyCommitted
    | Cleared
)


class TurnSegmenter:
    """One session's audio and its turns; positions in samples since its first audio.

    ``score`` makes a fresh speech scorer whenever turn detection is turned on. With
    turn detection off (the client commits), a detector still listens, with
    ``server_vad``'s defaults, for where speech pauses: it commits nothing, but a
    live pass over the whole turn can begin when the silence does, and the client's
    commit says where the speech ended, so that pass is the turn's transcript. It
    listens only while ``wants_pauses`` says a live pass may use them: scoring
    speech is most of a session's CPU, and a turn sent whole to a provider at its
    commit has no use for it.
    """

    def __init__(
        self,
        turn_detection: ServerVad | None,
        score: Callable[[], SpeechScore],
        *,
        wants_pauses: Callable[[], bool] = lambda: True,
    ) -> None:
        self._score = score
        self._wants_pauses = wants_pauses
        self._turn_detection = turn_detection
        self._audio = TurnAudio(_keep_before(turn_detection))
        #: The server committed a turn and the client has not committed since: a client
        #: with turn detection of its own commits the same turn a moment later.
        self._server_committed = False
        self._detector = TurnDetector(turn_detection, score()) if turn_detection else None
        #: Made when first wanted (at the audio's position then), dropped when not.
        self._listener: TurnDetector | None = None

    @property
    def turn_open(self) -> bool:
        """Whether a turn is in progress."""
        return self._audio.turn_start is not None

    @property
    def end(self) -> int:
        """The position after the last sample appended."""
        return self._audio.end

    def turn_so_far(self) -> bytes:
        """The audio of the turn in progress so far (none between turns)."""
        return self._audio.so_far()

    def configure(self, turn_detection: ServerVad | None) -> None:
        """Detect turns with ``turn_detection`` from now on (None: the client commits). A
        turn in progress goes on."""
        if turn_detection != self._turn_detection:
            self._turn_detection = turn_detection
            position = self._audio.end
            self._detector = (
                TurnDetector(turn_detection, self._score(), position=position)
                if turn_detection is not None
                else None
            )
            self._listener = None
        self._audio.keep_before = _keep_before(turn_detection)

    def append(self, pcm: bytes) -> list[SegmentEvent]:
        """Take ``pcm`` (16 kHz mono 16-bit); what it started, stopped or committed."""
        if not pcm:
            return []
        events: list[SegmentEvent] = []
        self._audio.append(pcm)
        if self._detector is not None:
            for found in self._detector.feed(pcm):
                events += self._heard(found)
        else:
            if not self.turn_open:
                events.append(
                    self._open(self._audio.end - len(pcm) // SAMPLE_BYTES, announced=False)
                )
            events += self._listen(pcm)
        # One append may hold more than a turn's longest: cut as often as it takes.
        while self.turn_open and self._audio.turn_samples >= MAX_TURN_SAMPLES:
            events += self._cut()
        self._audio.settle()
        return events

    def commit(self) -> list[SegmentEvent]:
        """The client's commit: the turn in progress, if it holds 100 ms or more; nothing,
        without an error, when the server has just committed the turn it meant."""
        samples = self._audio.turn_samples
        if not self.turn_open or samples < MIN_COMMIT_SAMPLES:
            if self._server_committed:
                self._server_committed = False
                return [AlreadyCommitted()]
            return [NothingToCommit(samples_ms(samples))]
        detector = self._detector or self._listener
        speech_end = detector.quiet_since if detector is not None else None
        if detector is not None:
            detector.reset()
        return [self._commit(None, CommitReason.CLIENT, speech_end=speech_end)]

    def clear(self) -> list[SegmentEvent]:
        """The client's clear: everything appended so far is dropped."""
        self._audio.clear()
        self._server_committed = False
        if self._detector is not None:
            self._detector.reset()
        return [Cleared()]

    def flush(self) -> list[SegmentEvent]:
        """The session ends: the turn in progress committed as far as it got, if it has
        any audio."""
        if not self.turn_open or not self._audio.turn_samples:
            return []
        return [self._commit(None, CommitReason.FLUSH)]

    def _listen(self, pcm: bytes) -> list[SegmentEvent]:
        """Where the speech of a turn the client commits pauses (nothing else is acted on)."""
        if not self._wants_pauses():
            self._listener = None
            return []
        if self._listener is None:
            start = self._audio.end - len(pcm) // SAMPLE_BYTES
            self._listener = TurnDetector(ServerVad(), self._score(), position=start)
        return [
            SilenceBegan(found.sample)
            for found in self._listener.feed(pcm)
            if isinstance(found, Pause) and self.turn_open
        ]

    def _heard(self, found: VadEvent) -> list[SegmentEvent]:
        """What the detector's ``found`` means for the turns."""
        if isinstance(found, Onset):
            return [] if self.turn_open else [self._open(found.sample, announced=True)]
        if not self.turn_open:
            return []
        if isinstance(found, Pause):
            return [SilenceBegan(found.sample)]
        assert isinstance(found, Offset)
        return [
            SpeechStopped(found.sample),
            self._commit(found.sample, CommitReason.SPEECH_STOPPED, speech_end=found.speech_end),
        ]

    def _open(self, sample: int, *, announced: bool) -> SpeechStarted | TurnOpened:
        self._audio.start(sample)
        start = self._audio.turn_start
        assert start is not None
        return SpeechStarted(start) if announced else TurnOpened(start)

    def _cut(self) -> list[SegmentEvent]:
        """A turn at 30 s: committed up to its quietest point; the speech goes on in a new
        turn from there."""
        cut = self._audio.quietest_cut()
        announced = self._detector is not None
        events: list[SegmentEvent] = [SpeechStopped(cut)] if announced else []
        events.append(self._commit(cut, CommitReason.LONGEST))
        if self._detector is not None:
            self._detector.cut(cut)
        if self._audio.end > cut:
            events.append(self._open(cut, announced=announced))
        return events

    def _commit(
        self, end: int | None, reason: CommitReason, *, speech_end: int | None = None
    ) -> TurnCommitted:
        self._server_committed = reason in (CommitReason.SPEECH_STOPPED, CommitReason.LONGEST)
        return TurnCommitted(self._audio.take(end), reason, speech_end)


def _keep_before(turn_detection: ServerVad | None) -> int:
    """Between turns, how much audio a next turn's prefix may reach back into."""
    padding = turn_detection.prefix_padding_ms if turn_detection is not None else 0
    return padding * SAMPLE_RATE // 1000 + SAMPLE_RATE  # and a second's margin
