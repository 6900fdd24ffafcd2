"""A realtime session relayed to a provider's own Realtime API (OpenAI's, Azure's).

Frames go both ways as they come, unchanged but for one thing: the
transcription model a client's ``session.update`` names is rewritten to the
deployment that serves it, and pinned: a model the caller's key may not
use, or one another provider serves, is refused with an ``error`` and never
forwarded. The client's credential never goes upstream (the session was
opened with the provider's key). Appended audio is metered as it passes,
as in a synthesized session; ``completed`` events' token usage is counted.

An upstream that closes or fails ends the client's session with an
``error`` event and a close of the same code; a client that leaves closes
the upstream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from ..errors import InvalidRequestError, ProxyError
from ..governance.credentials import Caller
from ..router import Route
from .metering import CLOSE_POLICY, SessionMeter, spent
from .protocol import encode, error_event, proxy_error_event, restarting_event
from .session import CLOSE_RESTARTING, SessionServices
from .session_config import BETA_FORMATS

log = logging.getLogger(__name__)

#: Bytes per second of each input format, as appended (base64 decoded).
_BYTES_PER_S = {"audio/pcm": 48_000, "audio/pcmu": 8_000, "audio/pcma": 8_000}
#: A close the upstream gave no code for is reported as the server's failure.
_CLOSE_FAILED = 1011
_UPDATES = ("session.update", "transcription_session.update")
_COMPLETED = "input_audio_transcription.completed"


class RelaySession:
    """One client's session, relayed to the upstream's own."""

    def __init__(
        self,
        client: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        services: SessionServices,
        *,
        caller: Caller,
        meter: SessionMeter,
        route: Route,
        azure_deployment: bool = False,
    ) -> None:
        self._client = client
        self._azure_deployment = azure_deployment
        self._upstream = upstream
        self._services = services
        self._caller = caller
        self._meter = meter
        self._route = route
        self._bytes_per_s = _BYTES_PER_S["audio/pcm"]
        metrics = services.metrics
        self._frames_up = metrics.realtime_relay_frames.labels(direction="upstream")
        self._frames_down = metrics.realtime_relay_frames.labels(direction="client")
        self._bytes_up = metrics.realtime_relay_bytes.labels(direction="upstream")
        self._bytes_down = metrics.realtime_relay_bytes.labels(direction="client")

    async def run(self) -> None:
        """Relay until either side ends the session."""
        metrics = self._services.metrics
        metrics.realtime_sessions.labels(kind="relayed").inc()
        up = asyncio.ensure_future(self._from_client())
        down = asyncio.ensure_future(self._from_upstream())
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            metrics.realtime_sessions.labels(kind="relayed").dec()
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._upstream.close()

    async def aclose(self) -> None:
        """Close the upstream's session (the client's is its handler's)."""
        with contextlib.suppress(Exception):
            await self._upstream.close()

    async def drain(self, deadline_s: float) -> None:
        """The server is stopping: tell the client to reconnect, and at the deadline close
        both sides (1012)."""
        await self._send(restarting_event(deadline_s))
        await asyncio.sleep(deadline_s)
        with contextlib.suppress(Exception):
            await self._client.close(code=CLOSE_RESTARTING, message=b"server restarting")
        with contextlib.suppress(Exception):
            await self._upstream.close()

    async def _from_client(self) -> None:
        """The client's frames to the upstream; the client leaving closes the upstream."""
        async for message in self._client:
            if message.type == WSMsgType.TEXT:
                text = await self._inspect(message.data)
                if text is None:
                    continue
                await self._upstream.send_str(text)
                self._bytes_up.inc(len(text))
            elif message.type == WSMsgType.BINARY:
                await self._upstream.send_bytes(message.data)
                self._bytes_up.inc(len(message.data))
            else:
                continue
            self._frames_up.inc()
            if self._client.closed:
                return

    async def _from_upstream(self) -> None:
        """The upstream's frames to the client; the upstream ending ends the session."""
        upstream = self._upstream
        async for message in upstream:
            if message.type == WSMsgType.TEXT:
                data: str = message.data
                if _COMPLETED in data[:200]:
                    self._count_usage(data)
                await self._client.send_str(data)
                self._bytes_down.inc(len(data))
            elif message.type == WSMsgType.BINARY:
                await self._client.send_bytes(message.data)
                self._bytes_down.inc(len(message.data))
            else:
                continue
            self._frames_down.inc()
        if self._client.closed:
            return
        code = upstream.close_code
        reported = code if code is not None and code not in (1005, 1006) else _CLOSE_FAILED
        await self._send(
            error_event(
                f"provider {self._route.provider.name} ended the session "
                f"(close {code if code is not None else 'without a code'})",
                error_type="server_error",
                code="upstream_closed",
            )
        )
        await self._client.close(code=reported, message=b"the provider ended the session")

    async def _inspect(self, text: str) -> str | None:
        """The client's event as it goes upstream: metered, its model rewritten and pinned;
        None when it is refused (the client has been told why)."""
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text  # the upstream says what is wrong with it
        if not isinstance(event, dict):
            return text
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            audio = event.get("audio")
            if isinstance(audio, str):
                seconds = _decoded_length(audio) / self._bytes_per_s
                if not await self._metered(seconds, event.get("event_id")):
                    return None
            return text
        if kind not in _UPDATES:
            return text
        session = event.get("session")
        if not isinstance(session, dict):
            return text
        self._note_format(session)
        transcription = _transcription_of(session)
        if transcription is None or not isinstance(transcription.get("model"), str):
            return text
        try:
            deployment = self._pinned(transcription["model"])
        except ProxyError as exc:
            await self._send(proxy_error_event(exc, event.get("event_id")))
            return None
        transcription["model"] = deployment
        return orjson.dumps(event).decode()

    def _pinned(self, model: str) -> str:
        """The deployment ``model`` is sent upstream as; refused unless the session's
        provider serves it and the caller may use it."""
        router = self._services.router
        route = router.azure_deployment(model) if self._azure_deployment else router.resolve(model)
        if route.provider is not self._route.provider:
            raise InvalidRequestError(
                f"a relayed session stays on provider {self._route.provider.name}: "
                f"model {model} is served by {route.provider.name}",
                code="model_not_on_this_session",
                param="session.audio.input.transcription.model",
            )
        self._services.governor.check_routes(self._caller, [route])
        return route.provider.deployment_of(route.model)

    def _note_format(self, session: dict[str, Any]) -> None:
        """The input format the appends are in, for their seconds."""
        audio = session.get("audio")
        fmt: object = None
        if isinstance(audio, dict) and isinstance(audio.get("input"), dict):
            given = audio["input"].get("format")
            fmt = given.get("type") if isinstance(given, dict) else None
        elif isinstance(session.get("input_audio_format"), str):
            fmt = BETA_FORMATS.get(session["input_audio_format"])
        if isinstance(fmt, str) and fmt in _BYTES_PER_S:
            self._bytes_per_s = _BYTES_PER_S[fmt]

    async def _metered(self, seconds: float, caused_by: object) -> bool:
        """Count an append's audio; False when a spent limit has ended the session."""
        self._services.metrics.realtime_audio_seconds.inc(seconds)
        try:
            await self._meter.add(seconds)
        except ProxyError as exc:
            await self._send(
                proxy_error_event(exc, caused_by if isinstance(caused_by, str) else None)
            )
            await self._client.close(code=CLOSE_POLICY, message=spent(exc).encode())
            await self._upstream.close()
            return False
        return True

    def _count_usage(self, data: str) -> None:
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
            usage = orjson.loads(data).get("usage") or {}
            if usage.get("type") == "tokens":
                tokens = self._services.metrics.realtime_tokens
                tokens.labels(kind="input").inc(float(usage.get("input_tokens", 0)))
                tokens.labels(kind="output").inc(float(usage.get("output_tokens", 0)))
            self._services.metrics.realtime_turns.labels(outcome="completed").inc()

    async def _send(self, event: dict[str, Any]) -> None:
        if not self._client.closed:
            with contextlib.suppress(ConnectionError):
                await self._client.send_str(encode(event))


def _transcription_of(session: dict[str, Any]) -> dict[str, Any] | None:
    """The ``transcription`` object of a GA or beta session update, if it has one."""
    audio = session.get("audio")
    if isinstance(audio, dict):
        inputs = audio.get("input")
        if isinstance(inputs, dict) and isinstance(inputs.get("transcription"), dict):
            found: dict[str, Any] = inputs["transcription"]
            return found
    beta = session.get("input_audio_transcription")
    return beta if isinstance(beta, dict) else None


def _decoded_length(encoded: str) -> int:
    """How many bytes a base64 string decodes to, without decoding it."""
    size = len(encoded) * 3 // 4
    return size - encoded[-2:].count("=") if encoded else 0
