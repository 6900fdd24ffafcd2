"""A session's seat on a model that transcribes it live (README, "Realtime sessions").

The embedded model's live passes are decodes on the box's own cores: past a
number of sessions at once, every session's transcripts come late. A session
routed to such a model holds one of its seats from its start (or from the
update that moves it there) until it ends or moves off; with every seat
taken, a new session is refused (503 at the upgrade, an ``error`` at
``session.update`` with the session left as it was) rather than served late
along with all the others.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ServiceUnavailableError
from ..providers.base import LivePassProvider, has_live_passes
from ..router import Route


class SessionSeat:
    """The seat one session holds, following its primary route."""

    def __init__(self) -> None:
        #: The models it holds a seat on: one, or two while it moves between them.
        self._held: list[LivePassProvider] = []

    def need(self, routes: Sequence[Route]) -> None:
        """Take a seat on ``routes``' model if it transcribes live and none is held there;
        503 ``live_sessions_full`` when it has none free (nothing changes then). A seat
        held elsewhere is kept until :meth:`fit` says the move is done."""
        provider = routes[0].provider if routes else None
        if provider is None or not has_live_passes(provider) or provider in self._held:
            return
        if not provider.take_live_seat():
            raise ServiceUnavailableError(
                f"the {provider.name} model is transcribing as many realtime sessions as it "
                "can serve in time; try again shortly, or choose another model",
                code="live_sessions_full",
                headers={"Retry-After": "5"},
            )
        self._held.append(provider)

    def fit(self, routes: Sequence[Route]) -> None:
        """Give back the seats ``routes`` do not need (the session moved off, or ended)."""
        provider = routes[0].provider if routes else None
        for held in [p for p in self._held if p is not provider]:
            held.give_back_live_seat()
            self._held.remove(held)
