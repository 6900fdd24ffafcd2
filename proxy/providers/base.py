"""The interface every provider adapter implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeGuard

from ..config import NetworkConfig
from ..models import TranscriptEvent, UpstreamCall

if TYPE_CHECKING:
    import aiohttp


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do: the router, dispatch and realtime ask this, never its class."""

    #: Answers ``stream=true`` with transcript events as they are made (an upstream that
    #: does not is answered whole, and its answer turned into events here).
    streams: bool = False
    #: Has a Realtime API of its own: sessions on it are relayed, not synthesized.
    relays_realtime: bool = False
    #: Can transcribe a turn again and again while it is spoken, for partial captions.
    live_passes: bool = False
    #: Translates speech into English (``/v1/audio/translations``).
    translates: bool = True
    #: The largest upload it takes, in bytes (longer audio is cut into chunks); None: any.
    max_upload: int | None = None
    #: A provider key the client brings (``client.allow_direct_keys``) can be sent in
    #: place of ours: an upstream that takes keys, with keys of ours configured.
    takes_client_keys: bool = False


class Provider(Protocol):
    """One upstream speech-to-text API.

    ``transcribe`` yields the transcript's events and ends with one
    :class:`TranscriptDone`; the handler decides how the client gets them.
    Before its first event a provider raises ``ProxyError(retryable=...)``
    so that the router can retry or fall back; after it, nothing is retried.
    """

    @property
    def name(self) -> str:
        """The provider's name in config and in ``provider/model`` strings."""

    @property
    def network(self) -> NetworkConfig:
        """Retry and timeout settings."""

    @property
    def capabilities(self) -> Capabilities:
        """What the provider can do."""

    @property
    def sends_back_raw_response(self) -> bool:
        """Whether answers carry the upstream body in ``extra_fields.raw_response``."""

    def lists(self, model: str) -> bool:
        """Whether the provider's config names ``model`` explicitly."""

    def serves(self, model: str) -> bool:
        """Whether the provider has a key that may be used for ``model``."""

    def deployment_of(self, model: str) -> str:
        """What actually serves ``model`` (``extra_fields.model_deployment``)."""

    def listed_models(self) -> list[str]:
        """The models the provider's config names, for ``GET /v1/models``."""

    async def start(self) -> None:
        """Get ready to serve (load a model, say); called once at start-up."""

    async def aclose(self) -> None:
        """Release what the provider holds; called once at shutdown."""

    def transcribe(self, call: UpstreamCall) -> AsyncGenerator[TranscriptEvent, None]:
        """Send ``call`` upstream and yield what comes back."""


class SpokenTurn(Protocol):
    """A realtime turn still being spoken, as live passes read it (positions in samples of
    16 kHz mono PCM since the session began)."""

    @property
    def speaking(self) -> bool:
        """Whether the turn is still being spoken (not committed, not dropped)."""

    @property
    def end(self) -> int:
        """The position after the last sample appended to the session."""

    def so_far(self) -> bytes:
        """The turn's audio so far, 16 kHz mono 16-bit PCM."""


@dataclass(frozen=True)
class TurnTranscript:
    """A committed turn's transcript from its live passes: ``text``, from a pass over the
    whole turn, and ``delta``, what the partial captions still lack of it (they are
    append-only interim text; a client replaces them with ``text``)."""

    text: str
    delta: str


@dataclass(frozen=True)
class LivePassOptions:
    """How live passes hear a turn."""

    #: The session's language (``en``, ``en-US``), if it names one.
    language: str | None = None
    #: The session's prompt, if it has one.
    prompt: str | None = None
    #: The model's beam width for the turn's transcript, and for partial captions.
    beam_size: int = 5
    partial_beam_size: int = 1
    #: A pass every this many seconds, for partial captions; None: none (a pass only
    #: when silence begins, for the transcript).
    interval_s: float | None = None


class LivePasses(Protocol):
    """Passes over one turn while it is spoken: partial captions as they agree, and the
    turn's transcript when it is committed."""

    @property
    def sent(self) -> str:
        """What the partial captions have sent of the turn so far."""

    def silence_began(self) -> None:
        """The speaker may have finished: a pass over all of it is worth starting now."""

    async def transcript(self, speech_end: int | None, pcm: bytes) -> TurnTranscript:
        """The committed turn's transcript (``pcm`` is all of it; ``speech_end`` where its
        speech ended, when known); raises the provider's error when it cannot make one."""

    async def aclose(self) -> None:
        """Stop every pass (the turn was dropped, or the session ended)."""


class LivePassProvider(Provider, Protocol):
    """A provider with ``capabilities.live_passes``: it transcribes a turn again and again
    while it is spoken."""

    def open_live_passes(
        self, turn: SpokenTurn, options: LivePassOptions, emit: Callable[[str], None]
    ) -> LivePasses:
        """Start passes over ``turn``, and ``emit`` each partial caption's new text."""

    def take_live_seat(self) -> bool:
        """Room for one more session transcribed live, taken; False when as many sessions
        as it serves at its latency goal are on it already."""

    def give_back_live_seat(self) -> None:
        """A session transcribed live here has ended, or moved to another model."""


class RealtimeRelayProvider(Provider, Protocol):
    """A provider with ``capabilities.relays_realtime``: it has a Realtime API of its own."""

    async def open_realtime(
        self, model: str, api_key: str | None = None, *, named_deployment: bool = False
    ) -> aiohttp.ClientWebSocketResponse:
        """A transcription session of the upstream's own (with the client's key, when it
        brought one); its refusal is raised with its status."""


def has_live_passes(provider: Provider) -> TypeGuard[LivePassProvider]:
    """Whether ``provider`` says it opens live passes (and so offers them)."""
    return provider.capabilities.live_passes


def relays_realtime(provider: Provider) -> TypeGuard[RealtimeRelayProvider]:
    """Whether ``provider`` says it has a Realtime API of its own (and so opens one)."""
    return provider.capabilities.relays_realtime
