"""Traces around dispatch (README, "Tracing"): one span per request, continuing the
client's W3C trace, with a child for each timed phase and each upstream try.

A request's span (a server span) continues the ``traceparent`` it came with (one
that does not parse starts a new trace). Its children: the phases its stages timed
(``facts.phases``: the form's reading, the cache's lookup), made once it is over;
and each upstream try, a client span whose ``traceparent`` goes upstream with it (a
long recording's chunks are tries with ``proxy.chunk.index``). A realtime session is a
span, and each of its turns a child of it (found by ``parent_request_id`` among the
sessions still open).

Attributes follow OpenTelemetry's GenAI conventions (``gen_ai.*``) with the proxy's own
(``proxy.*``): never audio, never a credential (the virtual key's id, never its
value), and the transcript only with ``logs.content``. Imported only when tracing is
on; spans are sent by the SDK's batch processor, off the request path
(:mod:`proxy.tracing_setup`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from multidict import MultiMapping
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    format_trace_id,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .. import logs
from ..answers.formats import transcript_text
from ..answers.usage import answer_tokens
from ..dispatch import AttemptEnded, AttemptStarted
from ..errors import ProxyError
from ..models import RequestFacts
from .base import EarlyAnswer, RequestHooks

#: W3C trace context, as the SDK reads and writes it (its limits on ``tracestate``: 32
#: members, 8192 characters; past them it is not passed on).
_PROPAGATOR = TraceContextTextMapPropagator()


class _Headers(Getter[Mapping[str, str]]):
    """A request's headers as the propagator reads them: every field of a repeated header
    (``tracestate`` may come in several, whose total length counts)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        if isinstance(carrier, MultiMapping):
            return carrier.getall(key, None)
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_HEADERS = _Headers()


class TracingPlugin:
    """Makes each request's spans with ``tracer``."""

    def __init__(self, tracer: Tracer, *, content: bool) -> None:
        self._tracer = tracer
        #: Whether transcripts may go into spans (``logs.content``).
        self._content = content
        #: The spans of the realtime sessions still open, by request id: their turns'
        #: parents. (A client that opens two sessions under one ``x-request-id`` gets
        #: its later session's turns under the later one.)
        self._sessions: dict[str, Span] = {}

    def start(self, facts: RequestFacts, early: EarlyAnswer) -> RequestHooks:
        """Every request is traced (the sampler, parent-based, may make its span one that
        records nothing)."""
        session = self._sessions.get(facts.parent_request_id or "")
        if session is not None:
            parent = set_span_in_context(session)
            kind = SpanKind.INTERNAL
        else:
            parent = _PROPAGATOR.extract(facts.headers, getter=_HEADERS)
            kind = SpanKind.SERVER
        clock = _Clock(facts)
        span = self._tracer.start_span(
            facts.kind, parent, kind=kind, start_time=clock.at(facts.started)
        )
        facts.trace_id = format_trace_id(span.get_span_context().trace_id)
        if facts.kind == "realtime.session":
            self._sessions[facts.request_id] = span
        return _Traced(self, facts, span, clock)


class _Traced(RequestHooks):
    """One request's spans."""

    def __init__(
        self, plugin: TracingPlugin, facts: RequestFacts, span: Span, clock: _Clock
    ) -> None:
        self._clock = clock
        self._tracer = plugin._tracer
        self._content = plugin._content
        self._sessions = plugin._sessions
        self._facts = facts
        self._span = span
        self._context = set_span_in_context(span)
        #: Each try in flight and its span, by the try's id (the try is held, so its id
        #: is not reused while it is here).
        self._tries: dict[int, tuple[AttemptStarted, Span]] = {}

    async def on_attempt(self, attempt: AttemptStarted) -> None:
        """A client span for the try; its context goes upstream in ``attempt.headers``."""
        route = attempt.route
        task = self._facts.task
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": task,
            "gen_ai.provider.name": route.provider.name,
            "gen_ai.request.model": route.model,
        }
        # Said only when not 0 (the primary's first try): every attribute is encoded and
        # sent, span after span.
        if attempt.fallback:
            attributes["proxy.attempt.fallback"] = attempt.fallback
        if attempt.retry:
            attributes["proxy.attempt.retry"] = attempt.retry
        if attempt.chunk is not None and attempt.span_s is not None:
            attributes["proxy.chunk.index"] = attempt.chunk
            attributes["proxy.chunk.start_s"], attributes["proxy.chunk.end_s"] = attempt.span_s
        span = self._tracer.start_span(
            f"{task} {route.model}",
            self._context,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=self._clock.now(),
        )
        self._tries[id(attempt)] = (attempt, span)
        _PROPAGATOR.inject(attempt.headers, set_span_in_context(span))

    async def on_attempt_end(self, attempt: AttemptStarted, ended: AttemptEnded) -> None:
        """The try's span ends with its status: an error's is the span's."""
        held = self._tries.pop(id(attempt), None)
        if held is None:
            return
        span = held[1]
        error = ended.error
        if error is None:
            route = attempt.route
            span.set_attributes(
                {
                    "http.response.status_code": ended.status,
                    "gen_ai.response.model": route.provider.deployment_of(route.model),
                }
            )
        else:
            # Any failure of a client's try is an error (OpenTelemetry's HTTP conventions).
            error_type = _error_type(error)
            span.set_attributes(
                {"http.response.status_code": ended.status, "error.type": error_type}
            )
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end(self._clock.now())

    async def after(self, facts: RequestFacts) -> None:
        """The request's span ends, with what the request became, and its phases' spans."""
        span, clock = self._span, self._clock
        for _, abandoned in self._tries.values():
            # Cut off before it answered (the client left, the cache answered first).
            abandoned.set_attribute("proxy.attempt.abandoned", True)
            abandoned.end(clock.now())
        self._tries.clear()
        if facts.kind == "realtime.session" and self._sessions.get(facts.request_id) is span:
            del self._sessions[facts.request_id]
        if not span.is_recording():
            span.end(clock.now())
            return
        for phase in facts.phases:
            self._tracer.start_span(
                phase.name, self._context, start_time=clock.at(phase.start)
            ).end(clock.at(phase.end))
        if facts.streams and facts.first_event_at is not None:
            # When the client's stream began; a whole answer begins when its try ends.
            span.add_event("proxy.first_event", timestamp=clock.at(facts.first_event_at))
        span.set_attributes(self._attributes(facts))
        error = facts.error
        # A server's span is in error when it failed (5xx), not when it refused the client
        # (4xx: ``error.type`` says why), as OpenTelemetry's HTTP conventions have it.
        if error is not None and facts.status is not None and facts.status >= 500:
            span.set_status(Status(StatusCode.ERROR, _error_type(error)))
        span.end(clock.now())

    def _attributes(self, facts: RequestFacts) -> dict[str, Any]:
        """What the request became, as span attributes (none of them audio or a key)."""
        out: dict[str, Any] = {
            "gen_ai.operation.name": facts.task,
            "proxy.request_id": facts.request_id,
            "proxy.audio.bytes_in": facts.audio_bytes,
        }
        optional: dict[str, Any] = {
            "gen_ai.provider.name": facts.provider,
            # A model string a client sent is cut and has anything key-shaped hidden, as
            # in the access log.
            "gen_ai.request.model": logs.redacted(facts.model_requested),
            "gen_ai.response.model": facts.model_deployment,
            "http.response.status_code": facts.status,
            "proxy.parent_request_id": facts.parent_request_id,
            "proxy.audio.chunks": facts.audio_chunks,
        }
        out.update((name, value) for name, value in optional.items() if value is not None)
        # Said only when there is something to say (see ``on_attempt``).
        if facts.cost:
            out["proxy.cost_usd"] = facts.cost
        if facts.form is not None and facts.streams:
            out["proxy.stream"] = True
        caller = facts.caller
        if caller is not None and caller.virtual_key is not None:
            out["proxy.virtual_key.id"] = caller.virtual_key.id
        if facts.cache_debug is not None:
            out["proxy.cache.hit"] = facts.cache_hit
        usage = facts.usage
        if usage is not None and usage.source != "none":
            out["proxy.audio.seconds"] = usage.seconds
            out["proxy.audio.seconds_source"] = usage.source
        tokens = usage.tokens if usage is not None else answer_tokens(facts.answer)
        if tokens is not None:
            out["gen_ai.usage.input_tokens"] = tokens.input_audio + tokens.input_text
            out["gen_ai.usage.output_tokens"] = tokens.output_text
        if facts.error is not None:
            out["error.type"] = _error_type(facts.error)
        if self._content and facts.answer is not None:
            out["proxy.transcript"] = transcript_text(facts.answer)
        return out


def _error_type(error: ProxyError) -> str:
    """An error as a span names it: its code (its message may quote the upstream)."""
    return error.code or type(error).__name__


class _Clock:
    """A request's times as its spans take them, in Unix nanoseconds: counted from its
    start on the monotonic clock, so that they keep the order things happened in (the
    wall clock may step; the phases' times are monotonic ones)."""

    def __init__(self, facts: RequestFacts) -> None:
        self._zero = facts.started
        self._zero_ns = int(facts.started_at * 1e9)

    def at(self, monotonic: float) -> int:
        """``monotonic`` (a ``time.monotonic()``) as a span's time."""
        return self._zero_ns + int((monotonic - self._zero) * 1e9)

    def now(self) -> int:
        """Now, as a span's time."""
        return self.at(time.monotonic())
