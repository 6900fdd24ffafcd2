"""A synthesized session's turns in the order they began, their events sent in that order.

Each turn holds the events it has for the client (its transcript's deltas,
then ``completed`` or ``failed``) until every turn before it has sent all
of its own: several turns are transcribed at once, and the client still
hears them in the order they were spoken.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..ids import new_id
from .protocol import ServerEvent


class TurnState(enum.Enum):
    """Where a turn is in its life."""

    SPEAKING = "speaking"
    COMMITTED = "committed"
    DROPPED = "dropped"


@dataclass(eq=False)
class Turn:
    """One turn: its item, and the events it has for the client, in order."""

    item_id: str
    state: TurnState = TurnState.SPEAKING
    previous_item_id: str | None = None
    #: When it was committed (the event loop's clock).
    committed_at: float | None = None
    #: Events for the client; None ends them.
    events: asyncio.Queue[ServerEvent | None] = field(default_factory=asyncio.Queue)

    def add(self, event: ServerEvent) -> None:
        """An event for the client, sent once the turns before this one are done."""
        self.events.put_nowait(event)

    def done(self) -> None:
        """The turn has no more events."""
        self.events.put_nowait(None)


class TurnReporter:
    """The session's turns: the one being spoken, and the order all of them are told in."""

    def __init__(self, send: Callable[[ServerEvent], Awaitable[None]]) -> None:
        self._send = send
        #: Turns in the order they began; None: no more will.
        self._turns: asyncio.Queue[Turn | None] = asyncio.Queue()
        #: The turn being spoken, if one is.
        self.speaking: Turn | None = None
        self._last_item: str | None = None

    def begin(self) -> Turn:
        """A new turn begins (its events go out after every earlier turn's)."""
        turn = Turn(new_id("item"))
        self.speaking = turn
        self._turns.put_nowait(turn)
        return turn

    def commit(self) -> Turn:
        """The turn being spoken is complete: it follows the last one committed."""
        turn = self.speaking
        assert turn is not None, "a turn is committed only while one is spoken"
        self.speaking = None
        turn.state = TurnState.COMMITTED
        turn.previous_item_id = self._last_item
        turn.committed_at = time.monotonic()
        self._last_item = turn.item_id
        return turn

    def drop(self) -> None:
        """The turn being spoken will never be committed (its audio was cleared): it has
        no events."""
        turn = self.speaking
        if turn is None:
            return
        self.speaking = None
        turn.state = TurnState.DROPPED
        turn.done()

    def finish(self) -> None:
        """No turn begins after those begun: :meth:`run` ends once they are all told."""
        self._turns.put_nowait(None)

    async def run(self) -> None:
        """Send each turn's events, turn after turn, in the order the turns began."""
        while (turn := await self._turns.get()) is not None:
            while (event := await turn.events.get()) is not None:
                await self._send(event)
