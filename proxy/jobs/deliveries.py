"""Webhook deliveries: due ones sent, every attempt recorded, failures retried on a schedule.

A job that ends with a webhook URL is due at once (:meth:`JobQueue.finish`). A
sender takes a due delivery by moving its due time past the attempt's timeout
in a conditional UPDATE (only one replica's UPDATE matches the time it read),
sends it, records the attempt, and sets the next due time from
``proxy.jobs.webhook_retry_schedule`` (5 s, 30 s, 2 min, 10 min, 1 h), or gives
up after the last. A replica killed mid-attempt leaves the delivery due again
once that time passes: delivery is at least once, and the ``webhook-id`` the
same on every attempt, so a receiver can drop a repeat.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy import func, or_, select, update

from ..outage import Outage
from ..store.log_rows import now_ms, rfc3339
from ..store.tables import async_job_deliveries, async_jobs
from .delivery import Attempted, WebhookSender
from .queue import Job
from .store import JobStore
from .webhooks import event_body, signed_headers

log = logging.getLogger(__name__)

_jobs = async_jobs.c
_deliveries = async_job_deliveries.c

#: Deliveries taken at a time, and sent at once.
_BATCH = 32
#: Attempts recorded for one job, after which it is not redelivered: each is a
#: request to the tenant's receiver and a row kept until the job expires.
MAX_ATTEMPTS = 100

#: A job's webhook waiting for its time (the first or a retry), or being sent: an
#: attempt is under way while its hold lasts.
_DUE_STATES = ("pending", "sending")

#: What a redelivery did: started one; or not, as an attempt is under way, the job has
#: had its attempts, or the job is gone (expired meanwhile).
Redelivery = Literal["started", "under_way", "exhausted", "gone"]


class Deliveries:
    """Sends the store's due webhooks; lists and redelivers a job's."""

    def __init__(
        self,
        store: JobStore,
        sender: WebhookSender,
        *,
        secret_of: Callable[[Job], str | None],
        schedule_s: tuple[float, ...],
        timeout_s: float,
        poll_interval_s: float,
    ) -> None:
        self._store = store
        self._sender = sender
        self._secret_of = secret_of
        self._schedule_ms = tuple(int(s * 1000) for s in schedule_s)
        #: How long a taken delivery is held before another sender may take it again.
        self._hold_ms = int((timeout_s + 30) * 1000)
        self._poll_s = poll_interval_s
        self._wake = asyncio.Event()
        self._outage = Outage(log, "sending due webhooks")

    def wake(self) -> None:
        """A delivery may be due now (a job just ended, or one was redelivered)."""
        self._wake.set()

    async def run_forever(self) -> None:
        """Send due deliveries as they come due."""
        while True:
            # Cleared before looking, so that a delivery due meanwhile is not missed.
            self._wake.clear()
            try:
                sent = await self.send_due()
            except Exception:  # a store that is down: tried again at the next poll
                self._outage.failed()
                sent = 0
            else:
                self._outage.worked()
            if sent:
                continue
            # The next retry may be due before anything wakes us: poll meanwhile.
            try:
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def send_due(self) -> int:
        """Take and send the deliveries due now; how many were taken."""
        now = now_ms()
        async with self._store.connect() as conn:
            due = (
                await conn.execute(
                    select(async_jobs)
                    # A "sending" one is due again once its hold lapses: its replica
                    # died mid-attempt.
                    .where(_jobs.webhook_state.in_(_DUE_STATES), _jobs.webhook_next_at <= now)
                    .order_by(_jobs.webhook_next_at)
                    .limit(_BATCH)
                )
            ).all()
        taken = [Job.of(row) for row in due if await self._take(row.id, row.webhook_next_at)]
        await asyncio.gather(*(self._attempt(job) for job in taken))
        return len(taken)

    async def _take(self, job_id: str, seen_due: int) -> bool:
        async with self._store.begin() as conn:
            result = await conn.execute(
                update(async_jobs)
                .where(
                    _jobs.id == job_id,
                    _jobs.webhook_state.in_(_DUE_STATES),
                    _jobs.webhook_next_at == seen_due,
                )
                .values(webhook_state="sending", webhook_next_at=now_ms() + self._hold_ms)
            )
        return bool(result.rowcount)

    async def _attempt(self, job: Job) -> None:
        assert job.webhook_url is not None
        assert job.webhook_message_id is not None
        secret = self._secret_of(job)
        attempted_at = now_ms()
        if secret is None:
            ended = Attempted(None, "no webhook secret is configured for this job", 0)
        else:
            body = event_body(job, attempted_at)
            try:
                headers = signed_headers(secret, job.webhook_message_id, body)
            except ValueError as exc:
                ended = Attempted(None, str(exc), 0)
            else:
                ended = await self._sender.send(job.webhook_url, headers, body)
        attempt = job.webhook_attempts + 1
        retry_ms = (
            self._schedule_ms[attempt - 1]
            if not ended.delivered and attempt <= len(self._schedule_ms)
            else None
        )
        next_at = attempted_at + ended.latency_ms + retry_ms if retry_ms is not None else None
        state = "delivered" if ended.delivered else "pending" if next_at is not None else "gave_up"
        async with self._store.begin() as conn:
            await conn.execute(
                async_job_deliveries.insert().values(
                    id=f"dlv_{secrets.token_hex(12)}",
                    job_id=job.id,
                    message_id=job.webhook_message_id,
                    attempt=attempt,
                    attempted_at=attempted_at,
                    outcome="delivered" if ended.delivered else "failed",
                    status_code=ended.status_code,
                    error=ended.error,
                    latency_ms=ended.latency_ms,
                    next_attempt_at=next_at,
                )
            )
            await conn.execute(
                update(async_jobs)
                .where(_jobs.id == job.id)
                .values(webhook_state=state, webhook_attempts=attempt, webhook_next_at=next_at)
            )
        if not ended.delivered:
            log.info(
                "webhook of job %s not delivered (attempt %d): %s", job.id, attempt, ended.error
            )

    async def attempts(self, job_id: str) -> list[dict[str, Any]]:
        """Every attempt to deliver the job's webhook, oldest first."""
        async with self._store.connect() as conn:
            rows = (
                await conn.execute(
                    select(async_job_deliveries)
                    .where(_deliveries.job_id == job_id)
                    .order_by(_deliveries.attempted_at, _deliveries.attempt)
                )
            ).all()
        return [
            {
                "id": row.id,
                "webhook_id": row.message_id,
                "attempt": row.attempt,
                "attempted_at": rfc3339(row.attempted_at),
                "outcome": row.outcome,
                "status_code": row.status_code,
                "error": row.error,
                "latency_ms": row.latency_ms,
                "next_attempt_at": (
                    rfc3339(row.next_attempt_at) if row.next_attempt_at is not None else None
                ),
            }
            for row in rows
        ]

    async def redeliver(self, job_id: str) -> Redelivery:
        """Send the ended job's webhook again now, with a fresh schedule of retries (a
        retry waiting for its time included), unless an attempt to send it is under way
        or it has had its :data:`MAX_ATTEMPTS`."""
        attempts = (
            select(func.count())
            .select_from(async_job_deliveries)
            .where(_deliveries.job_id == job_id)
            .scalar_subquery()
        )
        now = now_ms()
        async with self._store.begin() as conn:
            # One conditional UPDATE: two redeliveries at once start one delivery.
            result = await conn.execute(
                update(async_jobs)
                .where(
                    _jobs.id == job_id,
                    _jobs.webhook_message_id.is_not(None),
                    or_(_jobs.webhook_state != "sending", _jobs.webhook_next_at <= now),
                    attempts < MAX_ATTEMPTS,
                )
                .values(webhook_state="pending", webhook_attempts=0, webhook_next_at=now)
            )
            state = (
                None
                if result.rowcount
                else (
                    await conn.execute(select(_jobs.webhook_state).where(_jobs.id == job_id))
                ).first()
            )
        if result.rowcount:
            self.wake()  # once committed: a sender that looked sooner would not see it
            return "started"
        if state is None:
            return "gone"
        return "under_way" if state.webhook_state == "sending" else "exhausted"
