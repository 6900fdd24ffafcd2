"""The turn segmenter on its own: PCM in, speech and turn events out, by plain calls.

Speech here is a loud tone and silence is silence (the loudness scorer's
speech), 16 kHz as the segmenter takes it; positions are in samples.
"""

from __future__ import annotations

from proxy.realtime.segmenter import (
    AlreadyCommitted,
    Cleared,
    CommitReason,
    NothingToCommit,
    SegmentEvent,
    SilenceBegan,
    SpeechStarted,
    SpeechStopped,
    TurnCommitted,
    TurnOpened,
    TurnSegmenter,
)
from proxy.realtime.session_config import ServerVad
from proxy.realtime.speech_score import LoudnessScore
from tests.helpers.realtime import silence, tone

RATE = 16_000


def speech(seconds: float, amplitude: float = 0.5) -> bytes:
    return tone(seconds, amplitude=amplitude, rate=RATE)


def quiet(seconds: float) -> bytes:
    return silence(seconds, rate=RATE)


def at(seconds: float) -> int:
    """A position in samples."""
    return round(seconds * RATE)


def vad_segmenter(vad: ServerVad | None = None) -> TurnSegmenter:
    return TurnSegmenter(vad or ServerVad(), LoudnessScore)


def client_segmenter() -> TurnSegmenter:
    return TurnSegmenter(None, LoudnessScore)


def commits(events: list[SegmentEvent]) -> list[TurnCommitted]:
    return [e for e in events if isinstance(e, TurnCommitted)]


def test_server_vad_starts_a_turn_with_its_prefix_and_ends_it_after_the_silence() -> None:
    segmenter = vad_segmenter()
    audio = quiet(0.5) + speech(1.0) + quiet(1.0)

    assert segmenter.append(audio[: at(0.5) * 2]) == []
    assert segmenter.append(audio[at(0.5) * 2 : at(1.5) * 2]) == [SpeechStarted(at(0.2))]
    events = segmenter.append(audio[at(1.5) * 2 :])

    # Silence begins where the tone ends; 500 ms later the speech has stopped.
    assert events[:2] == [SilenceBegan(at(1.5)), SpeechStopped(at(2.0))]
    (turn,) = events[2:]
    assert isinstance(turn, TurnCommitted)
    assert turn.reason is CommitReason.SPEECH_STOPPED
    assert turn.speech_end == at(1.5)
    # The turn's audio: the 300 ms prefix, the speech, and the silence that ended it.
    assert turn.pcm == audio[at(0.2) * 2 : at(2.0) * 2]
    assert not segmenter.turn_open


def test_speech_events_say_where_they_are_in_milliseconds() -> None:
    segmenter = vad_segmenter(ServerVad(prefix_padding_ms=100, silence_duration_ms=200))
    events = segmenter.append(quiet(1.0) + speech(0.5) + quiet(0.5))

    started, _, stopped, _ = events
    assert isinstance(started, SpeechStarted)
    assert isinstance(stopped, SpeechStopped)
    assert started.audio_start_ms == 900
    assert stopped.audio_end_ms == 1700


def test_two_utterances_are_two_turns_in_order() -> None:
    segmenter = vad_segmenter()
    events = segmenter.append(quiet(1.0) + speech(1.2) + quiet(1.0) + speech(0.8) + quiet(1.0))

    kinds = [type(e) for e in events]
    assert kinds == [
        SpeechStarted,
        SilenceBegan,
        SpeechStopped,
        TurnCommitted,
        SpeechStarted,
        SilenceBegan,
        SpeechStopped,
        TurnCommitted,
    ]
    first, second = commits(events)
    assert len(first.pcm) // 2 == at(0.3 + 1.2 + 0.5)
    assert len(second.pcm) // 2 == at(0.3 + 0.8 + 0.5)


def test_a_turn_at_30_s_is_cut_at_its_quietest_point_and_goes_on() -> None:
    segmenter = vad_segmenter()
    # A dip too short to stop the speech, 27 s in, where the cut belongs.
    events = segmenter.append(speech(27.0) + speech(0.2, amplitude=0.001) + speech(3.5))

    assert events[:2] == [SpeechStarted(0), SilenceBegan(at(27.0))]
    stopped, cut, restarted = events[2:]
    assert isinstance(stopped, SpeechStopped)
    assert at(27.0) <= stopped.end <= at(27.2)
    assert isinstance(cut, TurnCommitted)
    assert cut.reason is CommitReason.LONGEST
    assert len(cut.pcm) // 2 == stopped.end
    # The speech goes on in the next turn, from the cut.
    assert restarted == SpeechStarted(stopped.end)
    assert segmenter.turn_open


def test_one_append_longer_than_two_turns_is_cut_into_three() -> None:
    segmenter = client_segmenter()
    events = segmenter.append(speech(65.0))

    assert events[0] == TurnOpened(0)
    cuts = commits(events)
    assert [c.reason for c in cuts] == [CommitReason.LONGEST] * 2
    assert all(len(c.pcm) // 2 <= at(30.0) for c in cuts)
    assert [type(e) for e in events] == [TurnOpened, *[TurnCommitted, TurnOpened] * 2]
    # What is left, past the cuts, is the turn in progress.
    left = segmenter.flush()
    assert sum(len(c.pcm) for c in cuts + commits(left)) == len(speech(65.0))


def test_without_turn_detection_the_client_commits_the_turn() -> None:
    segmenter = client_segmenter()

    assert segmenter.commit() == [NothingToCommit(0)]
    assert segmenter.append(speech(0.05)) == [TurnOpened(0)]
    # Less than 100 ms: nothing committed, and the turn goes on.
    assert segmenter.commit() == [NothingToCommit(50)]
    # Silence ends nothing here; where it begins is told, for a pass over the whole turn.
    assert segmenter.append(speech(0.5) + quiet(2.0)) == [SilenceBegan(at(0.56))]

    (turn,) = segmenter.commit()
    assert isinstance(turn, TurnCommitted)
    assert turn.reason is CommitReason.CLIENT
    assert turn.speech_end == at(0.56)  # where the speech the client committed ended
    assert turn.pcm == speech(0.05) + speech(0.5) + quiet(2.0)
    # The next audio begins the next turn where it lands.
    assert segmenter.append(quiet(0.1)) == [TurnOpened(at(2.55))]


def test_a_client_commit_under_server_vad_ends_the_turn_at_once() -> None:
    segmenter = vad_segmenter()
    segmenter.append(speech(1.0))

    (turn,) = segmenter.commit()
    assert isinstance(turn, TurnCommitted)
    assert turn.reason is CommitReason.CLIENT
    # The detector listens for a new turn: speech going on starts one.
    assert segmenter.append(speech(0.1)) == [SpeechStarted(at(1.0))]


def test_a_client_commit_of_the_turn_the_server_just_committed_is_no_error() -> None:
    segmenter = vad_segmenter()
    (turn,) = commits(segmenter.append(speech(1.0) + quiet(1.0)))
    assert turn.reason is CommitReason.SPEECH_STOPPED

    # The client's own detector commits the same turn a moment later: taken as said.
    assert segmenter.commit() == [AlreadyCommitted()]
    # Once: a commit after that, with nothing new, is an empty one.
    assert segmenter.commit() == [NothingToCommit(0)]


def test_a_commit_after_a_clear_or_the_clients_own_commit_is_an_empty_one() -> None:
    segmenter = vad_segmenter()
    segmenter.append(speech(1.0) + quiet(1.0))
    segmenter.clear()
    assert segmenter.commit() == [NothingToCommit(0)]

    segmenter.append(speech(1.0))
    (turn,) = segmenter.commit()
    assert isinstance(turn, TurnCommitted)
    assert segmenter.commit() == [NothingToCommit(0)]


def test_clear_drops_the_turn_in_progress() -> None:
    segmenter = vad_segmenter()
    assert segmenter.append(quiet(0.5) + speech(0.5)) == [SpeechStarted(at(0.2))]

    assert segmenter.clear() == [Cleared()]
    assert not segmenter.turn_open
    assert segmenter.turn_so_far() == b""
    assert segmenter.commit() == [NothingToCommit(0)]
    # Speech after the clear is a new turn, with no prefix from before it.
    assert segmenter.append(speech(0.5)) == [SpeechStarted(at(1.0))]


def test_flush_commits_the_turn_in_progress_as_far_as_it_got() -> None:
    segmenter = vad_segmenter()
    assert segmenter.flush() == []
    segmenter.append(quiet(0.1) + speech(0.4))

    (turn,) = segmenter.flush()
    assert isinstance(turn, TurnCommitted)
    assert turn.reason is CommitReason.FLUSH
    assert turn.pcm == quiet(0.1) + speech(0.4)
    assert segmenter.flush() == []


def test_an_empty_append_changes_nothing() -> None:
    segmenter = client_segmenter()
    assert segmenter.append(b"") == []
    assert not segmenter.turn_open


def test_turn_detection_turned_on_mid_turn_ends_that_turn_at_its_silence() -> None:
    segmenter = client_segmenter()
    assert segmenter.append(speech(0.5)) == [TurnOpened(0)]

    segmenter.configure(ServerVad())
    assert segmenter.append(speech(0.5)) == []  # the turn in progress goes on
    events = segmenter.append(quiet(1.0))

    assert events[:2] == [SilenceBegan(at(1.0)), SpeechStopped(at(1.5))]
    (turn,) = commits(events)
    assert turn.reason is CommitReason.SPEECH_STOPPED
    assert turn.pcm == speech(0.5) + speech(0.5) + quiet(0.5)


def test_turn_detection_turned_off_leaves_the_commits_to_the_client() -> None:
    segmenter = vad_segmenter()
    segmenter.configure(None)

    assert segmenter.append(speech(1.0) + quiet(2.0)) == [TurnOpened(0), SilenceBegan(at(1.0))]
    (turn,) = segmenter.commit()
    assert isinstance(turn, TurnCommitted)
    assert len(turn.pcm) // 2 == at(3.0)


def test_a_client_commit_mid_speech_says_no_speech_end() -> None:
    segmenter = client_segmenter()
    segmenter.append(speech(1.0) + quiet(0.2) + speech(0.5))

    (turn,) = segmenter.commit()
    assert isinstance(turn, TurnCommitted)
    # Speech went on after the pause: a pass begun at the pause did not hear it all.
    assert turn.speech_end is None


def test_the_turn_so_far_is_there_for_live_passes() -> None:
    segmenter = vad_segmenter()
    segmenter.append(quiet(0.5) + speech(0.7))

    assert segmenter.turn_so_far() == (quiet(0.3) + speech(0.7))
    assert segmenter.end == at(1.2)


def test_pauses_are_listened_for_only_while_a_live_pass_may_use_them() -> None:
    scorers: list[LoudnessScore] = []

    def score() -> LoudnessScore:
        scorers.append(LoudnessScore())
        return scorers[-1]

    wanted = False
    segmenter = TurnSegmenter(None, score, wants_pauses=lambda: wanted)
    # A provider that takes the turn whole at its commit: no speech is scored.
    assert segmenter.append(speech(0.5) + quiet(1.0)) == [TurnOpened(0)]
    (turn,) = segmenter.commit()
    assert isinstance(turn, TurnCommitted)
    assert turn.speech_end is None
    assert scorers == []
    # A model with live passes from now on: heard from where the audio is, in the
    # session's positions.
    wanted = True
    assert segmenter.append(speech(0.5) + quiet(1.0)) == [
        TurnOpened(at(1.5)),
        SilenceBegan(at(2.0)),
    ]
    (turn,) = segmenter.commit()
    assert isinstance(turn, TurnCommitted)
    assert turn.speech_end == at(2.0)
    assert len(scorers) == 1
