"""A real OTLP/HTTP receiver: an aiohttp server taking ``POST /v1/traces``, as an
OpenTelemetry Collector or Jaeger does on port 4318, decoding each protobuf
``ExportTraceServiceRequest`` and keeping its spans."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

#: The longest wait for spans to arrive (the proxy's batches go every few dozen ms).
WAIT_S = 10.0

_KINDS = {
    Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
}
_STATUSES = {
    Status.STATUS_CODE_UNSET: "unset",
    Status.STATUS_CODE_OK: "ok",
    Status.STATUS_CODE_ERROR: "error",
}


@dataclass
class ReceivedSpan:
    """One span as the receiver decoded it (ids in hex, as traceparent writes them)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str
    status_message: str
    events: list[str]
    resource: dict[str, Any] = field(default_factory=dict)


class OtlpReceiver:
    """Records every span posted to it, and can refuse for a while (``status``)."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        #: Export requests received, whether taken or refused.
        self.posts = 0
        #: What it answers; a 503 is a collector refusing (the SDK retries it).
        self.status = 200
        #: Cleared, it answers nothing until set again (a collector that hangs).
        self.answering = asyncio.Event()
        self.answering.set()
        self._arrived = asyncio.Condition()
        self.app = web.Application()
        self.app.router.add_post("/v1/traces", self._traces)
        self.server: TestServer | None = None

    @property
    def endpoint(self) -> str:
        """Its base URL, as ``proxy.tracing.otlp_endpoint`` names it."""
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def _traces(self, request: web.Request) -> web.Response:
        self.posts += 1
        await self.answering.wait()
        if self.status != 200:
            return web.Response(status=self.status)
        body = _decoded(await request.read(), request.headers.get("Content-Encoding", ""))
        export = ExportTraceServiceRequest.FromString(body)
        async with self._arrived:
            for resource_spans in export.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(_span(s, resource) for s in scope_spans.spans)
            self._arrived.notify_all()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def wait_for(self, found: Callable[[list[ReceivedSpan]], bool]) -> list[ReceivedSpan]:
        """Every span received, once ``found`` says they are all there (within ``WAIT_S``)."""
        async with asyncio.timeout(WAIT_S), self._arrived:
            await self._arrived.wait_for(lambda: found(self.spans))
            return list(self.spans)

    async def trace_of(self, request_id: str, count: int) -> list[ReceivedSpan]:
        """The ``count`` spans of the trace whose request span has ``request_id``."""

        def complete(spans: list[ReceivedSpan]) -> bool:
            root = _request_span(spans, request_id)
            return root is not None and len(in_trace(spans, root.trace_id)) >= count

        spans = await self.wait_for(complete)
        root = _request_span(spans, request_id)
        assert root is not None
        return in_trace(spans, root.trace_id)


def in_trace(spans: Sequence[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    """The spans of one trace, in the order they started."""
    return sorted((s for s in spans if s.trace_id == trace_id), key=lambda s: s.start_ns)


def tree(spans: Sequence[ReceivedSpan]) -> str:
    """The spans as text, each under its parent, with its duration and status."""
    by_parent: dict[str | None, list[ReceivedSpan]] = {}
    ids = {s.span_id for s in spans}
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = span.parent_span_id if span.parent_span_id in ids else None
        by_parent.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in by_parent.get(parent, []):
            ms = (span.end_ns - span.start_ns) / 1e6
            status = "" if span.status == "unset" else f" [{span.status}]"
            lines.append(f"{'  ' * depth}{span.name} ({span.kind}, {ms:.1f} ms){status}")
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def _request_span(spans: Sequence[ReceivedSpan], request_id: str) -> ReceivedSpan | None:
    return next((s for s in spans if s.attributes.get("proxy.request_id") == request_id), None)


def _span(span: Span, resource: dict[str, Any]) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex() or None,
        kind=_KINDS.get(span.kind, "other"),
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        attributes=_attributes(span.attributes),
        status=_STATUSES[span.status.code],
        status_message=span.status.message,
        events=[event.name for event in span.events],
        resource=resource,
    )


def _attributes(pairs: Sequence[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind is not None else None


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body
