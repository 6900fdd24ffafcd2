"""Counters for rate limits and budgets: in this process, or in Redis for many replicas.

Every counter lives in a fixed window (``window_s`` long). ``reserve`` adds
an amount only if the total stays within the limit, atomically, and otherwise
says how long until the window resets; ``adjust`` corrects a reservation once
the real amount is known.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol


class CounterStoreError(Exception):
    """The store cannot be reached."""


class Counters(Protocol):
    """Where counts are kept."""

    async def reserve(self, key: str, amount: float, limit: float, window_s: float) -> float | None:
        """Add ``amount`` if the window's total stays within ``limit``.

        Returns None when added, else the seconds until the window resets.
        """

    async def adjust(self, key: str, delta: float, window_s: float) -> None:
        """Add ``delta`` (perhaps negative) to the current window's total."""

    async def aclose(self) -> None:
        """Release connections."""


def _window(key: str, window_s: float, now: float) -> tuple[str, float]:
    index = int(now // window_s)
    return f"proxy:{key}:{index}", (index + 1) * window_s - now


class MemoryCounters:
    """Counts in this process (one replica)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._totals: dict[str, float] = {}

    async def reserve(self, key: str, amount: float, limit: float, window_s: float) -> float | None:
        name, remaining = _window(key, window_s, self._clock())
        total = self._totals.get(name, 0.0)
        if total + amount > limit:
            return remaining
        self._totals[name] = total + amount
        self._forget_old(key, name)
        return None

    async def adjust(self, key: str, delta: float, window_s: float) -> None:
        name, _ = _window(key, window_s, self._clock())
        self._totals[name] = self._totals.get(name, 0.0) + delta

    def _forget_old(self, key: str, current: str) -> None:
        prefix = f"proxy:{key}:"
        for name in [n for n in self._totals if n.startswith(prefix) and n != current]:
            del self._totals[name]

    async def aclose(self) -> None:
        """Nothing to release."""


# Check and add in one step, so replicas racing for the last of a limit
# cannot both get it. Keys expire with their window.
_RESERVE = """
local total = tonumber(redis.call('GET', KEYS[1]) or '0')
if total + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
  return 0
end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisCounters:
    """Counts in Redis, shared by every replica pointed at it."""

    def __init__(self, client: Any, clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._reserve = self._redis.register_script(_RESERVE)
        self._clock = clock

    async def reserve(self, key: str, amount: float, limit: float, window_s: float) -> float | None:
        name, remaining = _window(key, window_s, self._clock())
        expire = int(remaining) + 1
        try:
            added = await self._reserve(keys=[name], args=[amount, limit, expire])
        except Exception as exc:  # redis-py raises several unrelated classes
            raise CounterStoreError(f"redis: {exc}") from exc
        return None if added else remaining

    async def adjust(self, key: str, delta: float, window_s: float) -> None:
        name, remaining = _window(key, window_s, self._clock())
        try:
            await self._redis.incrbyfloat(name, delta)
            await self._redis.expire(name, int(remaining) + 1)
        except Exception as exc:
            raise CounterStoreError(f"redis: {exc}") from exc

    async def aclose(self) -> None:
        """Nothing to release: the app closes the shared client."""
