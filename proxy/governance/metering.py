"""How much audio a request used: what limits and budgets settle on."""

from __future__ import annotations

from ..models import RequestFacts, TranscriptDone


def wav_seconds(head: bytes, size: int) -> float:
    """The length of a PCM WAV file from its header and size (0 if it is not one)."""
    if len(head) < 44 or head[:4] != b"RIFF" or head[8:12] != b"WAVE" or head[12:16] != b"fmt ":
        return 0.0
    byte_rate = int.from_bytes(head[28:32], "little")
    return max(0.0, (size - 44) / byte_rate) if byte_rate else 0.0


def audio_seconds(done: TranscriptDone | None) -> float:
    """The audio length an answer reports: ``usage.seconds``, else ``duration``, else 0."""
    if done is None or done.document is None:
        return 0.0
    usage = done.document.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("seconds"), int | float):
        return float(usage["seconds"])
    duration = done.document.get("duration")
    return float(duration) if isinstance(duration, int | float) else 0.0


def seconds_used(facts: RequestFacts) -> float:
    """The audio a request used, as its limits and budgets settle on it: the answer's own
    figure, else the length of a WAV upload; an answer from the cache used none."""
    if facts.cache_hit:
        return 0.0
    return facts.audio_seconds or wav_seconds(facts.audio_head, facts.audio_bytes)
