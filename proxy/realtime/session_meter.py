"""A session's audio seconds against the caller's limits and budgets, as it goes.

A session is admitted as one request with a block of audio seconds
reserved; as its appended audio reaches what is reserved, the next block
is reserved (as an upload's audio is: :class:`~proxy.governance.allowance.AudioAllowance`),
and a limit or budget that is spent ends the session (an ``error`` event,
close 1008). When it ends, the reservations are settled to the audio it
really appended.
"""

from __future__ import annotations

import math

from ..errors import ProxyError
from ..governance.allowance import AudioAllowance
from ..governance.credentials import Caller
from ..governance.governor import Admission, Governor
from ..router import Route


class SessionMeter:
    """Counts one session's audio seconds and reserves them ahead."""

    def __init__(self, governor: Governor, admission: Admission, step_s: float) -> None:
        self._governor = governor
        self._admission = admission
        # A session has no longest: it ends when its limits and budgets are spent.
        self._allowance = AudioAllowance(governor, admission, max_seconds=math.inf, step_s=step_s)
        #: Seconds of audio the client has appended.
        self.seconds = 0.0

    async def add(self, seconds: float) -> ProxyError | None:
        """Count ``seconds`` more; when a limit or budget is spent, the error the client is
        told instead (and the refused audio is not counted)."""
        total = self.seconds + seconds
        try:
            await self._allowance.cover(total)
        except ProxyError as exc:
            return exc
        self.seconds = total
        return None

    async def reroute(self, caller: Caller, route: Route) -> None:
        """The session's model changed: its audio from now on is charged at ``route``'s rates."""
        await self._governor.rebind(self._admission, caller, route, self.seconds)

    async def settle(self) -> None:
        """Settle the reservations to the audio appended (once)."""
        await self._governor.settle(self._admission, self.seconds)


def spent(exc: ProxyError) -> str:
    """The close frame's reason when ``exc`` ends a session (at most 123 bytes)."""
    return exc.message.encode()[:120].decode(errors="ignore")
