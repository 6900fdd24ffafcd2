"""The OpenTelemetry SDK as the proxy runs it (README, "Tracing"): one tracer provider per
app, its finished spans batched and posted over OTLP/HTTP in the SDK's own thread, off
the request path.

Imported only when tracing is on (``proxy.tracing``): the core install does without the
``tracing`` extra. A collector that cannot be reached costs requests nothing: a batch
that fails is dropped, its spans counted (``proxy_spans_dropped_total``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Tracer
from prometheus_client import Counter

from .config.schema import TracingSettings

log = logging.getLogger(__name__)

#: The instrumentation scope spans are made under.
SCOPE = "transcription-proxy"
#: At shutdown, the longest wait for the last spans to be sent (a collector that is down
#: must not hold the process's exit).
SHUTDOWN_TIMEOUT_S = 5.0


class CountedExporter(SpanExporter):
    """An exporter whose failed batches are counted, span by span, as dropped."""

    def __init__(self, exporter: SpanExporter, dropped: Counter) -> None:
        self._exporter = exporter
        self._dropped = dropped
        self._shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Send ``spans`` (in the SDK's thread); the ones that did not go are counted."""
        result = self._exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self._dropped.inc(len(spans))
        return result

    def shutdown(self) -> None:
        """Shut the exporter down, once (a retry it is waiting on ends now)."""
        if not self._shut:
            self._shut = True
            self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is held here."""
        return self._exporter.force_flush(timeout_millis)


class Tracing:
    """The app's tracer provider and the one tracer every span is made with."""

    def __init__(self, settings: TracingSettings, dropped: Counter) -> None:
        resource = Resource.create(
            {**settings.resource_attributes, SERVICE_NAME: settings.service_name}
        )
        # Not the process's global provider: each app (a test's among many) has its own,
        # and shuts it down itself (so no exit handler either).
        self._provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._exporter = CountedExporter(OTLPSpanExporter(endpoint=settings.traces_url), dropped)
        self._provider.add_span_processor(
            BatchSpanProcessor(self._exporter, schedule_delay_millis=settings.schedule_delay_ms)
        )
        #: What the tracing plugin makes spans with.
        self.tracer: Tracer = self._provider.get_tracer(SCOPE)

    async def aclose(self) -> None:
        """Send the spans still waiting, for at most :data:`SHUTDOWN_TIMEOUT_S`, and stop.

        The SDK's shutdown blocks for as long as its last export takes (retries against
        a collector that is down included): it runs in a thread of its own, which the
        process's exit does not wait for, and past the deadline the export is abandoned.
        """
        stopped = threading.Event()

        def stop() -> None:
            try:
                self._provider.shutdown()
            finally:
                stopped.set()

        threading.Thread(target=stop, name="tracing-shutdown", daemon=True).start()
        if not await asyncio.to_thread(stopped.wait, SHUTDOWN_TIMEOUT_S):
            log.warning(
                "tracing: the collector did not take the last spans within %.0f s; "
                "they are dropped",
                SHUTDOWN_TIMEOUT_S,
            )
            self._exporter.shutdown()
