"""Provider adapters, one per upstream API."""

from __future__ import annotations

import aiohttp

from ..config import ProviderConfig, ProxySettings
from ..metrics import Metrics
from .azure import AzureProvider
from .base import Provider
from .openai import OpenAICompatibleProvider
from .redaction import Redactor

__all__ = ["Provider", "Redactor", "create_provider"]


def create_provider(
    config: ProviderConfig,
    session: aiohttp.ClientSession,
    settings: ProxySettings,
    metrics: Metrics,
    redactor: Redactor | None = None,
) -> Provider:
    """The adapter for ``config``'s kind of upstream; what an HTTP upstream answers
    passes through ``redactor`` (by default, one of ``config``'s own keys)."""
    if config.kind == "local":
        # Imported only when configured: the core install has no speech model.
        from .local import LocalProvider

        return LocalProvider(settings.local, spool_dir=settings.spool_dir, metrics=metrics)
    adapter = {"openai": OpenAICompatibleProvider, "azure": AzureProvider}[config.kind]
    return adapter(
        config,
        session,
        metrics,
        timeout_per_mib_s=settings.timeout_per_mib_s,
        redactor=redactor,
    )
