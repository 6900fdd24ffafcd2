"""The one Redis connection pool that rate limits, budgets and the transcript cache share."""

from __future__ import annotations

from typing import Any

from .config import ConfigError


def connect_redis(url: str) -> Any:
    """A ``redis.asyncio`` client for ``url``; connections are made on first use.

    Timeouts are short: a Redis that is down must cost a request little, since
    each user of it has a way to go on without it.
    """
    try:
        import redis.asyncio
    except ImportError:
        raise ConfigError(
            "proxy.redis_url: the Redis client is not installed; pip install '.[redis]'"
        ) from None
    return redis.asyncio.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, retry_on_timeout=False
    )
