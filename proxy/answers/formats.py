"""OpenAI's response formats: made from a model's segments, or from one another.

The embedded model builds every format from its segments; the transcript
cache answers a request in another format than the one it stored when the
stored answer holds what that format needs (a verbose_json answer has the
segments that srt and vtt are made of).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..models import TranscriptDone

#: The names OpenAI's verbose_json gives the languages a whisper model reports.
LANGUAGE_NAMES = {
    "en": "english",
    "de": "german",
    "es": "spanish",
    "fr": "french",
    "it": "italian",
    "ja": "japanese",
    "nl": "dutch",
    "pt": "portuguese",
    "ru": "russian",
    "zh": "chinese",
}


@dataclass(frozen=True)
class Word:
    """One word with its timing."""

    word: str
    start: float
    end: float


@dataclass(frozen=True)
class Segment:
    """One stretch of transcript with its timing and decoder statistics."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: Sequence[int] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: Sequence[Word] = field(default_factory=tuple)


def transcript(
    segments: Sequence[Segment],
    *,
    response_format: str,
    language: str,
    duration: float,
    with_words: bool = False,
) -> TranscriptDone:
    """The answer in ``response_format`` (json, verbose_json, text, srt or vtt)."""
    text = "".join(s.text for s in segments).strip()
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if response_format == "text":
        body = text + "\n"
    elif response_format == "srt":
        body = srt(segments)
    elif response_format == "vtt":
        body = vtt(segments)
    elif response_format == "verbose_json":
        document: dict[str, Any] = {
            "task": "transcribe",
            "language": LANGUAGE_NAMES.get(language, language),
            "duration": round(duration, 2),
            "text": text,
            "segments": [_segment(s) for s in segments],
        }
        if with_words:
            document["words"] = [
                {"word": w.word.strip(), "start": round(w.start, 2), "end": round(w.end, 2)}
                for s in segments
                for w in s.words
            ]
        document["usage"] = usage
        return TranscriptDone(raw=b"", document=document)
    else:
        return TranscriptDone(raw=b"", document={"text": text, "usage": usage})
    return TranscriptDone(raw=body.encode(), text=body)


def srt(segments: Sequence[Segment]) -> str:
    """SubRip captions, one numbered cue per segment."""
    return "".join(
        f"{n}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n\n"
        for n, s in enumerate(segments, 1)
    )


def vtt(segments: Sequence[Segment]) -> str:
    """WebVTT captions, one cue per segment."""
    return "WEBVTT\n\n" + "".join(
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n\n" for s in segments
    )


#: What an answer stored in one format can also be rendered as.
RENDERABLE: dict[str, frozenset[str]] = {
    "verbose_json": frozenset({"verbose_json", "json", "text", "srt", "vtt"}),
    "json": frozenset({"json", "text"}),
    "text": frozenset({"text"}),
    "srt": frozenset({"srt"}),
    "vtt": frozenset({"vtt"}),
    "diarized_json": frozenset({"diarized_json"}),
}


def format_of(done: TranscriptDone, requested: str) -> str:
    """The format ``done`` is really in, judged by its content where that says more.

    A JSON answer with segments is verbose_json whatever was asked (some
    upstreams answer richer than asked); one without is plain json.
    """
    if done.document is None or requested == "diarized_json":
        return requested
    return "verbose_json" if _segments_of(done.document) is not None else "json"


def render(done: TranscriptDone, stored: str, wanted: str) -> TranscriptDone | None:
    """``done`` (in format ``stored``) as format ``wanted``, or None when it cannot be."""
    if wanted not in RENDERABLE.get(stored, frozenset()):
        return None
    if wanted == stored:
        return done
    document = done.document or {}
    text = str(document.get("text", "")).strip()
    if wanted == "text":
        body = text + "\n"
        return TranscriptDone(raw=body.encode(), text=body)
    if wanted == "json":
        plain: dict[str, Any] = {"text": text}
        if "usage" in document:
            plain["usage"] = document["usage"]
        return TranscriptDone(raw=b"", document=plain)
    segments = _segments_of(document) or []
    body = srt(segments) if wanted == "srt" else vtt(segments)
    return TranscriptDone(raw=body.encode(), text=body)


def _segments_of(document: dict[str, Any]) -> list[Segment] | None:
    """The timed segments of a verbose_json document, or None when it has none."""
    raw = document.get("segments")
    if not isinstance(raw, list) or not raw:
        return None
    segments = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict):
            return None
        try:
            start, end = float(item.get("start", 0.0)), float(item.get("end", 0.0))
        except (TypeError, ValueError):
            return None
        segments.append(Segment(id=n, seek=0, start=start, end=end, text=str(item.get("text", ""))))
    return segments


def _segment(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "seek": segment.seek,
        "start": round(segment.start, 2),
        "end": round(segment.end, 2),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }


def _clock(seconds: float, separator: str) -> str:
    milliseconds = round(seconds * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{separator}{millis:03d}"
