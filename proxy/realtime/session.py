"""What every realtime session is to the endpoint and the app, whichever kind it is.

Two kinds: :class:`~.synthesized.SynthesizedSession`, whose turns the proxy
finds and transcribes itself, and :class:`~.relayed.RelayedSession`, passed
on to a provider's own Realtime API.
"""

from __future__ import annotations

from typing import Literal, Protocol

from ..errors import ProxyError
from ..governance.credentials import Caller

SessionKind = Literal["synthesized", "relayed"]


class RealtimeSession(Protocol):
    """One client's realtime session."""

    @property
    def kind(self) -> SessionKind:
        """Which kind of session it is (the label of ``proxy_realtime_sessions``)."""

    @property
    def key_id(self) -> str | None:
        """The virtual key the session acts for (None: an anonymous caller or an admin's)."""

    async def run(self) -> None:
        """Serve the session until its client leaves or it is ended."""

    async def drain(self, deadline_s: float) -> None:
        """The server is stopping: tell the client to reconnect, and close by
        ``deadline_s`` from now (1012)."""

    async def revoke(self, refusal: ProxyError) -> None:
        """The session's virtual key may no longer be used (deactivated, deleted, given a
        new value): tell the client why (an ``error`` event), and close (1008)."""

    async def aclose(self) -> None:
        """Release what the session holds once :meth:`run` has returned."""


def key_id_of(caller: Caller) -> str | None:
    """The id of the virtual key ``caller`` acts with, if it has one."""
    key = caller.virtual_key
    return key.id if key is not None else None
