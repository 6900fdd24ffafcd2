"""Upstream answers in their several shapes, turned into one kind of transcript event.

Streams arrive as OpenAI's ``transcript.text.*`` events or as vLLM's
``transcription.chunk`` objects; many upstreams ignore ``stream=true`` and
answer one JSON body. Whatever the upstream sent, the rest of the proxy sees
:class:`TranscriptDelta` events and one :class:`TranscriptDone`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from .errors import BadGatewayError
from .models import TranscriptDelta, TranscriptDone, TranscriptEvent

DELTA = "transcript.text.delta"
SEGMENT = "transcript.text.segment"
DONE = "transcript.text.done"


class StreamTranslator:
    """Reads one upstream stream's events, in order, and says what they mean."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._usage: Any = None
        self._done: TranscriptDone | None = None

    @property
    def done(self) -> TranscriptDone | None:
        """The final answer, once the stream has given it."""
        return self._done

    def feed(self, data: bytes) -> list[TranscriptDelta | TranscriptDone]:
        """The transcript events carried by one upstream event's ``data``."""
        if self._done is not None:
            return []  # nothing counts after the answer
        if data == b"[DONE]":
            return [self._finish()]
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BadGatewayError("the upstream stream carried an unreadable event") from None
        if not isinstance(event, dict):
            raise BadGatewayError("the upstream stream carried an event that is not an object")
        if "error" in event:
            raise _stream_error(event["error"])
        kind = event.get("type")
        if kind == DELTA:
            self._text.append(str(event.get("delta", "")))
            return [TranscriptDelta(event)]
        if kind == SEGMENT:
            return [TranscriptDelta(event)]
        if kind == DONE:
            document = {key: value for key, value in event.items() if key != "type"}
            self._done = TranscriptDone(raw=data, document=document)
            return [self._done]
        if event.get("object") == "transcription.chunk":
            return self._vllm_chunk(event)
        return []  # an event type we do not know; OpenAI adds new ones

    def _vllm_chunk(self, chunk: dict[str, Any]) -> list[TranscriptDelta | TranscriptDone]:
        if chunk.get("usage"):
            self._usage = _openai_usage(chunk["usage"])
        events: list[TranscriptDelta | TranscriptDone] = []
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                self._text.append(content)
                events.append(TranscriptDelta({"type": DELTA, "delta": content}))
        return events

    def _finish(self) -> TranscriptDone:
        document: dict[str, Any] = {"text": "".join(self._text)}
        if self._usage is not None:
            document["usage"] = self._usage
        self._done = TranscriptDone(raw=b"", document=document)
        return self._done


def _openai_usage(usage: Any) -> Any:
    # vLLM reports chat-style token counts; OpenAI's transcription usage
    # names them input/output tokens.
    if not isinstance(usage, dict) or "prompt_tokens" not in usage:
        return usage
    translated: dict[str, Any] = {
        "type": "tokens",
        "input_tokens": usage.get("prompt_tokens", 0),
        "output_tokens": usage.get("completion_tokens", 0),
        "total_tokens": usage.get("total_tokens", 0),
    }
    return translated


def _stream_error(error: Any) -> BadGatewayError:
    message = error.get("message") if isinstance(error, dict) else error
    return BadGatewayError(f"the upstream failed mid-stream: {message}")


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
