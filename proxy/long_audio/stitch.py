"""Chunk answers stitched into one: text joined, timings shifted, ids renumbered, usage summed.

Each chunk of a long recording is answered in the format the client asked
for; the stitched answer is in that format too, as if the upstream had heard
the whole recording at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..answers.formats import RESPONSE_FORMATS, Segment, parse_cues, transcript_text
from ..answers.usage import is_number
from ..models import TranscriptDone


@dataclass(frozen=True)
class ChunkAnswer:
    """One chunk's answer and where the chunk lies in the recording."""

    start_s: float
    end_s: float
    done: TranscriptDone


def stitch(
    answers: Sequence[ChunkAnswer], *, response_format: str, duration_s: float
) -> TranscriptDone:
    """The chunks' answers as one answer in ``response_format``."""
    captions = RESPONSE_FORMATS[response_format].captions
    if captions is not None:
        cues = [
            Segment(
                id=0, seek=0, start=cue.start + a.start_s, end=cue.end + a.start_s, text=cue.text
            )
            for a in answers
            for cue in parse_cues(a.done.text or "")
        ]
        body = captions(cues)
        return TranscriptDone(raw=body.encode(), text=body)
    if all(a.done.document is None for a in answers):  # text
        body = _joined(transcript_text(a.done) for a in answers) + "\n"
        return TranscriptDone(raw=body.encode(), text=body)
    return TranscriptDone(raw=b"", document=_stitched_document(answers, duration_s))


def _stitched_document(answers: Sequence[ChunkAnswer], duration_s: float) -> dict[str, Any]:
    documents = [(a, a.done.document or {"text": a.done.text or ""}) for a in answers]
    first = documents[0][1]
    stitched: dict[str, Any] = {k: v for k, v in first.items() if k not in _STITCHED_KEYS}
    if "task" in first:
        stitched["task"] = first["task"]
    if "language" in first:
        stitched["language"] = first["language"]
    if any("duration" in d for _, d in documents):
        stitched["duration"] = round(duration_s, 2)
    stitched["text"] = _joined(str(d.get("text", "")) for _, d in documents)
    if any(isinstance(d.get("segments"), list) for _, d in documents):
        stitched["segments"] = _shifted_segments(documents)
    if any(isinstance(d.get("words"), list) for _, d in documents):
        stitched["words"] = [
            {**word, **_shifted(word, a.start_s)}
            for a, d in documents
            for word in d.get("words") or ()
            if isinstance(word, dict)
        ]
    if any(isinstance(d.get("logprobs"), list) for _, d in documents):
        stitched["logprobs"] = [p for _, d in documents for p in d.get("logprobs") or ()]
    usage = _summed_usage([d.get("usage") for _, d in documents])
    if usage is not None:
        stitched["usage"] = usage
    return stitched


_STITCHED_KEYS = frozenset(
    {"task", "language", "duration", "text", "segments", "words", "logprobs", "usage"}
)


def _joined(texts: Iterable[str]) -> str:
    return " ".join(t.strip() for t in texts if t and t.strip())


def _shifted(item: dict[str, Any], offset: float) -> dict[str, Any]:
    """``item``'s ``start`` and ``end`` moved ``offset`` seconds later."""
    out: dict[str, Any] = {}
    for key in ("start", "end"):
        value = item.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = round(value + offset, 3)
    return out


def _shifted_segments(documents: list[tuple[ChunkAnswer, dict[str, Any]]]) -> list[Any]:
    segments: list[Any] = []
    for answer, document in documents:
        for segment in document.get("segments") or ():
            if not isinstance(segment, dict):
                continue
            moved = {**segment, **_shifted(segment, answer.start_s), "id": len(segments)}
            # Whisper's seek counts 10 ms frames from the start of what it heard.
            if isinstance(segment.get("seek"), int):
                moved["seek"] = segment["seek"] + round(answer.start_s * 100)
            segments.append(moved)
    return segments


def _summed_usage(usages: list[Any]) -> dict[str, Any] | None:
    found = [u for u in usages if isinstance(u, dict)]
    if not found:
        return None
    total: dict[str, Any] = {}
    for usage in found:
        _add_usage(total, usage)
    return total


def _add_usage(total: dict[str, Any], usage: dict[str, Any]) -> None:
    """Add ``usage``'s numbers into ``total``, nested ones too (``input_token_details``:
    what token prices are charged on); anything else is kept as first seen."""
    for key, value in usage.items():
        previous = total.get(key)
        if is_number(value) and (previous is None or is_number(previous)):
            total[key] = (previous or 0) + value
        elif isinstance(value, dict) and (previous is None or isinstance(previous, dict)):
            nested: dict[str, Any] = total.setdefault(key, {})
            _add_usage(nested, value)
        else:
            total.setdefault(key, value)
