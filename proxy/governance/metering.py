"""How much audio a request used: what limits and budgets settle on.

The answer's own figure comes first (``usage.seconds``, else ``duration``);
an answer that reports tokens and no seconds (gpt-4o-transcribe's ``json``)
settles on the length the upload's container declares, read as it passed
(:mod:`proxy.audio.duration`), never below what its bytes hold at the codec's
highest rate; failing both, on what was reserved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..answers.usage import answer_tokens, audio_seconds
from ..models import RequestFacts, TokenUsage

#: Where a settled length came from (``none``: no answer, or one from the cache;
#: ``appended``: a realtime session's audio, counted as it came).
LengthSource = Literal["answer", "container", "reservation", "appended", "none"]


@dataclass(frozen=True)
class AudioUsed:
    """What one request is charged for."""

    seconds: float
    source: LengthSource
    tokens: TokenUsage | None = None


def audio_used(facts: RequestFacts, reserved_s: float) -> AudioUsed:
    """The audio a request used, as its limits and budgets settle on it."""
    if facts.cache_hit or not facts.answered:
        return AudioUsed(0.0, "none")
    tokens = answer_tokens(facts.answer)
    if seconds := audio_seconds(facts.answer):
        return AudioUsed(seconds, "answer", tokens)
    length = facts.audio_length
    if length is None:
        return AudioUsed(reserved_s, "reservation", tokens)
    # A container's header can claim anything: never less than its bytes hold.
    floor = length.floor(facts.audio_bytes)
    container = length.finish()
    if container is not None:
        return AudioUsed(max(container, floor), "container", tokens)
    return AudioUsed(max(reserved_s, floor), "reservation", tokens)
