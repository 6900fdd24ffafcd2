"""Transcript events as the client is given them: deltas of a whole answer, the done event.

Many upstreams ignore ``stream=true`` and answer one JSON body; a streaming
client still gets deltas (:func:`deltas_of`) and a ``transcript.text.done``
event (:func:`done_event`) made from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from ..errors import BadGatewayError
from ..models import TranscriptDelta, TranscriptDone, TranscriptEvent

DELTA = "transcript.text.delta"


SEGMENT = "transcript.text.segment"


DONE = "transcript.text.done"


def deltas_of(done: TranscriptDone) -> Iterator[TranscriptDelta]:
    """Delta events for an answer that came whole: one per segment, else one for all of it.

    A streaming client then never receives an empty stream, whatever the
    upstream (whisper-1, Azure, Groq answer ``stream=true`` with one body).
    """
    if done.document is None:
        if done.text:
            yield TranscriptDelta({"type": DELTA, "delta": done.text})
        return
    segments = done.document.get("segments")
    if isinstance(segments, list) and segments:
        for segment in segments:
            if isinstance(segment, dict) and segment.get("text"):
                yield TranscriptDelta({"type": DELTA, "delta": segment["text"]})
        return
    text = done.document.get("text")
    if text:
        yield TranscriptDelta({"type": DELTA, "delta": text})


async def final_answer(events: AsyncIterator[TranscriptEvent]) -> TranscriptDone:
    """The answer at the end of ``events``; the deltas before it are not needed."""
    async for event in events:
        if isinstance(event, TranscriptDone):
            return event
    raise BadGatewayError("the upstream stream ended before the transcript was done")


def done_event(done: TranscriptDone) -> dict[str, Any]:
    """The ``transcript.text.done`` event that ends a stream with ``done``'s answer."""
    if done.document is None:
        return {"type": DONE, "text": done.text or ""}
    event: dict[str, Any] = {"type": DONE, "text": done.document.get("text", "")}
    for key in ("logprobs", "usage"):
        if key in done.document:
            event[key] = done.document[key]
    segments = done.document.get("segments")
    if isinstance(segments, list) and segments:
        # Not in OpenAI's event: the timings of an answer that had them, so a
        # streaming client can still make captions (srt, vtt) at the end.
        event["segments"] = [
            {key: segment[key] for key in ("id", "start", "end", "text") if key in segment}
            for segment in segments
            if isinstance(segment, dict)
        ]
    return event
