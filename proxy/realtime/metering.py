"""A session's audio seconds against the caller's limits and budgets, as it goes.

A session is admitted as one request with a block of audio seconds
reserved; as its appended audio reaches what is reserved, the next block
is reserved, and a limit or budget that is spent ends the session (an
``error`` event, close 1008). When it ends, the reservations are settled to
the audio it really appended.
"""

from __future__ import annotations

from ..errors import ProxyError
from ..governance.credentials import Caller
from ..governance.governor import Admission, Governor
from ..router import Route

#: Close code: the session's policy (a limit or budget) is spent.
CLOSE_POLICY = 1008


class SessionMeter:
    """Counts one session's audio seconds and reserves them ahead."""

    def __init__(self, governor: Governor, admission: Admission, step_s: float) -> None:
        self._governor = governor
        self._admission = admission
        self._step_s = step_s
        #: Seconds of audio the client has appended.
        self.seconds = 0.0

    async def add(self, seconds: float) -> None:
        """Count ``seconds`` more; raises what the caller is told when a limit is spent
        (the refused audio is not counted)."""
        total = self.seconds + seconds
        admission = self._admission
        reserved = admission.reserved_seconds
        if admission.by_audio and total > reserved:
            deficit = total - reserved
            try:
                await self._governor.extend(admission, max(self._step_s, deficit))
            except ProxyError:
                if deficit >= self._step_s:
                    raise
                # Not a whole block left: what this audio needs, if that is.
                await self._governor.extend(admission, deficit)
        self.seconds = total

    async def reroute(self, caller: Caller, route: Route) -> None:
        """The session's model changed: its audio from now on is charged at ``route``'s rates."""
        await self._governor.rebind(self._admission, caller, route, self.seconds)

    async def settle(self) -> None:
        """Settle the reservations to the audio appended (once)."""
        await self._governor.settle(self._admission, self.seconds)


def spent(exc: ProxyError) -> str:
    """The close frame's reason when ``exc`` ends a session (at most 123 bytes)."""
    return exc.message.encode()[:120].decode(errors="ignore")
