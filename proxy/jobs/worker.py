"""A replica's workers: each claims a job, runs it while renewing its lease, finishes it.

``proxy.jobs.workers`` of them per replica. A lease that cannot be renewed
(the job was cancelled, or the lease lapsed and another replica took the job
over) cancels the run, and with it its upstream requests. On a clean stop
(SIGTERM) a running job is handed back at once, to be claimed again; after a
crash or a SIGKILL, its lease lapses and it is claimed again then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ProxyError, error_body
from ..outage import Outage
from .queue import Claim, JobQueue, Outcome
from .runner import JobRunner, SpoolMissingError

log = logging.getLogger(__name__)

#: Claims a job may have; one claimed again past them has died with its replica every time.
MAX_CLAIMS = 5


class Workers:
    """The workers of one replica, and the jobs they are running."""

    def __init__(
        self,
        queue: JobQueue,
        runner: JobRunner,
        *,
        count: int,
        owner: str,
        lease_s: float,
        poll_interval_s: float,
        on_finished: Callable[[Claim], Awaitable[None]],
        release: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        self._queue = queue
        self._runner = runner
        self._count = count
        self._owner = owner
        self._renew_every_s = lease_s / 3
        self._lease_s = lease_s
        self._poll_s = poll_interval_s
        self._on_finished = on_finished
        self._release = release
        self._wake = asyncio.Event()
        self._claiming = True
        #: Shared by the workers: one line when the store goes down, not one each.
        self._claiming_outage = Outage(log, "claiming jobs")
        self._tasks: list[asyncio.Task[None]] = []
        #: The runs in progress, by job id (so that DELETE cancels one at once).
        self._running: dict[str, asyncio.Task[Outcome]] = {}

    def start(self) -> None:
        """Start the workers."""
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._count)]

    async def stop(self) -> None:
        """Stop the workers; the jobs they were running are handed back."""
        for job_id in self._running:
            self._runner.hand_back(job_id)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop_claiming(self) -> None:
        """The replica is draining: no new job is claimed; those running go on until the
        workers stop (and are then handed back)."""
        self._claiming = False
        self._wake.set()

    def wake(self) -> None:
        """A job was queued: an idle worker looks now rather than at its next poll."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop the run of ``job_id`` if it is this replica's (its lease is already gone)."""
        if (run := self._running.get(job_id)) is not None:
            run.cancel()

    async def _work(self) -> None:
        while self._claiming:
            # Cleared before looking, so that a job queued while we look is not missed.
            self._wake.clear()
            try:
                claim = await self._queue.claim(self._owner)
            except Exception:  # the store is down: tried again at the next poll
                self._claiming_outage.failed()
                claim = None
            else:
                self._claiming_outage.worked()
            if claim is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_s):
                        await self._wake.wait()
                continue
            try:
                await self._run(claim)
            except Exception:  # the store failed under it: the lease lapses, and it runs again
                log.exception("job %s could not be run", claim.job.id)

    async def _run(self, claim: Claim) -> None:
        job = claim.job
        if job.claims > MAX_CLAIMS:
            # Its runs keep dying with their replica (a recording that crashes a decoder,
            # say): it ends rather than taking every replica down in turn.
            error = ProxyError(
                f"the job's run was interrupted {MAX_CLAIMS} times", code="job_interrupted"
            )
            body = error_body(error, model_requested=job.model, request_type=job.task)
            if await self._finish(claim, Outcome("failed", 500, error=body)):
                await self._release(job.reservation)  # no run settles it
            return
        run = asyncio.create_task(self._runner.run(job))
        self._running[job.id] = run
        renewing = asyncio.create_task(self._renew(claim, run))
        try:
            outcome = await run
        except SpoolMissingError:
            log.warning("job %s: its upload is not on this replica's spool", job.id)
            await self._queue.release(claim, retry_after_s=self._lease_s)
            return
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # This replica is stopping: the job goes back now, not when its lease lapses.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._queue.release(claim))
                raise
            return  # cancelled, or taken over: it is not ours to finish
        finally:
            renewing.cancel()
            self._running.pop(job.id, None)
        await self._finish(claim, outcome)

    async def _finish(self, claim: Claim, outcome: Outcome) -> bool:
        """Record how the job ended; whether this worker's record is the one kept."""
        job = claim.job
        try:
            finished = await self._queue.finish(claim, outcome, webhook=job.webhook_url is not None)
        except Exception:  # the lease lapses, and another run finishes it
            log.exception("could not record the end of job %s", job.id)
            return False
        if finished:
            await self._on_finished(claim)
        return finished

    async def _renew(self, claim: Claim, run: asyncio.Task[Outcome]) -> None:
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self._renew_every_s)
            asked = time.monotonic()
            try:
                held = await self._queue.renew(claim)
            except Exception:  # a store that is down: tried again, until the lease lapses
                log.exception("could not renew the lease of job %s", claim.job.id)
                if time.monotonic() - renewed < self._lease_s:
                    continue
                # Lapsed by now: another replica may be running it. This run stops, so
                # that the job is not run (and charged) twice.
                held = False
            if held:
                renewed = asked
                continue
            log.info("job %s is no longer ours (cancelled, or taken over)", claim.job.id)
            if await self._taken_over(claim.job.id):
                # The run that has it now settles its reservation; this one must not.
                self._runner.hand_back(claim.job.id)
            run.cancel()
            return

    async def _taken_over(self, job_id: str) -> bool:
        """Whether another run has the job now (rather than it being cancelled, or
        expired: then no other run will settle what its submit reserved)."""
        try:
            job = await self._queue.get(job_id)
        except Exception:  # the store is down: its run ends as if taken over
            log.exception("could not read job %s", job_id)
            return True
        return job is not None and job.status != "cancelled"
