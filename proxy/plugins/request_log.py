"""The request log around dispatch: one row per request, realtime session and turn, and
long-audio chunk (README, "The request log").

Rows are made once the request is over, from what it became (``facts``, with
governance's usage and cost: this plugin comes after it), and handed to the
store's writer, which never blocks the request: it writes them in batches off
the request path, and drops (and counts) what a store that is down cannot
take. A chunk's row is a child of its request's (``parent_request_id``), as a
turn's is of its session's. The transcript is kept only with ``logs.content``;
audio never.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..answers.formats import transcript_text
from ..dispatch import AttemptEnded, AttemptStarted
from ..form.fields import first_value
from ..models import RequestFacts
from ..store.log_rows import LogRow, Status
from ..store.request_log import RequestLog
from .base import EarlyAnswer, RequestHooks


class RequestLogPlugin:
    """Writes each request's row (and its chunks') to the request log."""

    def __init__(self, log: RequestLog, *, replica: str, content: bool) -> None:
        self._log = log
        self._replica = replica
        self._content = content

    def start(self, facts: RequestFacts, early: EarlyAnswer) -> RequestHooks:
        """Every request is logged."""
        return _Logged(self)

    def write(self, facts: RequestFacts, tries: _Tries) -> None:
        """The request's row, and one per long-audio chunk it was cut into."""
        log = self._log
        row = self._row(facts, tries)
        log.add(row)
        for chunk in tries.chunks.values():
            log.add(chunk.row(facts, row, self._replica))

    def _row(self, facts: RequestFacts, tries: _Tries) -> LogRow:
        caller, usage, error = facts.caller, facts.usage, facts.error
        key = caller.virtual_key if caller is not None else None
        form = facts.form
        answer = facts.answer
        return LogRow(
            id=facts.request_id,
            object=facts.kind,
            timestamp=facts.started_at,
            parent_request_id=facts.parent_request_id,
            provider=facts.provider,
            model_requested=facts.model_requested,
            model_deployment=facts.model_deployment,
            virtual_key_id=key.id if key is not None else None,
            status=_status(facts),
            status_code=facts.status,
            error_code=error.code if error is not None else None,
            latency=_ms(time.monotonic() - facts.started),
            first_event_latency=(
                _ms(facts.first_event_at - facts.started) if facts.first_event_at else None
            ),
            stream=facts.streams,
            response_format=(
                first_value(form.all_fields(), "response_format") or "json"
                if form is not None
                else None
            ),
            bytes_in=facts.audio_bytes,
            audio_seconds=usage.seconds if usage is not None and usage.source != "none" else None,
            audio_seconds_source=usage.source if usage is not None else None,
            cost=facts.cost,
            number_of_retries=tries.retries,
            fallback_index=tries.answered_by,
            cache_hit=facts.cache_hit,
            replica=self._replica,
            content=(transcript_text(answer) if self._content and answer is not None else None),
            trace_id=facts.trace_id,
        )


@dataclass
class _Chunk:
    """What a long-audio chunk's tries came to."""

    index: int
    span_s: tuple[float, float]
    started_at: float
    started: float
    retries: int = 0
    fallback: int = 0
    provider: str | None = None
    model: str | None = None
    ended: AttemptEnded | None = None
    latency_ms: int | None = None

    def row(self, facts: RequestFacts, parent: LogRow, replica: str) -> LogRow:
        ended = self.ended
        status: Status = (
            "processing" if ended is None else "success" if ended.error is None else "error"
        )
        start_s, end_s = self.span_s
        return LogRow(
            id=f"{facts.request_id}.{self.index}",
            object=f"{facts.kind}.chunk",
            timestamp=self.started_at,
            parent_request_id=facts.request_id,
            provider=self.provider,
            model_requested=parent.model_requested,
            model_deployment=self.model,
            virtual_key_id=parent.virtual_key_id,
            status=status,
            status_code=ended.status if ended is not None else None,
            error_code=ended.error.code if ended is not None and ended.error else None,
            latency=self.latency_ms,
            stream=False,
            response_format=parent.response_format,
            audio_seconds=round(end_s - start_s, 3),
            audio_seconds_source="container",
            number_of_retries=self.retries,
            fallback_index=self.fallback,
            replica=replica,
            trace_id=parent.trace_id,
        )


@dataclass
class _Tries:
    """A request's upstream tries: its retries, which route answered, its chunks."""

    retries: int = 0
    answered_by: int | None = None
    chunks: dict[int, _Chunk] = field(default_factory=dict)


class _Logged(RequestHooks):
    def __init__(self, plugin: RequestLogPlugin) -> None:
        self._plugin = plugin
        self._tries = _Tries()

    async def on_attempt(self, attempt: AttemptStarted) -> None:
        tries = self._tries
        if attempt.chunk is None:
            tries.retries += 1 if attempt.retry else 0
            return
        chunk = tries.chunks.get(attempt.chunk)
        if chunk is None:
            assert attempt.span_s is not None
            chunk = tries.chunks[attempt.chunk] = _Chunk(
                attempt.chunk, attempt.span_s, time.time(), time.monotonic()
            )
        chunk.retries += 1 if attempt.retry else 0
        chunk.fallback = attempt.fallback
        chunk.provider = attempt.route.provider.name
        chunk.model = attempt.route.provider.deployment_of(attempt.route.model)

    async def on_attempt_end(self, attempt: AttemptStarted, ended: AttemptEnded) -> None:
        if attempt.chunk is None:
            if ended.error is None:
                self._tries.answered_by = attempt.fallback
            return
        chunk = self._tries.chunks[attempt.chunk]
        chunk.ended = ended
        chunk.latency_ms = _ms(time.monotonic() - chunk.started)

    async def after(self, facts: RequestFacts) -> None:
        self._plugin.write(facts, self._tries)


def _status(facts: RequestFacts) -> Status:
    if facts.error is not None or (facts.status is not None and facts.status >= 400):
        return "error"
    return "success"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
