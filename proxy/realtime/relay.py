"""A realtime session relayed to a provider's own Realtime API (OpenAI's, Azure's).

Events go both ways as they come. Each client event goes upstream as the
proxy parsed and checked it, serialized again (never the client's own text:
the upstream's JSON parser might keep another of two duplicate keys than
the one checked); text that is no JSON object, and binary frames, are
refused with an ``error``. Every model an update names, wherever it names
it, is rewritten to the deployment that serves it, and pinned: a model the
caller's key may not use, or one another provider serves, is refused with
an ``error`` and the update never forwarded. The client's credential never
goes upstream (the session was opened with the provider's key), and the
upstream's frames reach the client with our provider keys blotted out.

Appended audio is metered as it passes, at the input format the upstream
says it accepted (its ``session.updated``), never one the client merely
asked for; while an update that changes the format awaits the upstream's
answer, at whichever format counts more seconds. ``completed`` events'
token usage is counted.

An upstream that closes or fails ends the client's session with an
``error`` event and a close of the same code; a client that leaves closes
the upstream at once. The session ends of itself as a synthesized one does
(:class:`~.session.Lifetime`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from ..errors import InvalidRequestError, ProxyError
from ..governance.credentials import Caller
from ..router import Route
from .metering import CLOSE_POLICY, SessionMeter, spent
from .protocol import (
    ClientEventError,
    binary_frame_event,
    client_error_event,
    encode,
    error_event,
    event_id_of,
    proxy_error_event,
    read_event_object,
    restarting_event,
)
from .session import CLOSE_RESTARTING, Lifetime, SessionServices
from .session_config import BETA_FORMATS

log = logging.getLogger(__name__)

#: Bytes per second of each input format, as appended (base64 decoded).
_BYTES_PER_S = {"audio/pcm": 48_000, "audio/pcmu": 8_000, "audio/pcma": 8_000}
#: The bytes per second of an upstream's format the proxy cannot measure: the fewest
#: of any format, so its audio is never counted short.
_LOWEST_BYTES_PER_S = min(_BYTES_PER_S.values())
#: A close the upstream gave no code for is reported as the server's failure.
_CLOSE_FAILED = 1011
_UPDATES = ("session.update", "transcription_session.update")
#: The upstream's events that say its session's configuration: the answers to updates,
#: and the first one.
_ANSWERS = ("session.updated", "transcription_session.updated")
_CREATED = ("session.created", "transcription_session.created")
_COMPLETED = "input_audio_transcription.completed"
#: Where each dialect puts an update's transcription settings.
_GA_TRANSCRIPTION = "session.audio.input.transcription"
_BETA_TRANSCRIPTION = "session.input_audio_transcription"


class InputRate:
    """The bytes per second appended audio is metered at.

    The upstream's word decides it: the format of its ``session.created``, then
    of each ``session.updated``. An update forwarded but not answered yet may
    change the format at any moment, so until its answer the rate is the lower
    of the two (more seconds for the same bytes). The upstream answers
    accepted updates once each and in order, so each answer settles the oldest
    update waiting; one it refuses waits until the next answer, and meanwhile
    its format can only make the count higher, never lower.
    """

    def __init__(self) -> None:
        self._confirmed = _BYTES_PER_S["audio/pcm"]
        #: Updates forwarded and not answered, oldest first: the rate each asks for.
        self._waiting: deque[int | None] = deque()

    @property
    def bytes_per_s(self) -> int:
        """The rate for audio appended now."""
        return min([self._confirmed, *(r for r in self._waiting if r is not None)])

    def requested(self, bytes_per_s: int | None) -> None:
        """An update went upstream asking for this rate (None: the format unchanged)."""
        self._waiting.append(bytes_per_s)

    def confirmed(self, bytes_per_s: int | None, *, answers_update: bool) -> None:
        """The upstream said its format (None: it named none), answering an update or not."""
        if answers_update and self._waiting:
            self._waiting.popleft()
        if bytes_per_s is not None:
            self._confirmed = bytes_per_s


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
        expires_at: float | None = None,
    ) -> None:
        self._client = client
        self._azure_deployment = azure_deployment
        self._upstream = upstream
        self._services = services
        self._caller = caller
        self._meter = meter
        self._route = route
        self._rate = InputRate()
        self._lifetime = Lifetime(services.settings.idle_timeout_s, expires_at)
        metrics = services.metrics
        self._frames_up = metrics.realtime_relay_frames.labels(direction="upstream")
        self._frames_down = metrics.realtime_relay_frames.labels(direction="client")
        self._bytes_up = metrics.realtime_relay_bytes.labels(direction="upstream")
        self._bytes_down = metrics.realtime_relay_bytes.labels(direction="client")

    async def run(self) -> None:
        """Relay until either side ends the session."""
        metrics = self._services.metrics
        metrics.realtime_sessions.labels(kind="relayed").inc()
        self._lifetime.heard()
        tasks = (
            asyncio.ensure_future(self._from_client()),
            asyncio.ensure_future(self._from_upstream()),
            asyncio.ensure_future(self._watch()),
        )
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            metrics.realtime_sessions.labels(kind="relayed").dec()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
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

    async def _watch(self) -> None:
        """End the session when its secret expires or its client has gone quiet."""
        ending = await self._lifetime.ended()
        await self._send(ending.event)
        with contextlib.suppress(Exception):
            await self._client.close(code=ending.close_code, message=ending.reason.encode())

    async def _from_client(self) -> None:
        """The client's events to the upstream; the client leaving closes the upstream."""
        async for message in self._client:
            if message.type == WSMsgType.TEXT:
                self._lifetime.heard()
                text = await self._inspect(message.data)
                if text is None:
                    continue
                await self._upstream.send_str(text)
                self._bytes_up.inc(len(text))
                self._frames_up.inc()
            elif message.type == WSMsgType.BINARY:
                self._lifetime.heard()
                await self._send(binary_frame_event())
            if self._client.closed:
                return

    async def _from_upstream(self) -> None:
        """The upstream's frames to the client, our keys blotted out of them; the upstream
        ending ends the session."""
        upstream = self._upstream
        redactor = self._services.redactor
        async for message in upstream:
            if message.type == WSMsgType.TEXT:
                data = redactor.text(message.data)
                self._observe(data)
                await self._client.send_str(data)
                self._bytes_down.inc(len(data))
            elif message.type == WSMsgType.BINARY:
                data_bytes = redactor.bytes(message.data)
                await self._client.send_bytes(data_bytes)
                self._bytes_down.inc(len(data_bytes))
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
        """The client's event as it goes upstream: parsed, checked, metered, its models
        rewritten and pinned, and serialized again; None when it is refused (the client
        has been told why)."""
        event: dict[str, Any] | None = None
        try:
            event = read_event_object(text)
            kind = event.get("type")
            if kind == "input_audio_buffer.append":
                if not await self._metered_append(event):
                    return None
            elif kind in _UPDATES:
                self._rate.requested(self._checked_update(event))
        except ClientEventError as exc:
            await self._send(client_error_event(exc, event_id_of(event) if event else None))
            return None
        except ProxyError as exc:
            await self._send(proxy_error_event(exc, event_id_of(event) if event else None))
            return None
        return orjson.dumps(event).decode()

    async def _metered_append(self, event: dict[str, Any]) -> bool:
        """Count an append's audio at the rate the upstream takes it; False when a spent
        limit has ended the session."""
        audio = event.get("audio")
        if not isinstance(audio, str):
            return True  # no audio to count: the upstream says what is wrong with it
        seconds = _decoded_length(audio) / self._rate.bytes_per_s
        return await self._metered(seconds, event_id_of(event))

    def _checked_update(self, event: dict[str, Any]) -> int | None:
        """Check a session update and rewrite the models it names (in ``event``); the
        bytes per second of the format it asks for (None: it names none). Raises what
        the client is told when the update is refused."""
        session = event.get("session")
        if not isinstance(session, dict):
            return None  # nothing to check: the upstream says what is wrong with it
        if event.get("type") == "session.update":  # the beta update has no type
            _check_session_type(session)
        _check_transcription_shape(session)
        for container, param in _models_named(session):
            model = container["model"]
            if not isinstance(model, str):
                raise ClientEventError("model must be a string", param=param)
            container["model"] = self._pinned(model, param)
        return _requested_rate(session)

    def _pinned(self, model: str, param: str) -> str:
        """The deployment ``model`` is sent upstream as; refused unless the session's
        provider serves it and the caller may use it."""
        router = self._services.router
        route = router.azure_deployment(model) if self._azure_deployment else router.resolve(model)
        if route.provider is not self._route.provider:
            raise InvalidRequestError(
                f"a relayed session stays on provider {self._route.provider.name}: "
                f"model {model} is served by {route.provider.name}",
                code="model_not_on_this_session",
                param=param,
            )
        self._services.governor.check_routes(self._caller, [route])
        return route.provider.deployment_of(route.model)

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
                rate = _confirmed_rate(session) if isinstance(session, dict) else None
                self._rate.confirmed(rate, answers_update=kind in _ANSWERS)
            elif isinstance(kind, str) and kind.endswith(_COMPLETED):
                self._count_usage(event)

    async def _metered(self, seconds: float, caused_by: str | None) -> bool:
        """Count an append's audio; False when a spent limit has ended the session."""
        self._services.metrics.realtime_audio_seconds.inc(seconds)
        try:
            await self._meter.add(seconds)
        except ProxyError as exc:
            await self._send(proxy_error_event(exc, caused_by))
            await self._client.close(code=CLOSE_POLICY, message=spent(exc).encode())
            await self._upstream.close()
            return False
        return True

    def _count_usage(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            usage = event.get("usage") or {}
            if usage.get("type") == "tokens":
                tokens = self._services.metrics.realtime_tokens
                tokens.labels(kind="input").inc(float(usage.get("input_tokens", 0)))
                tokens.labels(kind="output").inc(float(usage.get("output_tokens", 0)))
            self._services.metrics.realtime_turns.labels(outcome="completed").inc()

    async def _send(self, event: dict[str, Any]) -> None:
        if not self._client.closed:
            with contextlib.suppress(ConnectionError):
                await self._client.send_str(encode(event))


def _check_session_type(session: dict[str, Any]) -> None:
    """Refuse turning the session into another kind than transcription: a conversation
    would answer in tokens and audio the proxy does not meter."""
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise ClientEventError(
            f"this endpoint serves transcription sessions only, not {kind!r}: "
            'send session.type "transcription"',
            param="session.type",
        )


def _check_transcription_shape(session: dict[str, Any]) -> None:
    """Refuse transcription settings given in both dialects' shapes at once: which of
    them the upstream would take is its own affair, and the one checked must be the
    one used."""
    audio = session.get("audio")
    inputs = audio.get("input") if isinstance(audio, dict) else None
    ga = isinstance(inputs, dict) and inputs.get("transcription") is not None
    if ga and session.get("input_audio_transcription") is not None:
        raise ClientEventError(
            f"transcription settings are given twice, as {_GA_TRANSCRIPTION} and as "
            f"{_BETA_TRANSCRIPTION}: send one of them",
            param=_BETA_TRANSCRIPTION,
        )


def _models_named(session: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Every object in ``session`` with a ``model`` field, however deep, and the field's
    path: any model an update names is one the upstream may use. (Walked with a stack
    of its own: JSON nests deeper than Python recurses.)"""
    found: list[tuple[dict[str, Any], str]] = []
    containers: list[tuple[object, str]] = [(session, "session")]
    while containers:
        value, where = containers.pop()
        if isinstance(value, dict):
            if "model" in value:
                found.append((value, f"{where}.model"))
            containers.extend(
                (item, f"{where}.{key}")
                for key, item in value.items()
                if isinstance(item, dict | list)
            )
        elif isinstance(value, list):
            containers.extend(
                (item, f"{where}[{index}]")
                for index, item in enumerate(value)
                if isinstance(item, dict | list)
            )
    return found


def _formats_named(session: dict[str, Any]) -> Iterator[tuple[int | None, str]]:
    """The bytes per second of each input format a session object names (GA's
    ``audio.input.format``, beta's ``input_audio_format``), None for a format the
    proxy cannot measure, each with its field's path."""
    audio = session.get("audio")
    inputs = audio.get("input") if isinstance(audio, dict) else None
    if isinstance(inputs, dict) and inputs.get("format") is not None:
        yield _ga_rate(inputs["format"]), "session.audio.input.format"
    beta = session.get("input_audio_format")
    if beta is not None:
        named = BETA_FORMATS.get(beta) if isinstance(beta, str) else None
        yield (_BYTES_PER_S[named] if named else None), "session.input_audio_format"


def _ga_rate(value: object) -> int | None:
    """The bytes per second of a GA format object, None when it is not one measured."""
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind != "audio/pcm":
        return _BYTES_PER_S.get(kind) if isinstance(kind, str) else None
    rate = value.get("rate", 24_000)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        return None
    return max(1, int(rate * 2))


def _requested_rate(session: dict[str, Any]) -> int | None:
    """The bytes per second of the format an update asks for (None: it names none);
    a format whose audio the proxy cannot count is refused."""
    rates: list[int] = []
    for rate, param in _formats_named(session):
        if rate is None:
            raise ClientEventError(
                "a relayed session takes audio/pcm (24 kHz), audio/pcmu or audio/pcma",
                param=param,
            )
        rates.append(rate)
    return min(rates, default=None)


def _confirmed_rate(session: dict[str, Any]) -> int | None:
    """The bytes per second of the format the upstream says it takes (None: it names
    none); one the proxy cannot measure counts at the fewest bytes a second."""
    rates = [_LOWEST_BYTES_PER_S if r is None else r for r, _ in _formats_named(session)]
    return min(rates, default=None)


def _decoded_length(encoded: str) -> int:
    """How many bytes a base64 string decodes to, without decoding it."""
    size = len(encoded) * 3 // 4
    return size - encoded[-2:].count("=") if encoded else 0
