"""How much audio a request used: what limits and budgets settle on.

The answer's own figure comes first (``usage.seconds``, else ``duration``);
an answer that reports tokens and no seconds (gpt-4o-transcribe's ``json``)
settles on the length the upload's container declares, read as it passed
(:mod:`proxy.audio.duration`), never below what its bytes hold at the codec's
highest rate; failing both, on what was reserved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from ..models import RequestFacts, TokenUsage, TranscriptDone

#: Where a settled length came from (``none``: no answer, or one from the cache).
LengthSource = Literal["answer", "container", "reservation", "none"]


@dataclass(frozen=True)
class AudioUsed:
    """What one request is charged for."""

    seconds: float
    source: LengthSource
    tokens: TokenUsage | None = None


def audio_seconds(done: TranscriptDone | None) -> float:
    """The audio length an answer reports: ``usage.seconds``, else ``duration``, else 0."""
    if done is None or done.document is None:
        return 0.0
    usage = done.document.get("usage")
    seconds = usage.get("seconds") if isinstance(usage, dict) else None
    if _is_number(seconds):
        return float(seconds)
    duration = done.document.get("duration")
    return float(duration) if _is_number(duration) else 0.0


def answer_tokens(done: TranscriptDone | None) -> TokenUsage | None:
    """The tokens an answer reports (OpenAI's ``usage`` of type ``tokens``), if any."""
    if done is None or done.document is None:
        return None
    usage = done.document.get("usage")
    if not isinstance(usage, dict) or usage.get("type") != "tokens":
        return None
    details = usage.get("input_token_details")
    details = details if isinstance(details, dict) else {}
    input_tokens = _count(usage.get("input_tokens"))
    audio = _count(details.get("audio_tokens"))
    # Without a breakdown, every input token is taken to be audio.
    text = _count(details.get("text_tokens")) if details else 0
    return TokenUsage(
        input_audio=audio if details else input_tokens,
        input_text=text,
        output_text=_count(usage.get("output_tokens")),
    )


def note_answer(facts: RequestFacts, done: TranscriptDone) -> None:
    """Keep what ``done`` says the request used, for its settlement."""
    facts.answered = True
    facts.audio_seconds = audio_seconds(done)
    facts.answer_tokens = answer_tokens(done)


def audio_used(facts: RequestFacts, reserved_s: float) -> AudioUsed:
    """The audio a request used, as its limits and budgets settle on it."""
    if facts.cache_hit or not (facts.answered or facts.events_sent):
        return AudioUsed(0.0, "none")
    tokens = facts.answer_tokens
    if facts.audio_seconds:
        return AudioUsed(facts.audio_seconds, "answer", tokens)
    length = facts.audio_length
    if length is None:
        return AudioUsed(reserved_s, "reservation", tokens)
    # A container's header can claim anything: never less than its bytes hold.
    floor = length.floor(facts.audio_bytes)
    container = length.finish()
    if container is not None:
        return AudioUsed(max(container, floor), "container", tokens)
    return AudioUsed(max(reserved_s, floor), "reservation", tokens)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> int:
    return int(value) if _is_number(value) and value > 0 else 0
