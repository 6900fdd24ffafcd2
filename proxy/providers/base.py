"""The interface every provider adapter implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from ..config import NetworkConfig
from ..models import TranscriptEvent, UpstreamCall


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
    def upload_limit(self) -> int | None:
        """The largest upload the upstream takes, in bytes (longer audio is cut into chunks)."""

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
