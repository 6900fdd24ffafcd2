"""One request's way through its routes: the primary and its retries, then each fallback."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from .config import NetworkConfig
from .errors import BadGatewayError, GatewayTimeoutError, ProxyError, UpstreamError
from .metrics import Metrics
from .models import AudioSource, FormField, TranscriptEvent, UpstreamCall
from .router import Route

log = logging.getLogger(__name__)

#: Failures of the upstream or of the way to it, which another attempt (or
#: another provider) may not repeat. A failure of the request itself, or of
#: the client's side of it, ends the request.
_UPSTREAM_FAILURES = (UpstreamError, BadGatewayError, GatewayTimeoutError)


def may_retry(routes: Sequence[Route]) -> bool:
    """Whether the request may need its upload more than once."""
    return len(routes) > 1 or routes[0].provider.network.max_retries > 0


@dataclass(frozen=True)
class Attempt:
    """One try at one provider, as the answer reports it."""

    provider: str
    model: str
    status: int
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The attempt as listed in ``extra_fields.attempts``."""
        out: dict[str, Any] = {"provider": self.provider, "model": self.model}
        out["status"] = self.status
        if self.message is not None:
            out["error"] = self.message
        return out


Sleep = Callable[[float], Awaitable[None]]


class Dispatch:
    """One request's way through its routes: the primary and its retries, then each fallback.

    Nothing is retried once a route has produced its first event: by then
    the client may have part of the answer.
    """

    def __init__(
        self,
        routes: Sequence[Route],
        fields: Sequence[FormField],
        audio: AudioSource,
        *,
        metrics: Metrics | None = None,
        request_id: str | None = None,
        api_key: str | None = None,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._routes = routes
        self._fields = fields
        self._audio = audio
        self._metrics = metrics
        self._request_id = request_id
        self._api_key = api_key
        self._sleep = sleep
        self._jitter = jitter
        #: The route that is answering, once one is.
        self.route = routes[0]
        self.attempts: list[Attempt] = []

    @property
    def fell_back(self) -> bool:
        """Whether the answer comes from anything but the primary's first try."""
        return len(self.attempts) > 1

    @property
    def attempt_facts(self) -> list[dict[str, Any]]:
        """The attempts as ``extra_fields.attempts`` lists them."""
        return [attempt.as_dict() for attempt in self.attempts]

    async def events(self) -> AsyncGenerator[TranscriptEvent, None]:
        """The answering route's events; raises the primary's error if every route fails."""
        primary_error: ProxyError | None = None
        for position, route in enumerate(self._routes):
            answered = False
            try:
                # Closed here, not left to the garbage collector, when the
                # consumer stops early (as it does once it has the answer).
                async with aclosing(self._try_route(route)) as attempt:
                    async for event in attempt:
                        answered = True
                        yield event
                return
            except ProxyError as exc:
                if answered:
                    raise  # part of this answer is out: it cannot be replaced
                primary_error = primary_error or exc
                last = position == len(self._routes) - 1
                if not last and self._worth_another(exc, note_if_not_replayable=True):
                    log.info(
                        "provider %s failed (%s); falling back", route.provider.name, exc.message
                    )
                    if self._metrics is not None:
                        self._metrics.fallbacks.labels(
                            provider=self._metrics.provider(route.provider.name)
                        ).inc()
                    continue
                raise self._with_attempts(primary_error if last else exc) from None

    async def _try_route(self, route: Route) -> AsyncGenerator[TranscriptEvent, None]:
        network = route.provider.network
        retry = 0
        while True:
            events = route.provider.transcribe(
                UpstreamCall(
                    model=route.model,
                    fields=self._fields,
                    audio=self._audio,
                    request_id=self._request_id,
                    api_key=self._api_key,
                )
            )
            async with aclosing(events):
                try:
                    first = await anext(events)
                except ProxyError as exc:
                    self.attempts.append(
                        Attempt(route.provider.name, route.model, exc.status_code, exc.message)
                    )
                    if retry >= network.max_retries or not self._worth_another(
                        exc, note_if_not_replayable=True
                    ):
                        raise
                    delay = self._backoff(exc, retry, network)
                    if delay is None:
                        raise
                    retry += 1
                    if self._metrics is not None:
                        self._metrics.retries.labels(
                            provider=self._metrics.provider(route.provider.name)
                        ).inc()
                    log.info(
                        "provider %s failed (%s); retry %d in %.2f s",
                        route.provider.name,
                        exc.message,
                        retry,
                        delay,
                    )
                    await self._sleep(delay)
                    continue
                self.route = route
                self.attempts.append(Attempt(route.provider.name, route.model, 200))
                yield first
                async for event in events:
                    yield event
                return

    def _worth_another(self, error: ProxyError, *, note_if_not_replayable: bool = False) -> bool:
        """Whether another attempt could succeed where ``error`` ended this one."""
        if not isinstance(error, _UPSTREAM_FAILURES):
            return False
        if not self._audio.replayable:
            if note_if_not_replayable and "spool limit" not in error.message:
                error.message += (
                    "; not retried: the upload is larger than the spool limit "
                    "(proxy.max_spool_mb), so it could not be sent again"
                )
            return False
        return True

    def _backoff(self, error: ProxyError, retry: int, network: NetworkConfig) -> float | None:
        """Seconds to wait before the next retry, or None when it should not be retried."""
        if not error.retryable:
            return None
        ceiling = network.retry_backoff_max_ms / 1000
        exponential = min(ceiling, network.retry_backoff_initial_ms / 1000 * 2.0**retry)
        # Jitter spreads the retries of many clients that failed together.
        delay = exponential * (0.5 + self._jitter() / 2)
        retry_after = retry_after_seconds(error.headers.get("Retry-After"))
        if retry_after is not None:
            if retry_after > ceiling:
                return None  # longer than we would ever wait: try the next route
            delay = max(delay, retry_after)
        return delay

    def _with_attempts(self, error: ProxyError) -> ProxyError:
        error.attempts = [a.as_dict() for a in self.attempts]
        return error


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header's wait: delta seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
