"""OpenAI's response formats, each declared once (:data:`RESPONSE_FORMATS`), and how they are made.

A format says how its answer is sent (a JSON document, or the transcript as
text of a media type), whether it is captions (timed cues, read back and
made anew when long audio is stitched), what an answer stored in it can be
rendered as (the transcript cache), and whether it names speakers (only a
diarizing model makes it). The form's field check, the answer writer, the
cache, the stitcher and the embedded model all ask :data:`RESPONSE_FORMATS`.

The embedded model builds every format from its segments; the transcript
cache answers a request in another format than the one it stored when the
stored answer holds what that format needs (a verbose_json answer has the
segments that srt and vtt are made of).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
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
    """The answer in ``response_format`` (any format but one that names speakers)."""
    text = "".join(s.text for s in segments).strip()
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    captions = RESPONSE_FORMATS[response_format].captions
    if captions is not None:
        body = captions(segments)
    elif response_format == "text":
        body = text + "\n"
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


def format_of(done: TranscriptDone, requested: str) -> str:
    """The format ``done`` is really in, judged by its content where that says more.

    A JSON answer with segments is verbose_json whatever was asked (some
    upstreams answer richer than asked); one without is plain json.
    """
    if done.document is None or RESPONSE_FORMATS[requested].diarized:
        return requested
    return "verbose_json" if _segments_of(done.document) is not None else "json"


def render(done: TranscriptDone, stored: str, wanted: str) -> TranscriptDone | None:
    """``done`` (in format ``stored``) as format ``wanted``, or None when it cannot be."""
    if stored not in RESPONSE_FORMATS or wanted not in RESPONSE_FORMATS[stored].renders:
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
    captions = RESPONSE_FORMATS[wanted].captions
    assert captions is not None  # what verbose_json renders as, besides the above
    body = captions(_segments_of(document) or [])
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


_CUE_TIMING = re.compile(
    r"^\s*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})\s*-->\s*((?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})"
)


@dataclass(frozen=True)
class Cue:
    """One caption of an srt or vtt transcript."""

    start: float
    end: float
    text: str


def parse_cues(text: str) -> list[Cue]:
    """The cues of an srt or WebVTT document (numbers, ids and settings dropped)."""
    cues: list[Cue] = []
    for block in re.split(r"\r?\n\s*\r?\n", text):
        lines = block.strip("\r\n").splitlines()
        for position, line in enumerate(lines):
            timing = _CUE_TIMING.match(line)
            if timing:
                cues.append(
                    Cue(
                        _seconds(timing.group(1)),
                        _seconds(timing.group(2)),
                        "\n".join(lines[position + 1 :]).strip(),
                    )
                )
                break
    return cues


def _seconds(clock: str) -> float:
    parts = clock.replace(",", ".").split(":")
    seconds = float(parts[-1])
    for unit, value in zip((60, 3600), reversed(parts[:-1]), strict=False):
        seconds += unit * int(value)
    return seconds


JSON_TYPE = "application/json"


@dataclass(frozen=True)
class ResponseFormat:
    """One of OpenAI's ``response_format`` values, and what it means here."""

    name: str
    #: How its answer is sent: ``application/json`` (a document with
    #: ``extra_fields``), or the transcript itself as text of this type.
    media_type: str
    #: What an answer stored in this format can also be given as (the cache).
    renders: frozenset[str]
    #: Captions (srt, vtt): made from timed segments by this, and read back
    #: with :func:`parse_cues`.
    captions: Callable[[Sequence[Segment]], str] | None = None
    #: Whether it names who spoke: only a diarizing model makes it, and its
    #: cached answers are entries of their own.
    diarized: bool = False

    @property
    def is_document(self) -> bool:
        """Whether the answer is a JSON document."""
        return self.media_type == JSON_TYPE


RESPONSE_FORMATS: Mapping[str, ResponseFormat] = {
    f.name: f
    for f in (
        ResponseFormat("json", JSON_TYPE, frozenset({"json", "text"})),
        ResponseFormat("text", "text/plain", frozenset({"text"})),
        ResponseFormat("srt", "text/plain", frozenset({"srt"}), captions=srt),
        ResponseFormat("vtt", "text/vtt", frozenset({"vtt"}), captions=vtt),
        ResponseFormat(
            "verbose_json", JSON_TYPE, frozenset({"verbose_json", "json", "text", "srt", "vtt"})
        ),
        ResponseFormat("diarized_json", JSON_TYPE, frozenset({"diarized_json"}), diarized=True),
    )
}


def transcript_text(done: TranscriptDone) -> str:
    """The words of an answer, whatever its format (a caption file's cues joined): for
    stream deltas, a chunk's prompt, a realtime turn's transcript, the request log."""
    if done.document is not None:
        return str(done.document.get("text", "")).strip()
    text = done.text or ""
    cues = parse_cues(text)
    if cues or text.lstrip().startswith("WEBVTT"):
        return " ".join(cue.text.strip() for cue in cues if cue.text.strip())
    return text.strip()
