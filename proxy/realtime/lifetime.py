"""When a session ends of itself, whichever kind it is: at the expiry of the client secret
it was opened with (close 1008), or once its client has gone quiet (close 1000)."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from .protocol import CLOSE_NORMAL, CLOSE_POLICY, ServerEvent, expired_error, idle_error


@dataclass(frozen=True)
class Ending:
    """How a session that ends of itself ends: the ``error`` event, then the close."""

    event: ServerEvent
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
                return Ending(expired_error(), CLOSE_POLICY, "the client secret has expired")
            if idle_left <= 0:
                return Ending(idle_error(self._idle_timeout_s), CLOSE_NORMAL, "idle timeout")
            await asyncio.sleep(min(idle_left, expiry_left))
