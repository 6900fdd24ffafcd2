"""The jobs' parts put together for one app, and their lifetime (a ``cleanup_ctx``).

At start: the spool directory is made, the store found (the request log's) or opened, the
workers, the webhook sender and the sweeper started. At cleanup (after the
drain): the workers stop and hand their jobs back, the rest stops.

A spool directory that cannot be made or a store that cannot be opened at start
(a read-only ``data_dir``, a database that is down) leaves the proxy without
jobs (a warning), as governance does: the job endpoints answer 503, and the
start, and everything else, goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from ..app_state import CONFIG_KEY, GOVERNOR_KEY, METRICS_KEY
from ..config import ConfigError
from ..config.schema import JobsSettings
from ..errors import InvalidRequestError, store_unreachable
from ..governance.credentials import Caller
from ..governance.governor import Governor
from ..governance.held import release
from ..store.app_key import STORE_KEY
from ..store.engine import Store, open_store
from .deliveries import Deliveries
from .delivery import WebhookPolicy, WebhookSender, webhook_session
from .queue import Claim, JobQueue
from .runner import JobRunner
from .spool import JobSpool
from .store import JobStore
from .sweeper import Sweeper
from .worker import Workers

log = logging.getLogger(__name__)

#: The request header that sets how long a job's result is kept (seconds).
TTL_HEADER = "x-bf-async-job-result-ttl"


@dataclass(frozen=True)
class WebhookSecrets:
    """Which secret signs a job's webhook: its virtual key's own, else the global one."""

    # Never in a repr (a log line, a traceback's locals): they sign every webhook.
    default: str | None = field(repr=False)
    #: Webhook secrets of the virtual keys that have their own.
    by_key: Mapping[str, str] = field(repr=False)

    def of_key(self, key_id: str | None) -> str | None:
        """The secret of ``key_id``'s jobs (None: the caller has no key)."""
        own = self.by_key.get(key_id) if key_id is not None else None
        return own or self.default

    def of_caller(self, caller: Caller) -> str | None:
        """The secret ``caller``'s jobs are signed with."""
        return self.of_key(caller.virtual_key.id if caller.virtual_key is not None else None)


@dataclass
class Jobs:
    """This app's jobs: the queue, the spool, the workers, the webhooks."""

    settings: JobsSettings
    queue: JobQueue
    spool: JobSpool
    policy: WebhookPolicy
    secrets: WebhookSecrets
    workers: Workers
    deliveries: Deliveries
    governor: Governor

    async def release(self, reservation: dict[str, Any]) -> None:
        """Give back what a job's submit reserved: it ended without a run to settle it."""
        await release(self.governor, reservation)

    def ttl_of(self, headers: Mapping[str, str]) -> float:
        """Seconds the job's result is kept: the header's (within the max), else the default."""
        raw = headers.get(TTL_HEADER)
        if raw is None:
            return self.settings.result_ttl_s
        try:
            ttl = int(raw.strip())
        except ValueError:
            ttl = 0
        if ttl <= 0:
            raise InvalidRequestError(
                f"{TTL_HEADER} must be a whole number of seconds above 0",
                code="invalid_result_ttl",
                param=TTL_HEADER,
            )
        return min(float(ttl), self.settings.max_result_ttl_s)


JOBS_KEY = web.AppKey("jobs", Jobs)


def jobs_of(app: web.Application) -> Jobs:
    """The app's jobs, or the 503 of a proxy whose jobs could not start."""
    jobs = app.get(JOBS_KEY)
    if jobs is None:
        raise store_unreachable("async jobs", "jobs_unavailable")
    return jobs


async def jobs_context(app: web.Application) -> AsyncIterator[None]:
    """The jobs' lifetime. Comes after the stores and upstreams: jobs run through them."""
    config = app[CONFIG_KEY]
    settings = config.proxy.jobs
    directory = settings.spool_dir or os.path.join(config.proxy.data_dir, "jobs")
    # On PostgreSQL the store the request log opened (when it did); on SQLite one of
    # their own, whose one connection the jobs take turns on (:mod:`.store`).
    shared: Store | None = app.get(STORE_KEY)
    if shared is not None and shared.backend != "postgresql":
        shared = None
    try:
        await asyncio.to_thread(os.makedirs, directory, exist_ok=True)
        store = shared or await open_store(
            config.proxy.store_url, pool_size=config.proxy.store_pool_size
        )
    except (SQLAlchemyError, OSError, ConfigError) as exc:
        # Jobs came after the rest of the proxy: they must not be what stops a start
        # that worked without them.
        log.warning("async jobs: cannot start (%s); the job endpoints answer 503", exc)
        yield
        return
    job_store = JobStore(store)
    queue = JobQueue(job_store, lease_s=settings.lease_s)
    spool = JobSpool(directory, settings.max_spool_bytes, app[METRICS_KEY].spool_bytes)
    policy = WebhookPolicy(settings.webhook_allowed_hosts)
    session = webhook_session(policy)
    webhook_secrets = WebhookSecrets(
        settings.webhook_secret,
        {
            key.id: key.webhook_secret
            for key in config.governance.virtual_keys
            if key.webhook_secret is not None
        },
    )
    deliveries = Deliveries(
        job_store,
        WebhookSender(session, policy, settings.webhook_timeout_s),
        secret_of=lambda job: webhook_secrets.of_key(job.virtual_key_id),
        schedule_s=settings.webhook_retry_schedule_s,
        timeout_s=settings.webhook_timeout_s,
        poll_interval_s=settings.poll_interval_s,
    )

    async def finished(claim: Claim) -> None:
        """A job ended: its webhook is due, and its upload no longer needed."""
        deliveries.wake()
        await spool.remove(spool.path_of(claim.job.id))

    governor = app[GOVERNOR_KEY]

    async def given_back(reservation: dict[str, Any]) -> None:
        await release(governor, reservation)

    workers = Workers(
        queue,
        JobRunner(app, spool, given_back),
        count=settings.workers,
        owner=f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}",
        lease_s=settings.lease_s,
        poll_interval_s=settings.poll_interval_s,
        on_finished=finished,
        release=given_back,
    )
    app[JOBS_KEY] = Jobs(
        settings, queue, spool, policy, webhook_secrets, workers, deliveries, governor
    )
    sweeper = Sweeper(
        queue,
        spool,
        interval_s=settings.sweep_interval_s,
        max_ttl_s=settings.max_result_ttl_s,
        release=given_back,
    )
    background = [
        asyncio.create_task(deliveries.run_forever()),
        asyncio.create_task(sweeper.run_forever()),
    ]
    workers.start()
    try:
        yield
    finally:
        await workers.stop()
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await session.close()
        if shared is None:
            await store.close()
