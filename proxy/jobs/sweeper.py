"""Expiry: jobs past their ``expires_at`` deleted, with their deliveries and spool files.

Run in the background on every replica (deleting what another already deleted
is nothing). A job that expires before it ran gives back what its submit
reserved against its key's limits and budgets. A spool file older than the
longest result TTL belongs to no job any more (its replica was killed between
naming it and queueing its job): it goes too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..outage import Outage
from .queue import JobQueue
from .spool import JobSpool

log = logging.getLogger(__name__)


class Sweeper:
    """Deletes what has expired, every ``interval_s``."""

    def __init__(
        self,
        queue: JobQueue,
        spool: JobSpool,
        *,
        interval_s: float,
        max_ttl_s: float,
        release: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        self._queue = queue
        self._release = release
        self._spool = spool
        self._interval_s = interval_s
        self._outage = Outage(log, "deleting expired jobs")
        self._max_ttl_s = max_ttl_s

    async def sweep(self) -> int:
        """Delete the expired jobs and their files now; how many jobs."""
        expired = await self._queue.expire()
        for job_id, reservation in expired:
            await self._spool.remove(self._spool.path_of(job_id))
            if reservation is not None:  # it never ran: what its submit reserved goes back
                await self._release(reservation)
        await self._spool.remove_older_than(self._max_ttl_s)
        return len(expired)

    async def run_forever(self) -> None:
        """Sweep, then wait, for as long as the app runs."""
        while True:
            try:
                swept = await self.sweep()
            except Exception:  # a store that is down: swept at the next round
                self._outage.failed()
            else:
                self._outage.worked()
                if swept:
                    log.info("deleted %d expired jobs", swept)
            await asyncio.sleep(self._interval_s)
