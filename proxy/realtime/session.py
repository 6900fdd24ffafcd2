"""One realtime transcription session over a WebSocket, synthesized by the proxy.

The client appends audio; the proxy finds the turns in it (``server_vad``,
:mod:`.vad`) or takes the client's commits, cuts a turn at 30 s at its
quietest point, and transcribes each committed turn as an ordinary request
(:mod:`.transcriber`), several at once. Each turn's events reach the client
in the order the turns began, whatever order their transcriptions finish
in. With the embedded model, a turn still being spoken gets partial
captions (:mod:`.agreement`).

The audio is metered as it is appended: the session reserves audio seconds
ahead, a block at a time, and ends with an ``error`` event and close 1008
when a limit or budget is spent. Memory holds one turn in progress (at
most 30 s) and at most ``max_pending_turns`` committed turns waiting for
their transcripts; past that, appends are refused with an ``error``.

A session also ends of itself (:class:`Lifetime`, for relayed sessions too):
when the client secret it was opened with expires (close 1008), and when
its client has sent nothing for ``idle_timeout_s`` (close 1000).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import WSMsgType, web

from ..audio.decoder import SAMPLE_BYTES, SAMPLE_RATE
from ..config import RealtimeSettings
from ..dispatch import Dispatcher
from ..errors import ProxyError
from ..governance.credentials import Caller
from ..governance.governor import Governor
from ..metrics import Metrics
from ..models import TranscriptDone
from ..providers.local.passes import DecodeOptions
from ..providers.redaction import Redactor
from ..router import Router
from .audio_in import InputAudio
from .metering import CLOSE_POLICY, SessionMeter, spent
from .protocol import (
    ClientEvent,
    ClientEventError,
    binary_frame_event,
    client_error_event,
    encode,
    error_event,
    expired_event,
    idle_event,
    new_id,
    proxy_error_event,
    read_client_event,
    restarting_event,
    server_event,
)
from .session_config import Dialect, SessionConfig
from .transcriber import TurnRoute, text_of, transcribe_turn
from .turn_passes import TurnPasses
from .turns import MAX_TURN_SAMPLES, Turn, TurnAudio
from .vad import SilenceBegan, SpeechStarted, TurnDetector, speech_score

log = logging.getLogger(__name__)

#: The shortest audio a client's commit takes, as OpenAI's (100 ms).
MIN_COMMIT_SAMPLES = SAMPLE_RATE // 10
#: Close code: the server is restarting.
CLOSE_RESTARTING = 1012
#: Close code: a session idle for too long ends normally.
CLOSE_NORMAL = 1000
#: At most this long for the last turns' events at a drain's deadline: aiohttp's own
#: shutdown deadline comes 2 s after it (``DRAIN_GRACE_S``).
_DRAIN_FLUSH_S = 1.5
_TRANSCRIPTION = "conversation.item.input_audio_transcription"


@dataclass(frozen=True)
class SessionServices:
    """What a session uses of the application."""

    router: Router
    dispatcher: Dispatcher
    governor: Governor
    metrics: Metrics
    settings: RealtimeSettings
    #: Blots our provider keys out of what an upstream sends the client.
    redactor: Redactor


@dataclass(frozen=True)
class Ending:
    """How a session that ends of itself ends: the ``error`` event, then the close."""

    event: dict[str, Any]
    close_code: int
    reason: str


class Lifetime:
    """When a session ends of itself: at the expiry of the client secret it was opened
    with (``expires_at``, the wall clock's seconds), or once its client has sent no
    event for ``idle_timeout_s``."""

    def __init__(self, idle_timeout_s: float, expires_at: float | None = None) -> None:
        self._idle_timeout_s = idle_timeout_s
        self._expires_at = expires_at
        self._last_heard = time.monotonic()

    def heard(self) -> None:
        """The client sent an event: its idle time starts again."""
        self._last_heard = time.monotonic()

    async def ended(self) -> Ending:
        """Wait until the session must end, and say how it ends."""
        while True:
            idle_left = self._last_heard + self._idle_timeout_s - time.monotonic()
            # A secret's expiry is a time on the wall clock (it may have been minted
            # by another replica): measured against it, not the monotonic clock.
            expiry_left = (
                self._expires_at - time.time() if self._expires_at is not None else math.inf
            )
            if expiry_left <= 0:
                return Ending(expired_event(), CLOSE_POLICY, "the client secret has expired")
            if idle_left <= 0:
                return Ending(idle_event(self._idle_timeout_s), CLOSE_NORMAL, "idle timeout")
            await asyncio.sleep(min(idle_left, expiry_left))


class RealtimeSession:
    """One client's session: its configuration, its audio, its turns."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        services: SessionServices,
        *,
        caller: Caller,
        meter: SessionMeter,
        route: TurnRoute,
        config: SessionConfig | None = None,
        fallbacks: Sequence[str] = (),
        azure_deployment: bool = False,
        dialect: Dialect = "ga",
        expires_at: float | None = None,
    ) -> None:
        self._ws = ws
        self._services = services
        self._settings = services.settings
        self._caller = caller
        self._meter = meter
        self._fallbacks = list(fallbacks)
        #: The session's model names an Azure deployment (Azure's URL form).
        self._azure_deployment = azure_deployment
        self._dialect: Dialect = dialect
        self._route = route
        self.config = replace(config or SessionConfig(), transcription=route.transcription)
        self._input = InputAudio(self.config.format)
        vad = self.config.turn_detection
        self._audio = TurnAudio(self._keep_before())
        self._detector = (
            TurnDetector(vad, speech_score(self._settings.vad != "loudness")) if vad else None
        )
        #: Turns in the order they began: the reporter sends their events in it.
        self._turns: asyncio.Queue[Turn | None] = asyncio.Queue()
        self._open: Turn | None = None
        self._last_item: str | None = None
        #: The embedded model's passes over the turn being spoken, when it serves the session.
        self._passes: TurnPasses | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Committed turns whose transcripts have not been made yet.
        self._pending = 0
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._closing = False
        #: Turns start and end one at a time: the client's events and a drain take turns.
        self._turn_lock = asyncio.Lock()
        self._ended = asyncio.Event()
        self._reporter: asyncio.Task[None] | None = None
        self._lifetime = Lifetime(self._settings.idle_timeout_s, expires_at)

    # --- the session's life ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve the session until the client leaves or it is ended."""
        metrics = self._services.metrics
        metrics.realtime_sessions.labels(kind="synthesized").inc()
        reporter = self._reporter = asyncio.ensure_future(self._report())
        self._lifetime.heard()
        watch = asyncio.ensure_future(self._watch())
        created = "session.created" if self._dialect == "ga" else "transcription_session.created"
        try:
            await self._send(server_event(created, session=self.config.as_session(self._dialect)))
            async for message in self._ws:
                if message.type == WSMsgType.TEXT:
                    self._lifetime.heard()
                    await self._on_text(message.data)
                elif message.type == WSMsgType.BINARY:
                    self._lifetime.heard()
                    await self._send(binary_frame_event())
                if self._closing:
                    break
        finally:
            metrics.realtime_sessions.labels(kind="synthesized").dec()
            await self._end(reporter, watch)

    async def _watch(self) -> None:
        """End the session when its secret expires or its client has gone quiet."""
        ending = await self._lifetime.ended()
        await self._send(ending.event)
        await self.close(ending.close_code, ending.reason)

    async def _end(self, reporter: asyncio.Task[None], watch: asyncio.Task[None]) -> None:
        """Stop everything the session started: partial passes, transcriptions, the reporter."""
        self._closing = True
        self._ended.set()
        if self._passes is not None:
            await self._passes.aclose()
        running = [*self._tasks, reporter, watch]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def aclose(self) -> None:
        """Nothing more to release: the session's tasks end with :meth:`run`."""

    async def close(self, code: int, message: str) -> None:
        """End the session with a close frame."""
        self._closing = True
        with contextlib.suppress(Exception):
            await self._ws.close(code=code, message=message.encode())

    async def drain(self, deadline_s: float) -> None:
        """The server is stopping: tell the client to reconnect; at the deadline, commit
        the turn in progress, send what is pending, and close 1012."""
        await self._send(restarting_event(deadline_s))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await self._ended.wait()
        if self._ended.is_set():
            return  # the client went (to reconnect, as it was told)
        async with self._turn_lock:
            self._closing = True  # no more appends: what is said from now on is not taken
            if self._open is not None and self._audio.turn_samples:
                await self._commit(None)
        self._turns.put_nowait(None)  # the reporter ends once it has sent every turn
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(self._settings.drain_pending_s, _DRAIN_FLUSH_S)):
                await self._caught_up.wait()
                if self._reporter is not None:
                    await asyncio.shield(self._reporter)
        await self.close(CLOSE_RESTARTING, "server restarting")

    # --- client events ----------------------------------------------------------------------

    async def _on_text(self, text: str) -> None:
        event: ClientEvent | None = None
        try:
            event = read_client_event(text)
            handler = self._handlers().get(event.type)
            if handler is None:
                raise ClientEventError(
                    f"{event.type!r} is not a client event of a transcription session",
                    code="unknown_event_type",
                    param="type",
                )
            # One event at a time, and none once a drain has taken the last turn.
            async with self._turn_lock:
                if not self._closing:
                    await handler(event)
        except _Spent:
            pass
        except ClientEventError as exc:
            await self._send(client_error_event(exc, event.event_id if event else None))
        except ProxyError as exc:
            await self._send(proxy_error_event(exc, event.event_id if event else None))
        except Exception:
            # A failure of the proxy's own: the client is told, and the session goes on.
            log.exception("a realtime client event failed")
            await self._send(
                error_event(
                    "the event could not be handled",
                    error_type="server_error",
                    code="internal_error",
                    caused_by=event.event_id if event else None,
                )
            )

    def _handlers(self) -> dict[str, Callable[[ClientEvent], Any]]:
        return {
            "session.update": lambda e: self._update(e, "ga"),
            "transcription_session.update": lambda e: self._update(e, "beta"),
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._client_commit,
            "input_audio_buffer.clear": self._clear,
        }

    async def _update(self, event: ClientEvent, dialect: Dialect) -> None:
        config = self.config.updated(event.body.get("session"), dialect)
        routes = self._route.routes
        if config.transcription.model != self.config.transcription.model:
            routes = self._services.router.plan(
                config.transcription.model,
                self._fallbacks,
                azure_deployment=self._azure_deployment,
            )
            self._services.governor.check_routes(self._caller, routes)
            await self._meter.reroute(self._caller, routes[0])
        self._route = replace(self._route, routes=routes, transcription=config.transcription)
        self._input.switch(config.format)
        if config.turn_detection != self.config.turn_detection:
            # A turn in progress goes on; with detection off, the client commits it.
            self._detector = (
                TurnDetector(
                    config.turn_detection,
                    speech_score(self._settings.vad != "loudness"),
                    position=self._audio.end,
                )
                if config.turn_detection is not None
                else None
            )
        self.config = config
        self._audio.keep_before = self._keep_before()
        kind = "session.updated" if dialect == "ga" else "transcription_session.updated"
        await self._send(server_event(kind, session=config.as_session(dialect)))

    async def _append(self, event: ClientEvent) -> None:
        if self._pending >= self._settings.max_pending_turns:
            raise ClientEventError(
                "audio is arriving faster than it can be transcribed: this append was "
                f"dropped ({self._pending} turns are waiting for their transcripts)",
                code="input_audio_buffer_full",
                param="audio",
            )
        before = self._input.seconds
        pcm = self._input.decode(event.body.get("audio"))
        appended = self._input.seconds - before
        await self._metered(appended, event.event_id)
        self._services.metrics.realtime_audio_seconds.inc(appended)
        if not pcm:
            return  # the resampler holds on to a few samples until more come
        self._audio.append(pcm)
        if self._detector is not None:
            for found in self._detector.feed(pcm):
                if isinstance(found, SpeechStarted):
                    if self._open is None:
                        await self._start_turn(found.sample, announce=True)
                elif isinstance(found, SilenceBegan):
                    if self._passes is not None:
                        self._passes.silence_began()
                elif self._open is not None:
                    await self._send(
                        server_event(
                            "input_audio_buffer.speech_stopped",
                            audio_end_ms=_ms(found.sample),
                            item_id=self._open.item_id,
                        )
                    )
                    await self._commit(found.sample, speech_end=found.speech_end)
        elif self._open is None:
            await self._start_turn(self._audio.end - len(pcm) // SAMPLE_BYTES, announce=False)
        # One append may hold more than a turn's longest: cut as often as it takes.
        while self._open is not None and self._audio.turn_samples >= MAX_TURN_SAMPLES:
            await self._cut_long_turn()
        self._audio.settle()

    async def _client_commit(self, event: ClientEvent) -> None:
        samples = self._audio.turn_samples
        if self._open is None or samples < MIN_COMMIT_SAMPLES:
            raise ClientEventError(
                "buffer too small: a commit needs at least 100 ms of audio, and the buffer "
                f"holds {samples * 1000 // SAMPLE_RATE} ms",
                code="input_audio_buffer_commit_empty",
            )
        if self._detector is not None:
            self._detector.reset()
        await self._commit(None)

    async def _clear(self, event: ClientEvent) -> None:
        if self._open is not None:
            if self._passes is not None:
                await self._passes.aclose()
                self._passes = None
            self._open.drop()
            self._open = None
        self._audio.clear()
        if self._detector is not None:
            self._detector.reset()
        await self._send(server_event("input_audio_buffer.cleared"))

    # --- turns ---------------------------------------------------------------------------

    async def _start_turn(self, sample: int, *, announce: bool) -> None:
        turn = Turn(new_id("item"), sample)
        self._audio.start(sample)
        self._open = turn
        self._turns.put_nowait(turn)
        if announce:
            await self._send(
                server_event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=_ms(
                        self._audio.turn_start if self._audio.turn_start is not None else sample
                    ),
                    item_id=turn.item_id,
                )
            )
        local = self._route.local
        if local is not None:
            interval = self._settings.partial_interval_ms
            self._passes = TurnPasses(
                local,
                self._pass_options(),
                self._audio,
                turn,
                interval_s=interval / 1000 if interval else None,
                emit=lambda text: turn.events.put_nowait(self._delta(turn, text)),
            )

    async def _cut_long_turn(self) -> None:
        """A turn at 30 s: committed up to its quietest point; the speech goes on in a
        new turn from there."""
        assert self._open is not None
        cut = self._audio.quietest_cut()
        announce = self._detector is not None
        if announce:
            await self._send(
                server_event(
                    "input_audio_buffer.speech_stopped",
                    audio_end_ms=_ms(cut),
                    item_id=self._open.item_id,
                )
            )
        await self._commit(cut)
        if self._detector is not None:
            self._detector.cut(cut)
        if self._audio.end > cut:
            await self._start_turn(cut, announce=announce)

    async def _commit(self, end: int | None, *, speech_end: int | None = None) -> None:
        """End the turn in progress at ``end`` (all of it so far by default) and have it
        transcribed; ``speech_end`` is where its speech ended, when the detector heard it."""
        turn = self._open
        if turn is None:
            return
        self._open = None
        passes, self._passes = self._passes, None
        pcm = self._audio.take(end)
        turn.commit(self._last_item)
        self._last_item = turn.item_id
        await self._send(
            server_event(
                "input_audio_buffer.committed",
                previous_item_id=turn.previous_item_id,
                item_id=turn.item_id,
            )
        )
        self._pending += 1
        self._caught_up.clear()
        task = asyncio.ensure_future(self._transcribe(turn, pcm, passes, speech_end))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _transcribe(
        self, turn: Turn, pcm: bytes, passes: TurnPasses | None, speech_end: int | None
    ) -> None:
        """One committed turn's transcript, as events in its queue."""
        metrics = self._services.metrics
        outcome = "failed"
        try:
            text: str | None = None
            sent = ""
            done: TranscriptDone | None = None
            if passes is not None:
                text, sent = await self._from_passes(turn, passes, pcm, speech_end)
            if text is None:
                text, done = await self._from_upstream(turn, pcm, sent)
            turn.events.put_nowait(
                server_event(
                    f"{_TRANSCRIPTION}.completed",
                    item_id=turn.item_id,
                    content_index=0,
                    transcript=text,
                    usage=_usage(done, len(pcm)),
                )
            )
            outcome = "completed"
        except ProxyError as exc:
            turn.events.put_nowait(self._failed(turn, exc.type, exc.code, exc.message, exc.param))
        except Exception:
            log.exception("a realtime turn failed")
            turn.events.put_nowait(
                self._failed(turn, "server_error", "internal_error", "transcription failed", None)
            )
        finally:
            self._pending -= 1
            if not self._pending:
                self._caught_up.set()
            turn.events.put_nowait(None)
            metrics.realtime_turns.labels(outcome=outcome).inc()
            if turn.committed_at is not None and outcome == "completed":
                metrics.realtime_turn_seconds.observe(time.monotonic() - turn.committed_at)

    async def _from_passes(
        self, turn: Turn, passes: TurnPasses, pcm: bytes, speech_end: int | None
    ) -> tuple[str | None, str]:
        """The transcript from the embedded model's passes (the last deltas sent on the
        way), and what its partial captions had sent; None when the model failed, for
        the routes' fallbacks to answer."""
        sent = passes.agreement.text if passes.agreement is not None else ""
        try:
            text = await passes.transcript(speech_end, pcm)
        except ProxyError:
            log.warning("the embedded model failed a realtime turn; trying its routes")
            return None, sent
        rest = text[len(sent) :] if text.startswith(sent) else text
        if rest.strip():
            turn.events.put_nowait(self._delta(turn, rest))
        return text, sent

    async def _from_upstream(
        self, turn: Turn, pcm: bytes, already_sent: str = ""
    ) -> tuple[str, TranscriptDone | None]:
        """The transcript from the session's routes, its deltas relayed as they stream
        (after partial captions, only what extends them: deltas are never taken back)."""
        sent: list[str] = []
        done: TranscriptDone | None = None
        async with aclosing(
            transcribe_turn(self._services.dispatcher, self._route, pcm, item=turn.item_id)
        ) as pieces:
            async for piece in pieces:
                if isinstance(piece, TranscriptDone):
                    done = piece
                elif not already_sent:
                    sent.append(piece)
                    turn.events.put_nowait(self._delta(turn, piece))
        text = text_of(done) if done is not None else "".join(sent).strip()
        if already_sent:
            rest = text[len(already_sent) :] if text.startswith(already_sent) else ""
            if rest:
                turn.events.put_nowait(self._delta(turn, rest))
            return already_sent + rest, done
        if not sent and text:
            turn.events.put_nowait(self._delta(turn, text))
        return text, done

    def _pass_options(self) -> DecodeOptions:
        transcription = self._route.transcription
        return DecodeOptions(
            beam_size=self._settings.beam_size,
            language=transcription.language.split("-")[0].lower()
            if transcription.language
            else None,
            prompt=transcription.prompt,
        )

    def _delta(self, turn: Turn, text: str) -> dict[str, Any]:
        return server_event(
            f"{_TRANSCRIPTION}.delta", item_id=turn.item_id, content_index=0, delta=text
        )

    def _failed(
        self, turn: Turn, type_: str, code: str | None, message: str, param: str | None
    ) -> dict[str, Any]:
        return server_event(
            f"{_TRANSCRIPTION}.failed",
            item_id=turn.item_id,
            content_index=0,
            error={"type": type_, "code": code, "message": message, "param": param},
        )

    async def _report(self) -> None:
        """Send each turn's events, turn after turn, in the order the turns began."""
        while (turn := await self._turns.get()) is not None:
            while (event := await turn.events.get()) is not None:
                await self._send(event)

    # --- metering, sending --------------------------------------------------------------------

    async def _metered(self, seconds: float, caused_by: str | None) -> None:
        """Count the appended audio; a spent limit or budget ends the session."""
        try:
            await self._meter.add(seconds)
        except ProxyError as exc:
            await self._send(proxy_error_event(exc, caused_by))
            await self.close(CLOSE_POLICY, spent(exc))
            raise _Spent() from exc

    async def _send(self, event: dict[str, Any]) -> None:
        if self._ws.closed:
            return
        with contextlib.suppress(ConnectionError):
            await self._ws.send_str(encode(event))

    def _keep_before(self) -> int:
        vad = self.config.turn_detection
        padding = vad.prefix_padding_ms if vad is not None else 0
        return padding * SAMPLE_RATE // 1000 + SAMPLE_RATE  # and a second's margin


class _Spent(ProxyError):
    """The session's limit or budget is spent; the client has been told, and it is closed."""

    def __init__(self) -> None:
        super().__init__("spent")


def _ms(sample: int) -> int:
    return sample * 1000 // SAMPLE_RATE


def _usage(done: TranscriptDone | None, pcm_bytes: int) -> dict[str, Any]:
    """The turn's usage: the upstream's, else its audio's duration."""
    usage = done.document.get("usage") if done is not None and done.document else None
    if isinstance(usage, dict) and usage.get("type") in ("tokens", "duration"):
        return usage
    return {"type": "duration", "seconds": round(pcm_bytes / SAMPLE_BYTES / SAMPLE_RATE, 3)}
