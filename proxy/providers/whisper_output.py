"""OpenAI's response formats, made from a local model's segments."""

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
        body = "".join(
            f"{n}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n\n"
            for n, s in enumerate(segments, 1)
        )
    elif response_format == "vtt":
        body = "WEBVTT\n\n" + "".join(
            f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n\n"
            for s in segments
        )
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
