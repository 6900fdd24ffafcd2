"""Plain data passed between the form reader, the router and the providers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from .dispatch import Served
    from .errors import ProxyError
    from .form.reader import TranscriptionForm
    from .governance.credentials import Caller
    from .governance.metering import AudioUsed
    from .router import Route

#: What a request asks of the audio: its words as spoken, or in English.
Task = Literal["transcription", "translation"]

#: What a request is, as the request log names it (its ``object``).
RequestKind = Literal[
    "transcription",
    "translation",
    "realtime.session",
    "realtime.turn",
    "async.transcription",
    "async.translation",
    "async.transcription.submit",
    "async.translation.submit",
]

#: Each task's path under OpenAI's ``/v1`` (and an Azure deployment's ``/openai/deployments/{id}``).
TASK_PATHS: dict[Task, str] = {
    "transcription": "audio/transcriptions",
    "translation": "audio/translations",
}


@dataclass(frozen=True)
class FormField:
    """One text part of the client's form, as sent."""

    name: str
    value: str
    #: The part's own Content-Type, kept so pass-through fields reach the
    #: upstream as the client framed them (the openai SDK sends some as JSON).
    content_type: str | None = None


class AudioSource(Protocol):
    """The uploaded file: its name, its type and its bytes, read in order, piece by piece."""

    @property
    def filename(self) -> str: ...

    @property
    def content_type(self) -> str: ...

    @property
    def size(self) -> int | None:
        """The byte count when known before reading (a spooled upload)."""

    @property
    def trailing_fields(self) -> Sequence[FormField]:
        """Text fields the client sent after the file; complete once ``pieces`` ends."""

    @property
    def replayable(self) -> bool:
        """Whether ``pieces`` can be read again from the first byte."""

    def pieces(self) -> AsyncIterator[bytes]:
        """The file's bytes as they become available."""

    def whole_file(self) -> IO[bytes] | None:
        """A file object over the whole file when it is all at hand (in memory or
        spooled), for a library that wants one; None while it is still arriving."""


@dataclass(frozen=True)
class UpstreamCall:
    """What a provider sends upstream: the model, the other fields, the audio."""

    model: str
    fields: Sequence[FormField]
    audio: AudioSource
    #: Passed upstream as ``x-request-id``, so one id follows the request.
    request_id: str | None = None
    #: A provider key the client brought (``allow_direct_keys``), used instead of ours.
    api_key: str | None = field(default=None, repr=False)
    task: Task = "transcription"
    #: An Azure deployment a path named (any Azure key may serve it).
    named_deployment: bool = False
    #: Awaited by a provider that decodes the audio as it goes, with the length decoded
    #: so far, before the model hears more; it raises to refuse the rest (a spent budget).
    on_audio: Callable[[float], Awaitable[None]] | None = None
    #: Headers the hooks around dispatch added for this try (a trace's ``traceparent``):
    #: an HTTP provider sends the propagation headers among them, never in place of its own.
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TranscriptDelta:
    """A piece of the transcript as it is produced: an OpenAI-shaped stream event.

    ``event["type"]`` is ``transcript.text.delta`` (with ``delta`` and
    perhaps ``logprobs``) or ``transcript.text.segment``.
    """

    event: dict[str, Any]


@dataclass(frozen=True)
class TranscriptDone:
    """The upstream's complete answer.

    ``document`` is set for JSON answers, ``text`` for the plain-text formats
    (text, srt, vtt); ``raw`` is the body exactly as received.
    """

    raw: bytes
    document: dict[str, Any] | None = None
    text: str | None = None


TranscriptEvent = TranscriptDelta | TranscriptDone


@dataclass(frozen=True)
class TokenUsage:
    """The tokens an answer reports using (``usage.type: tokens``)."""

    input_audio: int = 0
    input_text: int = 0
    output_text: int = 0


class AudioLength(Protocol):
    """The upload's length as its container tells it, learnt as its bytes pass."""

    def finish(self) -> float | None:
        """The length in seconds of what has passed; None when the container does not say."""

    def declared(self) -> float | None:
        """The length the container's header declares, from its first bytes; None when
        it declares none (or they have not passed yet)."""

    def floor(self, size: int) -> float:
        """The fewest seconds ``size`` bytes of this container hold at its codec's highest
        rate: what a length it declares may never be charged below."""


@dataclass(frozen=True)
class Phase:
    """A stretch of a request's life the stage that owns it timed (the form's reading, a
    cache lookup), on the monotonic clock of :attr:`RequestFacts.started`."""

    name: str
    start: float
    end: float


@dataclass
class RequestFacts:
    """What a request has become, stage by stage: for its answer, its errors, its logs
    and the plugins around dispatch, which read it.

    Each group of fields has one writer, named above it; nothing else writes them.
    """

    # --- the app, as the request comes in --------------------------------------------------
    #: When it began, on the monotonic clock (latencies) and the wall clock (logs).
    started: float
    request_id: str = "-"
    started_at: float = field(default_factory=time.time)
    #: The request's headers (what plugins engage on: a cache key, a trace's parent).
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The body's Content-Length, if it has one.
    declared_bytes: int | None = None
    # --- the endpoint (and the stream it answers with) -------------------------------------
    #: Bifrost's ``extra_fields.request_type`` (``transcription_stream``, ...).
    request_type: str = "transcription"
    #: What the request is, as the request log names it.
    kind: RequestKind = "transcription"
    task: Task = "transcription"
    #: The request this one is part of (a realtime session's, for its turns).
    parent_request_id: str | None = None
    # --- auth --------------------------------------------------------------------------------
    caller: Caller | None = None
    # --- the form reader ---------------------------------------------------------------------
    model_requested: str | None = None
    form: TranscriptionForm | None = None
    #: Audio bytes read from the client.
    audio_bytes: int = 0
    #: Audio seconds the client has sent, counted as they came (a realtime session's
    #: appends; written by the session's meter).
    audio_seconds_in: float = 0.0
    #: The upload's length as its container tells it (when the answer does not).
    audio_length: AudioLength | None = None
    # --- the router -------------------------------------------------------------------------
    #: The primary route, then one per fallback.
    routes: Sequence[Route] = ()
    # --- the answer stage: who gave the answer, and what it was -----------------------------
    #: The dispatch's account of who answered (the route, its attempts, its chunks).
    served: Served | None = None
    #: Who first made an answer a plugin gave in the upstream's place (provider, model).
    given_by: tuple[str, str] | None = None
    #: The complete answer, once there is one (a stream's, at its done event).
    answer: TranscriptDone | None = None
    #: When the answer's first event came (the clock of ``started``).
    first_event_at: float | None = None
    #: Events streamed to the client, and whether the stream reached its done event.
    events_sent: int = 0
    stream_complete: bool = False
    #: The error the request ended with (in the answer's place, or in its stream).
    error: ProxyError | None = None
    #: The status the request ended with (499: the client left), once it is over.
    status: int | None = None
    # --- a realtime session: its turns' requests, and its endpoint once it has ended --------
    #: Turns committed in the session (each a request of its own, a child of this one).
    turns: int = 0
    #: The WebSocket close code the session ended with (1000 closed normally, 1008 a
    #: limit spent or a key refused, 1012 the server restarting, 1006 the client vanished).
    close_code: int | None = None
    # --- each stage that times a phase: its own (the handler's form reading, the cache's) ---
    #: The request's timed phases, in the order they ended: for its trace.
    phases: list[Phase] = field(default_factory=list)
    # --- plugins ------------------------------------------------------------------------------
    #: ``extra_fields.cache_debug`` when the request used the transcript cache (the cache's).
    cache_debug: dict[str, Any] | None = None
    #: The audio the request was charged for, and what it cost in USD (governance's, once
    #: the request is over).
    usage: AudioUsed | None = None
    cost: float | None = None
    #: An async job's reservation against its key's limits and budgets (governance's record
    #: of it, :mod:`proxy.governance.held`): made at its submit, settled by its run.
    reservation: dict[str, Any] | None = None
    #: Whether a job now holds ``reservation`` (the job endpoint's, once the job is stored):
    #: its submit then leaves it outstanding, for the run to settle.
    reservation_kept: bool = False
    #: The request's trace id in hex, for its log lines and its row (tracing's, as the
    #: request begins; None with tracing off).
    trace_id: str | None = None

    @property
    def provider(self) -> str | None:
        """The provider that answered (or first made the answer a plugin gave); before an
        answer, the primary route's."""
        if self.given_by is not None:
            return self.given_by[0]
        route = self.route
        return route.provider.name if route is not None else None

    @property
    def model_deployment(self) -> str | None:
        """What served the model (an Azure deployment, the embedded model's name)."""
        if self.given_by is not None:
            return self.given_by[1]
        if self.served is None:
            return None
        return self.served.route.provider.deployment_of(self.served.route.model)

    @property
    def route(self) -> Route | None:
        """The route that answered; before an answer, the primary."""
        if self.served is not None:
            return self.served.route
        return self.routes[0] if self.routes else None

    @property
    def attempts(self) -> list[dict[str, Any]] | None:
        """Every attempt, when the answer is not the primary's first try."""
        return self.served.attempts if self.served is not None else None

    @property
    def audio_chunks(self) -> int | None:
        """How many chunks a long upload was cut into (None: sent whole)."""
        return self.served.audio_chunks if self.served is not None else None

    @property
    def streams(self) -> bool:
        """Whether the answer is a stream of events (``stream=true``)."""
        return self.request_type.endswith("_stream")

    @property
    def cache_hit(self) -> bool:
        """Whether the answer came from the transcript cache (it cost no upstream audio)."""
        return bool(self.cache_debug and self.cache_debug.get("cache_hit"))

    @property
    def answered(self) -> bool:
        """Whether an answer came back, whole or begun (a request that got none is free)."""
        return self.answer is not None or self.events_sent > 0

    def failed(self, error: ProxyError) -> None:
        """The request ends with ``error`` (the first one said is the one kept)."""
        if self.error is None:
            self.error = error

    def ended(self) -> None:
        """The request is over: its status is its error's, else 200."""
        if self.status is None:
            self.status = self.error.status_code if self.error is not None else 200

    def phase(self, name: str, since: float) -> None:
        """The phase ``name``, begun at ``since`` (the monotonic clock), is over."""
        self.phases.append(Phase(name, since, time.monotonic()))

    def latency_ms(self) -> int:
        """Whole milliseconds since the request started."""
        return int((time.monotonic() - self.started) * 1000)
