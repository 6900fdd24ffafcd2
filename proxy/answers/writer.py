"""The answer stage: a dispatch's events (or an answer a plugin gave) written to the client.

With ``stream=true`` (the field may come after the file: the whole form has been
read by the time an answer begins) the events are relayed as server-sent
events; otherwise one complete document is written, in the response format
asked for. Until the first event a failure is an ordinary error with its own
status; the answer stage says who answered (``facts.provider``, ``route``,
``attempts``, ``audio_chunks``) and what (``facts.answer``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..dispatch import Dispatch, Served
from ..errors import BadGatewayError
from ..form.fields import first_value, forwarded, parse_stream
from ..metrics import Metrics
from ..models import AudioSource, FormField, RequestFacts, Task, TranscriptDone, TranscriptEvent
from ..plugins.base import Answer, PipelineRun
from .events import final_answer
from .responses import transcription_response
from .streaming import relay

RAW_REQUEST_HEADER = "x-bf-send-back-raw-request"
RAW_RESPONSE_HEADER = "x-bf-send-back-raw-response"


@dataclass(frozen=True)
class AnswerWriter:
    """Writes each request's answer; one per app."""

    #: Seconds of upstream silence before a stream gets a comment line.
    keepalive_s: float
    metrics: Metrics
    #: The tasks relaying streams, so a shutdown can end them properly.
    streams: set[asyncio.Task[Any]]

    async def from_dispatch(
        self, request: web.Request, facts: RequestFacts, run: PipelineRun, dispatch: Dispatch
    ) -> web.StreamResponse:
        """The dispatch's answer, or one a plugin gives before the upstream's begins."""
        async with aclosing(dispatch.events()) as events:
            first = await run.early.first_of(anext(events, None))
            if isinstance(first, Answer):
                return await self.from_plugin(request, facts, first)
            if first is None:
                raise BadGatewayError("the provider ended without an answer")
            facts.first_event_at = time.monotonic()
            _note_served(facts, dispatch.served)
            await run.on_first_event(facts)
            if _wants_stream(_all_fields(facts)):

                def on_done(done: TranscriptDone) -> None:
                    facts.answer = done
                    _note_served(facts, dispatch.served)

                return await self._relay(request, facts, first, events, on_done)
            done = first if isinstance(first, TranscriptDone) else await final_answer(events)
        served = dispatch.served
        _note_served(facts, served)
        facts.answer = done
        fields = _all_fields(facts)
        form = facts.form
        assert form is not None
        assert form.audio is not None
        return transcription_response(
            done,
            facts,
            response_format=first_value(fields, "response_format") or "json",
            raw_request=(
                _raw_request(served.route.model, fields, form.audio, facts.task)
                if _header_is_true(request, RAW_REQUEST_HEADER)
                else None
            ),
            raw_response=(
                served.route.provider.sends_back_raw_response
                or _header_is_true(request, RAW_RESPONSE_HEADER)
            ),
        )

    async def from_plugin(
        self, request: web.Request, facts: RequestFacts, answer: Answer
    ) -> web.StreamResponse:
        """An answer a plugin gave in the upstream's place (the cache's)."""
        facts.given_by = (answer.provider, answer.model)
        fields = _all_fields(facts)
        if _wants_stream(fields):
            return await self._relay(request, facts, answer.done, _no_events())
        return transcription_response(
            answer.done, facts, response_format=first_value(fields, "response_format") or "json"
        )

    async def _relay(
        self,
        request: web.Request,
        facts: RequestFacts,
        first: TranscriptEvent,
        rest: AsyncIterator[TranscriptEvent],
        on_done: Callable[[TranscriptDone], None] = lambda _: None,
    ) -> web.StreamResponse:
        return await relay(
            request,
            first,
            rest,
            facts,
            keepalive_s=self.keepalive_s,
            metrics=self.metrics,
            streams=self.streams,
            on_done=on_done,
        )


def _note_served(facts: RequestFacts, served: Served) -> None:
    """Who answered, for the answer's ``extra_fields``, its headers and its log line."""
    facts.served = served


def _all_fields(facts: RequestFacts) -> list[FormField]:
    return facts.form.all_fields() if facts.form is not None else []


def _wants_stream(fields: Sequence[FormField]) -> bool:
    return parse_stream(first_value(fields, "stream") or "false")


def _header_is_true(request: web.Request, name: str) -> bool:
    return request.headers.get(name, "").strip().lower() == "true"


async def _no_events() -> AsyncIterator[TranscriptEvent]:
    return
    yield  # an async generator with nothing in it


def _raw_request(
    model: str, fields: Sequence[FormField], audio: AudioSource, task: Task
) -> dict[str, Any]:
    """The upstream request's fields, without the audio bytes or any credential.

    A field sent once is a string; a repeated one (``include[]``) a list.
    """
    values: dict[str, list[str]] = {"model": [model]}
    for field in forwarded(fields, task):
        values.setdefault(field.name, []).append(field.value)
    document: dict[str, Any] = {
        name: found[0] if len(found) == 1 else found for name, found in values.items()
    }
    document["file"] = {"filename": audio.filename, "content_type": audio.content_type}
    return document
