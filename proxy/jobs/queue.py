"""The job queue in the store: jobs added, claimed under a lease, finished exactly once.

A worker claims the oldest runnable job in one transaction: a pending job, or a
processing one whose lease has lapsed (its worker died). PostgreSQL skips rows
another replica is claiming (``FOR UPDATE SKIP LOCKED``); SQLite takes the
file's write lock first (``BEGIN IMMEDIATE``), so two processes cannot both
read the same job as free. The lease (an owner and a random token, until a
time) is renewed while the job runs; finishing is an UPDATE conditional on the
token and on the job still being ``processing``, so a worker whose lease was
taken over (or whose job was cancelled) cannot finish it too: no job is
completed twice, and none is lost.

Why a queue of our own and not a library: procrastinate and pgqueuer run on
PostgreSQL only, saq and arq on Redis only; the proxy's store is SQLite on one box
and PostgreSQL when replicas share it, and a job's row is also what ``GET`` reads
and what the webhook reports, in the same transaction as its lease.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from sqlalchemy import and_, delete, or_, select, update

from ..models import FormField, Task
from ..store.log_rows import now_ms
from ..store.tables import async_job_deliveries, async_jobs
from .store import JobStore

#: ``pending`` until claimed, ``processing`` while a worker holds its lease, then one of
#: the ends.
JobStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]
ENDED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

_jobs = async_jobs.c


@dataclass(frozen=True)
class Job:
    """One job's row."""

    id: str
    task: Task
    status: JobStatus
    #: The request that submitted it (its row's parent in the request log).
    request_id: str
    caller_kind: str
    virtual_key_id: str | None
    model: str
    fields: tuple[FormField, ...]
    filename: str
    content_type: str
    #: The submitting request's headers the run reads as its own (the cache's, tracing's).
    headers: dict[str, str]
    size: int
    sha256: str
    #: What the upload's container said of its length as it was read (for metering).
    length: dict[str, float | None]
    created_at: int
    expires_at: int
    started_at: int | None = None
    finished_at: int | None = None
    claims: int = 0
    status_code: int | None = None
    result: Any = None
    error: Any = None
    webhook_url: str | None = None
    webhook_message_id: str | None = None
    webhook_state: str | None = None
    webhook_attempts: int = 0
    #: What its submit reserved against its key's limits and budgets, outstanding until
    #: its run settles it (:mod:`proxy.governance.held`).
    reservation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, row: Any) -> Job:
        """The job a row of ``async_jobs`` holds."""
        m = row._mapping
        return cls(
            id=m["id"],
            task=m["task"],
            status=m["status"],
            request_id=m["request_id"],
            caller_kind=m["caller_kind"],
            virtual_key_id=m["virtual_key_id"],
            model=m["model"],
            fields=tuple(
                FormField(name, value, content_type)
                for name, value, content_type in orjson.loads(m["fields"])
            ),
            filename=m["filename"],
            content_type=m["content_type"],
            headers=orjson.loads(m["headers"]),
            size=m["size"],
            sha256=m["sha256"],
            length=orjson.loads(m["length"]) if m["length"] else {},
            created_at=m["created_at"],
            expires_at=m["expires_at"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            claims=m["claims"],
            status_code=m["status_code"],
            result=orjson.loads(m["result"]) if m["result"] is not None else None,
            error=orjson.loads(m["error"]) if m["error"] is not None else None,
            webhook_url=m["webhook_url"],
            webhook_message_id=m["webhook_message_id"],
            webhook_state=m["webhook_state"],
            webhook_attempts=m["webhook_attempts"],
            reservation=orjson.loads(m["reservation"]) if m["reservation"] else {},
        )

    def values(self) -> dict[str, Any]:
        """The job as the row to insert."""
        return {
            "id": self.id,
            "task": self.task,
            "status": self.status,
            "request_id": self.request_id,
            "caller_kind": self.caller_kind,
            "virtual_key_id": self.virtual_key_id,
            "model": self.model,
            "fields": orjson.dumps(
                [(f.name, f.value, f.content_type) for f in self.fields]
            ).decode(),
            "filename": self.filename,
            "content_type": self.content_type,
            "headers": orjson.dumps(self.headers).decode(),
            "size": self.size,
            "sha256": self.sha256,
            "length": orjson.dumps(self.length).decode(),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "claims": 0,
            "webhook_url": self.webhook_url,
            "webhook_attempts": 0,
            "reservation": orjson.dumps(self.reservation).decode(),
        }


@dataclass(frozen=True)
class Claim:
    """A job this worker holds the lease of."""

    job: Job
    owner: str
    token: str


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its result (the synchronous answer's body), or its error body."""

    status: Literal["completed", "failed"]
    status_code: int
    result: Any = None
    error: Any = None


class JobQueue:
    """Jobs in the store: added, claimed, renewed, finished, cancelled, expired."""

    def __init__(self, store: JobStore, *, lease_s: float) -> None:
        self._store = store
        self._lease_ms = int(lease_s * 1000)

    async def add(self, job: Job) -> None:
        """Queue ``job``."""
        async with self._store.begin() as conn:
            await conn.execute(async_jobs.insert().values(**job.values()))

    async def get(self, job_id: str, now: int | None = None) -> Job | None:
        """The job ``job_id``, unless there is none or it has expired."""
        now = now_ms() if now is None else now
        async with self._store.connect() as conn:
            row = (
                await conn.execute(
                    select(async_jobs).where(_jobs.id == job_id, _jobs.expires_at > now)
                )
            ).first()
        return Job.of(row) if row is not None else None

    async def claim(self, owner: str) -> Claim | None:
        """The oldest runnable job, now leased to ``owner``; None when there is none."""
        now = now_ms()
        token = secrets.token_hex(16)
        runnable = and_(
            _jobs.expires_at > now,
            or_(
                and_(
                    _jobs.status == "pending",
                    or_(_jobs.lease_until.is_(None), _jobs.lease_until < now),
                ),
                and_(_jobs.status == "processing", _jobs.lease_until < now),
            ),
        )
        async with self._store.connect() as conn:
            # Looked for first without the write lock: an idle worker's poll takes none.
            if (await conn.execute(select(_jobs.id).where(runnable).limit(1))).first() is None:
                await conn.rollback()
                return None
            await conn.rollback()
            if self._store.backend == "sqlite":
                await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                found = (
                    await conn.execute(
                        select(_jobs.id)
                        .where(runnable)
                        .order_by(_jobs.created_at)
                        .limit(1)
                        .with_for_update(skip_locked=True)
                    )
                ).first()
                if found is None:
                    return None
                row = (
                    await conn.execute(
                        update(async_jobs)
                        .where(_jobs.id == found.id, runnable)
                        .values(
                            status="processing",
                            lease_owner=owner,
                            lease_token=token,
                            lease_until=now + self._lease_ms,
                            claims=_jobs.claims + 1,
                            started_at=now,
                        )
                        .returning(async_jobs)
                    )
                ).first()
        return Claim(Job.of(row), owner, token) if row is not None else None

    async def renew(self, claim: Claim) -> bool:
        """Extend the lease; False when it is no longer ours (taken over, or cancelled)."""
        async with self._store.begin() as conn:
            result = await conn.execute(
                update(async_jobs)
                .where(*_held(claim))
                .values(lease_until=now_ms() + self._lease_ms)
            )
        return bool(result.rowcount)

    async def release(self, claim: Claim, *, retry_after_s: float = 0.0) -> None:
        """Give the job back, to be claimed again (after ``retry_after_s``): a replica
        stopping, or one that does not have its upload."""
        async with self._store.begin() as conn:
            await conn.execute(
                update(async_jobs)
                .where(*_held(claim))
                .values(
                    status="pending",
                    lease_owner=None,
                    lease_token=None,
                    lease_until=now_ms() + int(retry_after_s * 1000),
                )
            )

    async def finish(self, claim: Claim, outcome: Outcome, *, webhook: bool) -> bool:
        """Record how the job ended, if its lease is still ours; whether it was (only then
        is its webhook due, at once)."""
        now = now_ms()
        values: dict[str, Any] = {
            "status": outcome.status,
            "status_code": outcome.status_code,
            "result": orjson.dumps(outcome.result).decode() if outcome.result is not None else None,
            "error": orjson.dumps(outcome.error).decode() if outcome.error is not None else None,
            "finished_at": now,
            "lease_owner": None,
            "lease_token": None,
            "lease_until": None,
        }
        if webhook:
            values |= {
                "webhook_state": "pending",
                "webhook_message_id": f"msg_{secrets.token_hex(12)}",
                "webhook_next_at": now,
            }
        async with self._store.begin() as conn:
            result = await conn.execute(update(async_jobs).where(*_held(claim)).values(**values))
        return bool(result.rowcount)

    async def cancel(self, job_id: str) -> tuple[Job | None, bool]:
        """Cancel the job if it has not ended: the job as it now is (None: no such job), and
        whether it was cancelled while it waited (no run holds its reservation then)."""
        now = now_ms()
        cancelled = {
            "status": "cancelled",
            "finished_at": now,
            "lease_owner": None,
            "lease_token": None,
            "lease_until": None,
        }
        async with self._store.begin() as conn:
            # Waiting, then running: one UPDATE each, so which it was is known for sure
            # however a claim races it.
            waited = await conn.execute(
                update(async_jobs)
                .where(_jobs.id == job_id, _jobs.status == "pending")
                .values(**cancelled)
            )
            if not waited.rowcount:
                await conn.execute(
                    update(async_jobs)
                    .where(_jobs.id == job_id, _jobs.status == "processing")
                    .values(**cancelled)
                )
            row = (await conn.execute(select(async_jobs).where(_jobs.id == job_id))).first()
        return (Job.of(row) if row is not None else None), bool(waited.rowcount)

    async def expire(self, now: int | None = None) -> list[tuple[str, dict[str, Any] | None]]:
        """Delete the jobs past their expiry, with their deliveries: their ids, each with
        its reservation when it expired before it ever ran (no run holds it to settle)."""
        now = now_ms() if now is None else now
        async with self._store.begin() as conn:
            rows = (
                await conn.execute(
                    delete(async_jobs)
                    .where(_jobs.expires_at <= now)
                    .returning(_jobs.id, _jobs.status, _jobs.reservation)
                )
            ).all()
            ids = [row.id for row in rows]
            if ids:
                await conn.execute(
                    delete(async_job_deliveries).where(async_job_deliveries.c.job_id.in_(ids))
                )
        return [
            (
                row.id,
                orjson.loads(row.reservation)
                if row.status == "pending" and row.reservation
                else None,
            )
            for row in rows
        ]

    async def waiting(self) -> int:
        """Jobs not yet ended (for a benchmark, or a test)."""
        async with self._store.connect() as conn:
            rows = await conn.execute(
                select(_jobs.id).where(_jobs.status.in_(("pending", "processing")))
            )
            return len(rows.all())


def _held(claim: Claim) -> tuple[Any, ...]:
    """The conditions under which ``claim``'s lease is still its own."""
    return (
        _jobs.id == claim.job.id,
        _jobs.status == "processing",
        _jobs.lease_token == claim.token,
    )
