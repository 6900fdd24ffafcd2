"""Upstream event streams in their several shapes, turned into one kind of transcript event.

Streams arrive as OpenAI's ``transcript.text.*`` events or as vLLM's
``transcription.chunk`` objects; whatever the upstream sent, the rest of the
proxy sees :class:`TranscriptDelta` events and one :class:`TranscriptDone`.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..answers.events import DELTA, DONE, SEGMENT
from ..errors import BadGatewayError
from ..models import TranscriptDelta, TranscriptDone


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
