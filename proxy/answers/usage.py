"""What an answer says it used: its audio seconds, its tokens.

Read from the upstream's document as OpenAI writes it (``usage`` of type
``duration`` or ``tokens``, else a verbose answer's ``duration``), for limits
and budgets, and summed when an answer is stitched from several.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from ..models import TokenUsage, TranscriptDone


def audio_seconds(done: TranscriptDone | None) -> float:
    """The audio length an answer reports: ``usage.seconds``, else ``duration``, else 0."""
    if done is None or done.document is None:
        return 0.0
    usage = done.document.get("usage")
    seconds = usage.get("seconds") if isinstance(usage, dict) else None
    if is_number(seconds):
        return float(seconds)
    duration = done.document.get("duration")
    return float(duration) if is_number(duration) else 0.0


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


def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether ``value`` is a JSON number (``true`` is not one, though Python says it is)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> int:
    return int(value) if is_number(value) and value > 0 else 0
