"""A realtime session relayed to a provider's own Realtime API (OpenAI's, Azure's).

Events go both ways as they come. Each client event goes upstream as the
proxy parsed and checked it, serialized again (never the client's own text:
the upstream's JSON parser might keep another of two duplicate keys than
the one checked); text that is no JSON object, and binary frames, are
refused with an ``error``. An update's models are rewritten and pinned
(:mod:`.relay_checks`). The client's credential never goes upstream (the
session was opened with the provider's key), and the upstream's frames
reach the client with our provider keys blotted out.

Appended audio is metered as it passes, at the input format the upstream
says it accepted (:mod:`.input_rate`). ``completed`` events' token usage is
counted.

An upstream that closes or fails ends the client's session with an
``error`` event and a close of the same code; a client that leaves closes
the upstream at once. The session ends of itself as a synthesized one does
(:mod:`.lifetime`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType

from ..errors import ProxyError
from ..governance.credentials import Caller
from ..router import Route
from .client_events import ClientEventError, event_id_of, read_event_object
from .input_rate import InputRate, confirmed_rate, decoded_length
from .lifetime import Lifetime
from .protocol import (
    APPEND,
    BETA_SESSION_CREATED,
    BETA_SESSION_UPDATE,
    BETA_SESSION_UPDATED,
    CLOSE_FAILED,
    CLOSE_POLICY,
    CLOSE_RESTARTING,
    SESSION_CREATED,
    SESSION_UPDATE,
    SESSION_UPDATED,
    TRANSCRIPTION_COMPLETED_SUFFIX,
    client_error_event,
    proxy_error_event,
    restarting_error,
    upstream_closed_error,
)
from .relay_checks import UpdateCheck
from .services import SessionServices
from .session import SessionKind, key_id_of
from .session_meter import SessionMeter, spent
from .websocket import ClientSocket

_UPDATES = (SESSION_UPDATE, BETA_SESSION_UPDATE)
#: The upstream's events that say its session's configuration: the answers to updates,
#: and the first one.
_ANSWERS = (SESSION_UPDATED, BETA_SESSION_UPDATED)
_CREATED = (SESSION_CREATED, BETA_SESSION_CREATED)
#: Close codes that say no more than that the connection went.
_NO_CODE = (1005, 1006)


class RelayedSession:
    """One client's session, relayed to the upstream's own."""

    kind: SessionKind = "relayed"

    def __init__(
        self,
        socket: ClientSocket,
        upstream: aiohttp.ClientWebSocketResponse,
        services: SessionServices,
        *,
        caller: Caller,
        meter: SessionMeter,
        route: Route,
        azure_deployment: bool = False,
        expires_at: float | None = None,
    ) -> None:
        self._socket = socket
        self._upstream = upstream
        self._services = services
        #: The virtual key the session acts for, if it has one.
        self.key_id = key_id_of(caller)
        self._meter = meter
        self._route = route
        self._updates = UpdateCheck(
            services.router,
            services.governor,
            caller,
            route.provider,
            azure_deployment=azure_deployment,
        )
        self._rate = InputRate()
        self._lifetime = Lifetime(services.settings.idle_timeout_s, expires_at)
        metrics = services.metrics
        self._frames_up = metrics.realtime_relay_frames.labels(direction="upstream")
        self._frames_down = metrics.realtime_relay_frames.labels(direction="client")
        self._bytes_up = metrics.realtime_relay_bytes.labels(direction="upstream")
        self._bytes_down = metrics.realtime_relay_bytes.labels(direction="client")

    @property
    def reading(self) -> bool:
        """Whether the client's frames are still relayed (until the client has gone)."""
        return not self._socket.closed

    async def run(self) -> None:
        """Relay until either side ends the session."""
        sessions = self._services.metrics.realtime_sessions.labels(kind=self.kind)
        sessions.inc()
        self._lifetime.heard()
        tasks = (
            asyncio.ensure_future(self._socket.read(self)),
            asyncio.ensure_future(self._from_upstream()),
            asyncio.ensure_future(self._watch()),
        )
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sessions.dec()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.aclose()

    async def aclose(self) -> None:
        """Close the upstream's session (the client's is its handler's)."""
        with contextlib.suppress(Exception):
            await self._upstream.close()

    async def drain(self, deadline_s: float) -> None:
        """The server is stopping: tell the client to reconnect, and at the deadline close
        both sides (1012)."""
        await self._socket.send(restarting_error(deadline_s))
        await asyncio.sleep(deadline_s)
        await self._socket.close(CLOSE_RESTARTING, "server restarting")
        await self.aclose()

    async def revoke(self, refusal: ProxyError) -> None:
        """The session's key may no longer be used: tell the client why, and close both
        sides (1008)."""
        await self._spent(refusal, None)

    async def _spent(self, refusal: ProxyError, caused_by: str | None) -> None:
        """End the session over ``refusal`` (a spent limit, a refused key): the client is
        told why, both sides close (1008)."""
        await self._socket.end_with(
            proxy_error_event(refusal, caused_by), CLOSE_POLICY, spent(refusal)
        )
        await self.aclose()

    async def _watch(self) -> None:
        """End the session when its secret expires or its client has gone quiet."""
        ending = await self._lifetime.ended()
        await self._socket.end_with(ending.event, ending.close_code, ending.reason)

    # --- the client's frames --------------------------------------------------------------

    def heard(self) -> None:
        """The client sent a frame: its idle time starts again."""
        self._lifetime.heard()

    async def on_text(self, text: str) -> None:
        """A client event, sent upstream once it is checked (or refused)."""
        checked = await self._inspect(text)
        if checked is None:
            return
        await self._upstream.send_str(checked)
        self._bytes_up.inc(len(checked))
        self._frames_up.inc()

    async def _inspect(self, text: str) -> str | None:
        """The client's event as it goes upstream: parsed, checked, metered, its models
        rewritten and pinned, and serialized again; None when it is refused (the client
        has been told why)."""
        event: dict[str, Any] | None = None
        try:
            event = read_event_object(text)
            kind = event.get("type")
            if kind == APPEND:
                if not await self._metered_append(event):
                    return None
            elif kind in _UPDATES:
                self._rate.requested(self._updates.checked(event))
        except ClientEventError as exc:
            await self._socket.send(client_error_event(exc, event_id_of(event) if event else None))
            return None
        except ProxyError as exc:
            await self._socket.send(proxy_error_event(exc, event_id_of(event) if event else None))
            return None
        return orjson.dumps(event).decode()

    async def _metered_append(self, event: dict[str, Any]) -> bool:
        """Count an append's audio at the rate the upstream takes it; False when a spent
        limit has ended the session."""
        audio = event.get("audio")
        if not isinstance(audio, str):
            return True  # no audio to count: the upstream says what is wrong with it
        size = decoded_length(audio)
        seconds = size / self._rate.bytes_per_s
        self._services.metrics.realtime_audio_seconds.inc(seconds)
        refused = await self._meter.add(seconds, size)
        if refused is None:
            return True
        await self._spent(refused, event_id_of(event))
        return False

    # --- the upstream's frames ------------------------------------------------------------

    async def _from_upstream(self) -> None:
        """The upstream's frames to the client, our keys blotted out of them; the upstream
        ending ends the session."""
        upstream = self._upstream
        redactor = self._services.redactor
        async for message in upstream:
            if message.type == WSMsgType.TEXT:
                data = redactor.text(message.data)
                self._observe(data)
                await self._socket.relay_text(data)
                self._bytes_down.inc(len(data))
            elif message.type == WSMsgType.BINARY:
                data_bytes = redactor.bytes(message.data)
                await self._socket.relay_bytes(data_bytes)
                self._bytes_down.inc(len(data_bytes))
            else:
                continue
            self._frames_down.inc()
        if self._socket.closed:
            return
        code = upstream.close_code
        reported = code if code is not None and code not in _NO_CODE else CLOSE_FAILED
        await self._socket.end_with(
            upstream_closed_error(self._route.provider.name, code),
            reported,
            "the provider ended the session",
        )

    def _observe(self, data: str) -> None:
        """Learn from an upstream event what the session's format now is, and count a
        completed turn's usage."""
        with contextlib.suppress(orjson.JSONDecodeError):
            event = orjson.loads(data)
            if not isinstance(event, dict):
                return
            kind = event.get("type")
            if kind in _ANSWERS or kind in _CREATED:
                session = event.get("session")
                rate = confirmed_rate(session) if isinstance(session, dict) else None
                self._rate.confirmed(rate, answers_update=kind in _ANSWERS)
            elif isinstance(kind, str) and kind.endswith(TRANSCRIPTION_COMPLETED_SUFFIX):
                self._count_usage(event)

    def _count_usage(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            usage = event.get("usage") or {}
            if usage.get("type") == "tokens":
                tokens = self._services.metrics.realtime_tokens
                tokens.labels(kind="input").inc(float(usage.get("input_tokens", 0)))
                tokens.labels(kind="output").inc(float(usage.get("output_tokens", 0)))
            self._services.metrics.realtime_turns.labels(outcome="completed").inc()
