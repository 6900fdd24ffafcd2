"""Relaying a provider's transcript events to the client as server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiohttp import web

from ..errors import BadGatewayError, ProxyError, ServiceUnavailableError, error_body
from ..metrics import Metrics
from ..models import RequestFacts, TranscriptDelta, TranscriptDone, TranscriptEvent
from .events import DELTA, deltas_of, done_event
from .sse import EventStream


def streamed(request_type: str) -> str:
    """The request type of a streamed answer: ``transcription_stream``, ``translation_stream``."""
    return request_type if request_type.endswith("_stream") else f"{request_type}_stream"


#: The cancellation message that ends a stream at a shutdown's drain deadline.
DRAIN_DEADLINE = "drain deadline"


class _TaggedEvents:
    """Sends each event tagged with ``extra_fields``, numbered as Bifrost's ``chunk_index``."""

    def __init__(self, stream: EventStream, facts: RequestFacts, metrics: Metrics) -> None:
        self._stream = stream
        self.facts = facts
        self._metrics = metrics
        self._index = 0
        self.last_sent = facts.started

    async def send(self, event: Mapping[str, Any], *, final: bool = False) -> None:
        now = time.monotonic()
        # ms since the previous event; the done event says how long it all took.
        since = self.facts.started if final else self.last_sent
        facts = self.facts
        extra_fields: dict[str, Any] = {
            "request_type": facts.request_type,
            "provider": facts.provider,
            "model_requested": facts.model_requested,
            "model_deployment": facts.model_deployment,
            "latency": int((now - since) * 1000),
            "chunk_index": self._index,
        }
        if final and facts.attempts:
            extra_fields["attempts"] = facts.attempts
        if final and facts.audio_chunks is not None:
            extra_fields["audio_chunks"] = facts.audio_chunks
        if final and facts.cache_debug is not None:
            extra_fields["cache_debug"] = facts.cache_debug
        await self._stream.send({**event, "extra_fields": extra_fields})
        self._metrics.sse_events.inc()
        facts.events_sent += 1
        self._index += 1
        self.last_sent = time.monotonic()


async def relay(
    request: web.Request,
    first: TranscriptEvent,
    rest: AsyncIterator[TranscriptEvent],
    facts: RequestFacts,
    *,
    keepalive_s: float,
    metrics: Metrics,
    streams: set[asyncio.Task[Any]] | None = None,
    on_done: Callable[[TranscriptDone], None] = lambda _: None,
) -> web.StreamResponse:
    """Send ``first`` and then ``rest`` as they arrive, ending with ``[DONE]``;
    ``on_done`` is told of the answer before its done event is sent.

    The response is committed with the first event, so a failure after it is
    sent as one event carrying the error body, then ``[DONE]``. So is the end
    of a stream cut short when a shutdown's drain deadline passes: the task is
    registered in ``streams``, and cancelled with :data:`DRAIN_DEADLINE`.
    """
    facts.request_type = streamed(facts.request_type)
    stream = EventStream(request)
    await stream.open()
    tagged = _TaggedEvents(stream, facts, metrics)
    keepalive = asyncio.create_task(keep_alive(stream, keepalive_s))
    metrics.open_streams.inc()
    task = asyncio.current_task()
    if streams is not None and task is not None:
        streams.add(task)
    try:
        complete = False
        try:
            await _send_all(tagged, first, rest, on_done)
            complete = True
        except ProxyError as exc:
            facts.failed(exc)
            await stream.send(_error_event(exc, facts))
        except asyncio.CancelledError as exc:
            if task is None or exc.args != (DRAIN_DEADLINE,) or task.cancelling() > 1:
                raise  # the client left, or a harder stop than the drain deadline
            task.uncancel()
            cut = ServiceUnavailableError(
                "the server is shutting down; the stream was cut at its drain deadline",
                code="shutting_down",
            )
            facts.failed(cut)
            await stream.send(_error_event(cut, facts))
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await keepalive
        await stream.close()
        facts.stream_complete = complete
    except ConnectionError:
        pass  # the client is gone; the caller closes the upstream stream
    finally:
        metrics.open_streams.dec()
        if streams is not None and task is not None:
            streams.discard(task)
    return stream.response


def _error_event(error: ProxyError, facts: RequestFacts) -> dict[str, Any]:
    return error_body(
        error,
        provider=facts.provider,
        model_requested=facts.model_requested,
        request_type=facts.request_type,
    )


async def _send_all(
    tagged: _TaggedEvents,
    first: TranscriptEvent,
    rest: AsyncIterator[TranscriptEvent],
    on_done: Callable[[TranscriptDone], None],
) -> None:
    event: TranscriptEvent | None = first
    sent_delta = False
    while event is not None:
        if isinstance(event, TranscriptDone):
            if not sent_delta:
                # The upstream answered whole (it ignores stream=true): its
                # answer becomes deltas, so the stream is never empty.
                for delta in deltas_of(event):
                    await tagged.send(_bifrost_delta(delta.event))
            on_done(event)
            await tagged.send(done_event(event), final=True)
            return
        assert isinstance(event, TranscriptDelta)
        await tagged.send(_bifrost_delta(event.event))
        sent_delta = True
        event = await anext(rest, None)
    raise BadGatewayError("the upstream stream ended before the transcript was done")


def _bifrost_delta(event: dict[str, Any]) -> dict[str, Any]:
    """Bifrost's delta events carry ``text`` (empty until the done event); OpenAI's omit it."""
    if event.get("type") != DELTA or "text" in event:
        return event
    shaped = {"type": event["type"], "delta": event.get("delta", ""), "text": ""}
    shaped.update(event)
    return shaped


async def keep_alive(stream: EventStream, interval: float) -> None:
    """Write a comment whenever nothing has been written for ``interval`` seconds."""
    while True:
        idle = time.monotonic() - stream.last_write
        if idle >= interval:
            await stream.keepalive()
            idle = 0.0
        await asyncio.sleep(interval - idle)
