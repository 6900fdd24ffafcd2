"""What each virtual key holds at once (requests in flight, realtime sessions open), capped.

``proxy.max_in_flight`` and ``proxy.realtime.max_sessions`` protect the
process; these keep one tenant from taking all of it, so a key that opens
hundreds of slow uploads or sessions leaves room for the others. Counted per
process (each replica holds its own share), from admission on, so requests
racing each other are counted too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import RateLimitedError
from .credentials import Caller


class KeySlots:
    """How many of something each virtual key holds, none past ``cap``.

    ``what`` names it in the refusal (``requests in flight``), ``setting`` is the
    setting that moves the cap, ``code`` the refusal's error code.
    """

    def __init__(self, cap: int, *, what: str, setting: str, code: str) -> None:
        self._cap = cap
        self._what = what
        self._setting = setting
        self._code = code
        self._held: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, caller: Caller) -> Iterator[None]:
        """One slot of the caller's key for the duration, or 429 when they are all held.

        Only virtual keys are held to it: anonymous callers and admins share the
        server's own cap.
        """
        key = caller.virtual_key
        if key is None or caller.kind == "admin":
            yield
            return
        held = self._held.get(key.id, 0)
        if held >= self._cap:
            raise RateLimitedError(
                f"virtual key {key.id} already has {held} {self._what}, its most at once "
                f"({self._setting}); try again shortly",
                code=self._code,
                headers={"Retry-After": "1"},
            )
        self._held[key.id] = held + 1
        try:
            yield
        finally:
            left = self._held[key.id] - 1
            if left:
                self._held[key.id] = left
            else:
                del self._held[key.id]
