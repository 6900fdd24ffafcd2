"""The interface every provider adapter implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from ..config import NetworkConfig
from ..models import TranscriptEvent, UpstreamCall


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
