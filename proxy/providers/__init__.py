"""Provider adapters, one per upstream API."""

from __future__ import annotations

import aiohttp

from ..config import ProviderConfig
from .azure import AzureProvider
from .base import Provider
from .openai import OpenAICompatibleProvider

__all__ = ["Provider", "create_provider"]


def create_provider(
    config: ProviderConfig, session: aiohttp.ClientSession, *, timeout_per_mib_s: float
) -> Provider:
    """The adapter for ``config``'s kind of upstream."""
    adapter = {"openai": OpenAICompatibleProvider, "azure": AzureProvider}[config.kind]
    return adapter(config, session, timeout_per_mib_s=timeout_per_mib_s)
