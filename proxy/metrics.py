"""Prometheus metrics: one registry per application, served at ``GET /metrics``.

Label values come only from the configuration (provider and model names the
config knows, route patterns, status codes), never from what a client sends,
so their number stays bounded and no credential can ever become a label.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector

OTHER = "other"

#: From a small buffered request to a long upload or stream.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """Everything the proxy counts."""

    def __init__(self, providers: Collection[str] = (), models: Collection[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self._providers = frozenset(providers)
        self._models = frozenset(models)
        registry = self.registry
        ProcessCollector(registry=registry)  # open fds, RSS, CPU of this process
        self.requests = Counter(
            "proxy_requests",
            "Requests answered, by route, provider, model and status.",
            ["route", "provider", "model", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "proxy_request_duration_seconds",
            "Time from a request's start to the end of its answer.",
            ["route"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_ttfb = Histogram(
            "proxy_upstream_ttfb_seconds",
            "Time from sending a request upstream to the first byte of its answer.",
            ["provider"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.audio_bytes_in = Counter(
            "proxy_audio_bytes_in", "Audio bytes read from clients.", registry=registry
        )
        self.audio_bytes_out = Counter(
            "proxy_audio_bytes_out",
            "Audio bytes sent to upstreams (a retry sends them again).",
            ["provider"],
            registry=registry,
        )
        self.active_uploads = Gauge(
            "proxy_active_uploads", "Requests whose upload is being read.", registry=registry
        )
        self.open_streams = Gauge(
            "proxy_open_streams", "Server-sent event streams open to clients.", registry=registry
        )
        self.in_flight = Gauge(
            "proxy_requests_in_flight", "Transcription requests being served.", registry=registry
        )
        self.retries = Counter(
            "proxy_retries",
            "Retries of a provider after a failure.",
            ["provider"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "proxy_fallbacks",
            "Requests passed on from one provider to the next.",
            ["provider"],
            registry=registry,
        )
        self.spool_bytes = Counter(
            "proxy_spool_bytes", "Bytes written to spool files.", registry=registry
        )
        self.sse_events = Counter(
            "proxy_sse_events", "Server-sent events written to clients.", registry=registry
        )
        self.cache_hits = Counter(
            "proxy_cache_hits", "Requests answered from the transcript cache.", registry=registry
        )
        self.cache_misses = Counter(
            "proxy_cache_misses",
            "Transcript cache lookups that found nothing usable.",
            registry=registry,
        )
        self.cache_stores = Counter(
            "proxy_cache_stores", "Answers stored in the transcript cache.", registry=registry
        )
        self.cache_evictions = Counter(
            "proxy_cache_evictions",
            "Unexpired entries the memory cache dropped to make room.",
            registry=registry,
        )
        self.cache_upstream_cancelled = Counter(
            "proxy_cache_upstream_cancelled",
            "Upstream requests abandoned before their body was complete: the cache had the answer.",
            registry=registry,
        )
        self.cache_errors = Counter(
            "proxy_cache_errors",
            "Transcript cache operations that failed (each counted as a miss or a skipped store).",
            registry=registry,
        )
        self.realtime_sessions = Gauge(
            "proxy_realtime_sessions",
            "Realtime sessions open, synthesized by the proxy or relayed to a realtime upstream.",
            ["kind"],
            registry=registry,
        )
        self.realtime_audio_seconds = Counter(
            "proxy_realtime_audio_seconds",
            "Seconds of audio appended to realtime sessions.",
            registry=registry,
        )
        self.realtime_turns = Counter(
            "proxy_realtime_turns",
            "Realtime turns transcribed, by outcome (completed, failed).",
            ["outcome"],
            registry=registry,
        )
        self.realtime_turn_seconds = Histogram(
            "proxy_realtime_turn_seconds",
            "Time from a realtime turn's commit (its speech end, with server_vad) to its "
            "completed event.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.realtime_upstream_connect = Histogram(
            "proxy_realtime_upstream_connect_seconds",
            "Time to open a relayed session's upstream WebSocket.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.realtime_relay_frames = Counter(
            "proxy_realtime_relay_frames",
            "Frames relayed, by direction (upstream, client).",
            ["direction"],
            registry=registry,
        )
        self.realtime_relay_bytes = Counter(
            "proxy_realtime_relay_bytes",
            "Bytes of frames relayed, by direction (upstream, client).",
            ["direction"],
            registry=registry,
        )
        self.realtime_tokens = Counter(
            "proxy_realtime_tokens",
            "Tokens the upstreams' completed events report for relayed sessions (input, output).",
            ["kind"],
            registry=registry,
        )
        self.log_rows_dropped = Counter(
            "proxy_log_rows_dropped",
            "Request log rows dropped: the queue was full while the store was slow or down, "
            "a batch the store refused, or rows still waiting at shutdown.",
            ["reason"],
            registry=self.registry,
        )
        self.spans_dropped = Counter(
            "proxy_spans_dropped",
            "Trace spans the collector did not take: those of every batch whose export "
            "failed (the collector unreachable, refusing or too slow). Requests are served "
            "all the same.",
            registry=registry,
        )
        self.metered_requests = Counter(
            "proxy_metered_requests",
            "Answered requests settled against limits and budgets, by where their audio "
            "length came from (answer, container, reservation).",
            ["source"],
            registry=registry,
        )
        self.metered_audio_seconds = Counter(
            "proxy_metered_audio_seconds",
            "Audio seconds settled against limits and budgets, by where the length came from.",
            ["source"],
            registry=registry,
        )
        #: The series of each (route, provider, model, status) answered, looked up once.
        self._answered: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self.tasks = Gauge(
            "proxy_asyncio_tasks", "Tasks alive on the event loop.", registry=registry
        )
        self.tasks.set_function(_task_count)

    def metered(self, source: str, seconds: float) -> None:
        """A request settled on ``seconds`` of audio, known from ``source``."""
        self.metered_requests.labels(source=source).inc()
        self.metered_audio_seconds.labels(source=source).inc(seconds)

    def answered(
        self, route: str, provider: str | None, model: str | None, status: int, seconds: float
    ) -> None:
        """Count one answered request, and how long it took."""
        labels = (route, self.provider(provider), self.model(model), str(status))
        series = self._answered.get(labels)
        if series is None:
            # Label values are bounded (see the module's docstring), and so is this.
            series = self._answered[labels] = (
                self.requests.labels(*labels),
                self.request_duration.labels(route),
            )
        counted, timed = series
        counted.inc()
        timed.observe(seconds)

    def provider(self, name: str | None) -> str:
        """``name`` if the config knows it, else ``other``."""
        return name if name in self._providers else OTHER

    def model(self, name: str | None) -> str:
        """``name`` if the config names it (bare or as provider/model), else ``other``."""
        return name if name in self._models else OTHER


def _task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # no running loop (scraped from another thread)
        return 0.0


def metrics_response(metrics: Metrics) -> web.Response:
    """The registry in Prometheus' text format."""
    response = web.Response(body=generate_latest(metrics.registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
