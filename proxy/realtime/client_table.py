"""A synthesized session's client events, each to its handler: ``session.update`` (either
dialect), and the audio buffer's ``append``, ``commit`` and ``clear``.

An update that names another model reroutes the session's turns from then
on (the caller's permissions checked, the meter charging the new route's
rates); appended audio is metered before it is taken, and refused while
``max_pending_turns`` committed turns wait for their transcripts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from ..errors import ProxyError
from ..governance.credentials import Caller
from .audio_in import InputAudio
from .client_events import ClientEvent
from .live_seat import SessionSeat
from .protocol import (
    APPEND,
    BETA_SESSION_UPDATE,
    CLEAR,
    COMMIT,
    SESSION_UPDATE,
    Dialect,
    ServerEvent,
    buffer_full_error,
    session_updated,
)
from .services import SessionServices
from .session_config import SessionConfig
from .session_meter import SessionMeter
from .transcriber import TurnTranscriber
from .turn_taking import TurnTaking

Handler = Callable[[ClientEvent], Awaitable[None]]


@dataclass(frozen=True)
class Routing:
    """How a session's model is routed when an update names another."""

    caller: Caller
    fallbacks: Sequence[str] = ()
    #: The session's model names an Azure deployment (Azure's URL form).
    azure_deployment: bool = False
    #: Its seat on a model that transcribes it live, moving with it.
    seat: SessionSeat = field(default_factory=SessionSeat)


class ClientEventTable:
    """One synthesized session's handlers of its client's events."""

    def __init__(
        self,
        services: SessionServices,
        config: SessionConfig,
        *,
        routing: Routing,
        meter: SessionMeter,
        turns: TurnTaking,
        transcriber: TurnTranscriber,
        send: Callable[[ServerEvent], Awaitable[None]],
        spent: Callable[[ProxyError, str | None], Awaitable[None]],
    ) -> None:
        self._services = services
        #: The session's effective configuration.
        self.config = config
        self._routing = routing
        self._meter = meter
        self._turns = turns
        self._transcriber = transcriber
        self._send = send
        #: Ends the session when its limits or budgets are spent.
        self._spent = spent
        self._input = InputAudio(config.format)
        self._handlers: dict[str, Handler] = {
            SESSION_UPDATE: lambda event: self._update(event, "ga"),
            BETA_SESSION_UPDATE: lambda event: self._update(event, "beta"),
            APPEND: self._append,
            COMMIT: self._commit,
            CLEAR: self._clear,
        }

    def handler(self, event_type: str) -> Handler | None:
        """The handler of ``event_type``; None when a transcription session has no such
        client event."""
        return self._handlers.get(event_type)

    async def _update(self, event: ClientEvent, dialect: Dialect) -> None:
        config = self.config.updated(event.body.get("session"), dialect)
        request = self._transcriber.request
        routes = request.routes
        if config.transcription.model != self.config.transcription.model:
            routing = self._routing
            routes = self._services.router.plan(
                config.transcription.model,
                routing.fallbacks,
                azure_deployment=routing.azure_deployment,
            )
            seat = routing.seat
            seat.need(routes)
            try:
                await self._meter.reroute(routes)
            except ProxyError:
                seat.fit(request.routes)
                raise
            seat.fit(routes)
        self._transcriber.request = replace(
            request, routes=routes, transcription=config.transcription
        )
        self._input.switch(config.format)
        # A turn in progress goes on; with detection off, the client commits it.
        self._turns.detect(config.turn_detection)
        self.config = config
        await self._send(session_updated(config.as_session(dialect), dialect))

    async def _append(self, event: ClientEvent) -> None:
        pending = self._transcriber.pending
        if pending >= self._services.settings.max_pending_turns:
            await self._send(buffer_full_error(pending, event.event_id))
            return
        before, size_before = self._input.seconds, self._input.size
        pcm = self._input.decode(event.body.get("audio"))
        appended = self._input.seconds - before
        refused = await self._meter.add(appended, self._input.size - size_before)
        if refused is not None:
            await self._spent(refused, event.event_id)
            return
        self._services.metrics.realtime_audio_seconds.inc(appended)
        await self._turns.append(pcm)

    async def _commit(self, event: ClientEvent) -> None:
        await self._turns.commit(event.event_id)

    async def _clear(self, event: ClientEvent) -> None:
        await self._turns.clear()
