"""Metrics around dispatch: the upstream tries each request makes.

Retries and fallbacks are counted as each try begins, by the provider that
failed (``proxy_retries_total``, ``proxy_fallbacks_total``). What every
response is (its status, its latency) is counted where every response
passes, in the app's middleware, with the refusals that come before any
plugin.
"""

from __future__ import annotations

from ..dispatch import AttemptStarted
from ..metrics import Metrics
from ..models import RequestFacts
from .base import EarlyAnswer, RequestHooks


class MetricsPlugin:
    """Counts each request's retries and fallbacks."""

    def __init__(self, metrics: Metrics) -> None:
        self._hooks = _Counted(metrics)

    def start(self, facts: RequestFacts, early: EarlyAnswer) -> RequestHooks:
        """The same hooks for every request: they keep nothing of it."""
        return self._hooks


class _Counted(RequestHooks):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def on_attempt(self, attempt: AttemptStarted) -> None:
        """A retry counts against its provider; a fallback against the one that failed."""
        metrics = self._metrics
        if attempt.retry:
            provider = metrics.provider(attempt.route.provider.name)
            metrics.retries.labels(provider=provider).inc()
        elif attempt.after is not None:
            metrics.fallbacks.labels(provider=metrics.provider(attempt.after.provider.name)).inc()
