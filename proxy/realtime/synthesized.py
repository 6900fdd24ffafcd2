"""A realtime session synthesized by the proxy, over any provider and the embedded model.

The client appends audio; the proxy finds the turns in it (``server_vad``)
or takes the client's commits, cuts a turn at 30 s at its quietest point
(:mod:`.segmenter`), and transcribes each committed turn (:mod:`.transcriber`),
several at once. Each turn's events reach the client in the order the turns
began, whatever order their transcriptions finish in (:mod:`.reporter`).

The audio is metered as it is appended: the session reserves audio seconds
ahead, a block at a time, and ends with an ``error`` event and close 1008
when a limit or budget is spent. Memory holds one turn in progress (at
most 30 s) and at most ``max_pending_turns`` committed turns waiting for
their transcripts; past that, appends are refused with an ``error``.

A session also ends of itself (:mod:`.lifetime`): when the client secret it
was opened with expires (close 1008), and when its client has sent nothing
for ``idle_timeout_s`` (close 1000).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence

from ..errors import ProxyError
from ..governance.credentials import Caller
from .client_events import ClientEventError, read_client_event
from .client_table import ClientEventTable, Routing
from .lifetime import Lifetime
from .live_seat import SessionSeat
from .protocol import (
    CLOSE_POLICY,
    CLOSE_RESTARTING,
    Dialect,
    client_error_event,
    internal_error,
    proxy_error_event,
    restarting_error,
    session_created,
    unknown_event_error,
)
from .reporter import TurnReporter
from .segmenter import TurnSegmenter
from .services import SessionServices
from .session import SessionKind, key_id_of
from .session_config import SessionConfig
from .session_meter import SessionMeter, spent
from .speech_score import speech_score
from .transcriber import TurnTranscriber
from .turn_request import TurnRequest
from .turn_taking import TurnTaking
from .websocket import ClientSocket

log = logging.getLogger(__name__)

#: At most this long for the last turns' events at a drain's deadline: aiohttp's own
#: shutdown deadline comes 2 s after it (``DRAIN_GRACE_S``).
_DRAIN_FLUSH_S = 1.5


class SynthesizedSession:
    """One client's session whose turns the proxy finds and transcribes itself."""

    kind: SessionKind = "synthesized"

    def __init__(
        self,
        socket: ClientSocket,
        services: SessionServices,
        *,
        caller: Caller,
        meter: SessionMeter,
        request: TurnRequest,
        config: SessionConfig | None = None,
        fallbacks: Sequence[str] = (),
        azure_deployment: bool = False,
        seat: SessionSeat | None = None,
        dialect: Dialect = "ga",
        expires_at: float | None = None,
    ) -> None:
        self._socket = socket
        self._services = services
        #: The virtual key the session acts for, if it has one.
        self.key_id = key_id_of(caller)
        self._dialect: Dialect = dialect
        #: Its seat on a model that transcribes it live (the endpoint took it).
        self._seat = seat or SessionSeat()
        settings = services.settings
        config = (config or SessionConfig()).transcribing(request.transcription)
        self._reporter = TurnReporter(socket.send)
        self._transcriber = TurnTranscriber(
            services.dispatcher, services.pipeline, services.metrics, settings, request
        )
        score = functools.partial(speech_score, settings.vad != "loudness")
        self._turns = TurnTaking(
            TurnSegmenter(config.turn_detection, score, wants_pauses=self._transcriber.live),
            self._reporter,
            self._transcriber,
            socket.send,
        )
        self._table = ClientEventTable(
            services,
            config,
            routing=Routing(caller, tuple(fallbacks), azure_deployment, self._seat),
            meter=meter,
            turns=self._turns,
            transcriber=self._transcriber,
            send=socket.send,
            spent=self._spent,
        )
        self._closing = False
        #: Turns start and end one at a time: the client's events and a drain take turns.
        self._turn_lock = asyncio.Lock()
        self._ended = asyncio.Event()
        self._reporting: asyncio.Task[None] | None = None
        self._lifetime = Lifetime(settings.idle_timeout_s, expires_at)

    @property
    def reading(self) -> bool:
        """Whether the client's events are still taken."""
        return not self._closing

    # --- the session's life ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve the session until the client leaves or it is ended."""
        sessions = self._services.metrics.realtime_sessions.labels(kind=self.kind)
        sessions.inc()
        reporting = self._reporting = asyncio.ensure_future(self._reporter.run())
        self._lifetime.heard()
        watch = asyncio.ensure_future(self._watch())
        try:
            config = self._table.config
            await self._socket.send(
                session_created(config.as_session(self._dialect), self._dialect)
            )
            await self._socket.read(self)
        finally:
            sessions.dec()
            await self._end(reporting, watch)

    async def _watch(self) -> None:
        """End the session when its secret expires or its client has gone quiet."""
        ending = await self._lifetime.ended()
        await self._socket.send(ending.event)
        await self._close(ending.close_code, ending.reason)

    async def _end(self, reporting: asyncio.Task[None], watch: asyncio.Task[None]) -> None:
        """Stop everything the session started: live passes, transcriptions, the reporter."""
        self._closing = True
        self._ended.set()
        await self._transcriber.aclose()
        for task in (reporting, watch):
            task.cancel()
        await asyncio.gather(reporting, watch, return_exceptions=True)

    async def aclose(self) -> None:
        """Give back the session's seat on a live model; its tasks end with :meth:`run`."""
        self._seat.fit(())

    async def _close(self, code: int, reason: str) -> None:
        """End the session with a close frame."""
        self._closing = True
        await self._socket.close(code, reason)

    async def _spent(self, exc: ProxyError, caused_by: str | None) -> None:
        """A limit or budget is spent: the client is told, and the session ends."""
        await self._socket.send(proxy_error_event(exc, caused_by))
        await self._close(CLOSE_POLICY, spent(exc))

    async def revoke(self, refusal: ProxyError) -> None:
        """The session's key may no longer be used: the client is told, and the session
        ends (1008), as when a limit is spent."""
        await self._spent(refusal, None)

    async def drain(self, deadline_s: float) -> None:
        """The server is stopping: tell the client to reconnect; at the deadline, commit
        the turn in progress, send what is pending, and close 1012."""
        await self._socket.send(restarting_error(deadline_s))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await self._ended.wait()
        if self._ended.is_set():
            return  # the client went (to reconnect, as it was told)
        async with self._turn_lock:
            self._closing = True  # no more appends: what is said from now on is not taken
            await self._turns.flush()
        self._reporter.finish()  # the reporter ends once it has sent every turn
        flush_s = min(self._services.settings.drain_pending_s, _DRAIN_FLUSH_S)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_s):
                await self._transcriber.caught_up()
                if self._reporting is not None:
                    await asyncio.shield(self._reporting)
        await self._close(CLOSE_RESTARTING, "server restarting")

    # --- client events ----------------------------------------------------------------------

    def heard(self) -> None:
        """The client sent a frame: its idle time starts again."""
        self._lifetime.heard()

    async def on_text(self, text: str) -> None:
        """One client event: handled, or answered with an ``error`` (the session goes on)."""
        caused_by: str | None = None
        try:
            event = read_client_event(text)
            caused_by = event.event_id
            handler = self._table.handler(event.type)
            if handler is None:
                await self._socket.send(unknown_event_error(event.type, caused_by))
                return
            # One event at a time, and none once a drain has taken the last turn.
            async with self._turn_lock:
                if not self._closing:
                    await handler(event)
        except ClientEventError as exc:
            await self._socket.send(client_error_event(exc, caused_by))
        except ProxyError as exc:
            await self._socket.send(proxy_error_event(exc, caused_by))
        except Exception:
            # A failure of the proxy's own: the client is told, and the session goes on.
            log.exception("a realtime client event failed")
            await self._socket.send(internal_error(caused_by))
