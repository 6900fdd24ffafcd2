"""Provider adapters, one per upstream API."""

from __future__ import annotations

import aiohttp

from ..config import ProviderConfig
from .base import Provider
from .openai import OpenAICompatibleProvider

__all__ = ["Provider", "create_provider"]


def create_provider(config: ProviderConfig, session: aiohttp.ClientSession) -> Provider:
    """The adapter for ``config``'s kind of upstream."""
    if config.kind == "openai":
        return OpenAICompatibleProvider(config, session)
    raise ValueError(f"no adapter for provider kind {config.kind!r}")
