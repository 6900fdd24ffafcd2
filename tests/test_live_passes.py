"""The embedded model's live passes over a realtime turn, against a scripted model.

The model here is a stand-in for Whisper (what it would hear is scripted by the
pass's beam), so what is checked is the passes' own logic: which pass a turn's
transcript comes from, what the captions still lack of it, and which passes are
waited for at the commit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from proxy.providers.local.live_passes import TurnPasses
from proxy.providers.local.passes import DecodeOptions
from tests.helpers.client import eventually

PARTIAL = DecodeOptions(beam_size=1, language="en")
WHOLE = DecodeOptions(beam_size=5, language="en")
#: Two seconds of a turn (a pass needs one).
TURN = bytes(64_000)


@dataclass
class Turn:
    """A turn being spoken: its audio so far, and where it ends."""

    speaking: bool = True
    end: int = 32_000

    def so_far(self) -> bytes:
        return TURN


@dataclass
class ScriptedModel:
    """Says ``partial`` for a greedy pass and ``whole`` for a pass at the transcript's
    beam; a pass of a kind in ``held`` waits until it is let go."""

    partial: str = "the quick brown fax"
    whole: str = "the quick brown fox jumps"
    held: set[str] = field(default_factory=set)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[tuple[int, bool]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    async def transcribe_pcm(
        self, pcm: bytes, options: DecodeOptions, *, wait: bool = True, whole: bool = True
    ) -> str | None:
        kind = "whole" if options.beam_size == WHOLE.beam_size else "partial"
        self.calls.append((options.beam_size, whole))
        if kind in self.held:
            try:
                await self.go.wait()
            except asyncio.CancelledError:
                self.cancelled.append(kind)
                raise
        return self.whole if kind == "whole" else self.partial


def passes(model: ScriptedModel, turn: Turn, emitted: list[str]) -> TurnPasses:
    return TurnPasses(
        model, turn, partial=PARTIAL, whole=WHOLE, interval_s=0.01, emit=emitted.append
    )


async def test_the_transcript_is_a_whole_pass_not_the_captions_agreed_words() -> None:
    model, turn, emitted = ScriptedModel(), Turn(), list[str]()
    live = passes(model, turn, emitted)
    await eventually(lambda: emitted)  # two greedy passes agree: a caption goes out
    turn.speaking = False

    transcript = await live.transcript(None, TURN)

    assert emitted == ["the quick brown fax"]
    assert transcript.text == "the quick brown fox jumps"
    # The captions are append-only: what they still lack comes after the words sent.
    assert transcript.delta == " jumps"
    assert (WHOLE.beam_size, True) in model.calls


async def test_a_whole_pass_begun_at_the_silence_is_the_transcript() -> None:
    model, turn, emitted = ScriptedModel(), Turn(), list[str]()
    live = passes(model, turn, emitted)
    live.silence_began()
    await eventually(lambda: (WHOLE.beam_size, True) in model.calls)
    await asyncio.sleep(0.05)
    turn.speaking = False

    transcript = await live.transcript(speech_end=16_000, pcm=TURN)

    assert transcript.text == "the quick brown fox jumps"
    # Decoded once, when the silence began: not again at the commit.
    assert model.calls.count((WHOLE.beam_size, True)) == 1


async def test_a_partial_pass_running_at_the_commit_is_abandoned_not_waited_for() -> None:
    model, turn, emitted = ScriptedModel(held={"partial"}), Turn(), list[str]()
    live = passes(model, turn, emitted)
    await eventually(lambda: model.calls)
    turn.speaking = False

    async with asyncio.timeout(1):
        transcript = await live.transcript(None, TURN)

    assert transcript.text == "the quick brown fox jumps"
    assert model.cancelled == ["partial"]


async def test_a_whole_pass_running_at_the_commit_is_waited_for_and_used() -> None:
    model, turn, emitted = ScriptedModel(held={"whole"}), Turn(), list[str]()
    live = passes(model, turn, emitted)
    live.silence_began()
    await eventually(lambda: (WHOLE.beam_size, True) in model.calls)
    turn.speaking = False

    committing = asyncio.ensure_future(live.transcript(speech_end=16_000, pcm=TURN))
    await asyncio.sleep(0.05)
    assert not committing.done()
    model.go.set()
    transcript = await committing

    assert transcript.text == "the quick brown fox jumps"
    assert model.calls.count((WHOLE.beam_size, True)) == 1
    assert not model.cancelled


async def test_without_partial_captions_the_transcript_is_one_delta() -> None:
    model, turn = ScriptedModel(), Turn(speaking=False)
    live = TurnPasses(model, turn, partial=PARTIAL, whole=WHOLE, interval_s=None, emit=print)

    transcript = await live.transcript(None, TURN)

    assert transcript.text == transcript.delta == "the quick brown fox jumps"
    assert model.calls == [(WHOLE.beam_size, True)]
