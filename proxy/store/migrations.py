"""Versioned schema migrations, applied when the store opens.

Each migration is a version number and a function that changes the schema; the
``schema_migrations`` table records the versions applied. All pending ones run
in one transaction (PostgreSQL's and SQLite's DDL are both transactional), so a
failed start leaves the schema as it was. Replicas starting together take
turns: PostgreSQL through an advisory lock, SQLite through ``BEGIN IMMEDIATE``
(the file's write lock), and the second finds nothing left to do.

A migration builds the tables of its own version (a frozen copy, not
:mod:`.tables`), so it means the same thing after later ones change them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Double,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from ..config.schema import ConfigError
from .urls import Backend

#: Serializes migrations between replicas sharing a PostgreSQL store (any constant
#: this database does not otherwise use as an advisory lock key).
_LOCK_KEY = 0x7472616E736372  # "transcr"

_versions = Table(
    "schema_migrations",
    MetaData(),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("applied_at", BigInteger, nullable=False),
)


def _request_log_v1(conn: Connection) -> None:
    """The request log, with an index for each filter the log API offers."""
    table = Table(
        "request_log",
        MetaData(),
        Column("id", Text, primary_key=True),
        Column("parent_request_id", Text),
        Column("timestamp", BigInteger, nullable=False),
        Column("object", Text, nullable=False),
        Column("provider", Text),
        Column("model_requested", Text),
        Column("model_deployment", Text),
        Column("virtual_key_id", Text),
        Column("status", Text, nullable=False),
        Column("status_code", Integer),
        Column("error_code", Text),
        Column("latency", BigInteger),
        Column("first_event_latency", BigInteger),
        Column("stream", Boolean, nullable=False),
        Column("response_format", Text),
        Column("bytes_in", BigInteger),
        Column("audio_seconds", Double),
        Column("audio_seconds_source", Text),
        Column("cost", Double),
        Column("number_of_retries", Integer, nullable=False),
        Column("fallback_index", Integer),
        Column("cache_hit", Boolean, nullable=False),
        Column("replica", Text),
        Column("content", Text),
        Column("trace_id", Text),
    )
    c = table.c
    # A time range is part of nearly every query (and retention prunes by it); each
    # filter on a name leads with that name, so its range scan is short.
    Index("ix_request_log_timestamp", c.timestamp)
    Index("ix_request_log_key_time", c.virtual_key_id, c.timestamp)
    Index("ix_request_log_provider_time", c.provider, c.timestamp)
    Index("ix_request_log_model_time", c.model_requested, c.timestamp)
    Index("ix_request_log_deployment_time", c.model_deployment, c.timestamp)
    # A request's children (its realtime turns, its long-audio chunks).
    Index("ix_request_log_parent", c.parent_request_id)
    # The numeric filters and sort orders.
    Index("ix_request_log_latency", c.latency)
    Index("ix_request_log_cost", c.cost)
    Index("ix_request_log_audio_seconds", c.audio_seconds)
    table.create(conn)


def _usage_rollups_v2(conn: Connection) -> None:
    """Usage per hour and per day, with a 93-bin latency histogram (``l00``..``l92``)."""
    metadata = MetaData()
    Table(
        "usage_rollup",
        metadata,
        Column("grain", Text, primary_key=True),
        Column("dimension", Text, primary_key=True),
        Column("key", Text, primary_key=True),
        Column("start", BigInteger, primary_key=True, autoincrement=False),
        Column("value", Text, primary_key=True),
        Column("requests", BigInteger, nullable=False),
        Column("errors", BigInteger, nullable=False),
        Column("audio_seconds", Double, nullable=False),
        Column("cost", Double, nullable=False),
        Column("latency_p50", BigInteger),
        Column("latency_p95", BigInteger),
        *(Column(f"l{i:02d}", BigInteger, nullable=False) for i in range(93)),
    )
    Table(
        "usage_dirty",
        metadata,
        Column("start", BigInteger, primary_key=True, autoincrement=False),
        Column("marks", BigInteger, nullable=False),
    )
    metadata.create_all(conn)


def _async_jobs_v4(conn: Connection) -> None:
    """Async jobs (one row each: its lease, its result, its webhook's state) and every
    delivery attempt of their webhooks."""
    metadata = MetaData()
    jobs = Table(
        "async_jobs",
        metadata,
        Column("id", Text, primary_key=True),
        Column("task", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("request_id", Text, nullable=False),
        Column("caller_kind", Text, nullable=False),
        Column("virtual_key_id", Text),
        Column("model", Text, nullable=False),
        Column("fields", Text, nullable=False),
        Column("filename", Text, nullable=False),
        Column("content_type", Text, nullable=False),
        Column("headers", Text, nullable=False),
        Column("size", BigInteger, nullable=False),
        Column("sha256", Text, nullable=False),
        Column("length", Text),
        Column("created_at", BigInteger, nullable=False),
        Column("expires_at", BigInteger, nullable=False),
        Column("started_at", BigInteger),
        Column("finished_at", BigInteger),
        Column("claims", Integer, nullable=False),
        Column("lease_owner", Text),
        Column("lease_token", Text),
        Column("lease_until", BigInteger),
        Column("status_code", Integer),
        Column("result", Text),
        Column("error", Text),
        Column("webhook_url", Text),
        Column("webhook_message_id", Text),
        Column("webhook_state", Text),
        Column("webhook_attempts", Integer, nullable=False),
        Column("webhook_next_at", BigInteger),
        # What its submit reserved against its key's limits and budgets (JSON).
        Column("reservation", Text),
    )
    c = jobs.c
    # What a worker claims next, what the sweeper deletes, which deliveries are due.
    Index("ix_async_jobs_status_created", c.status, c.created_at)
    Index("ix_async_jobs_expires", c.expires_at)
    Index("ix_async_jobs_webhook_next", c.webhook_next_at)
    deliveries = Table(
        "async_job_deliveries",
        metadata,
        Column("id", Text, primary_key=True),
        Column("job_id", Text, nullable=False),
        Column("message_id", Text, nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("attempted_at", BigInteger, nullable=False),
        Column("outcome", Text, nullable=False),
        Column("status_code", Integer),
        Column("error", Text),
        Column("latency_ms", BigInteger, nullable=False),
        Column("next_attempt_at", BigInteger),
    )
    Index("ix_async_job_deliveries_job", deliveries.c.job_id, deliveries.c.attempted_at)
    metadata.create_all(conn)


def _governance_v3(conn: Connection) -> None:
    """Virtual keys, rate limits and budgets managed at run time (each in the config file's
    shape, as JSON), one version number every change moves on (what replicas poll), and
    the ids of deleted keys."""
    metadata = MetaData()
    entries = Table(
        "governance_entries",
        metadata,
        Column("kind", Text, primary_key=True),
        Column("id", Text, primary_key=True),
        Column("spec", Text, nullable=False),
        Column("rate_limit_id", Text),
        Column("budget_id", Text),
        Column("value_hash", Text, unique=True),
        Column("value_last4", Text),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
        Column("actor", Text, nullable=False),
    )
    # What a deleted rate limit or budget is still named by.
    Index("ix_governance_entries_rate_limit", entries.c.rate_limit_id)
    Index("ix_governance_entries_budget", entries.c.budget_id)
    version = Table(
        "governance_version",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("version", BigInteger, nullable=False),
    )
    # Deleted keys' ids, never reused: logs, usage, counters and JWTs name keys by id.
    Table(
        "governance_retired",
        metadata,
        Column("kind", Text, primary_key=True),
        Column("id", Text, primary_key=True),
        Column("retired_at", BigInteger, nullable=False),
    )
    metadata.create_all(conn)
    conn.execute(version.insert().values(id=1, version=0))


def _change_authors_v5(conn: Connection) -> None:
    """Who made an operator's change, and to what, on its request log row."""
    for name in ("actor", "subject"):
        conn.execute(text(f"ALTER TABLE request_log ADD COLUMN {name} TEXT"))


@dataclass(frozen=True)
class Migration:
    """One step of the schema's history."""

    version: int
    name: str
    apply: Callable[[Connection], None]


#: What the log API's filters, stats and pages read of a row (the id last: a page is
#: chosen by id before its rows are read). An index that holds them all answers a
#: filtered page's count, sums and p95 from the index alone (SQLite's covering index,
#: PostgreSQL's index-only scan) instead of one table lookup per row selected.
_LOG_FILTERED_COLUMNS = (
    "timestamp",
    "status",
    "object",
    "provider",
    "virtual_key_id",
    "model_requested",
    "model_deployment",
    "latency",
    "cost",
    "audio_seconds",
    "id",
)


def _covering_log_indexes_v6(conn: Connection) -> None:
    """The request log's indexes made covering: led by time, key and provider; by
    status for the rows that did not succeed (few, and what an operator looks for); by
    latency for the stats' p95 and that sort order. The narrow ones they replace sent
    SQLite's planner, which keeps no statistics of its own, down one index while it
    looked every row up in the table: stats over a million rows took hundreds of
    milliseconds, and now take tens, with fewer indexes to write (README, "The request
    log")."""
    for old in (
        "timestamp",
        "key_time",
        "provider_time",
        "model_time",
        "deployment_time",
        "latency",
        "cost",
        "audio_seconds",
    ):
        conn.execute(text(f"DROP INDEX ix_request_log_{old}"))
    for name, leading, only in (
        ("time", ("timestamp",), ""),
        ("key_time", ("virtual_key_id", "timestamp"), ""),
        ("provider_time", ("provider", "timestamp"), ""),
        # Its WHERE is the one log_queries.conditions writes out for such a filter.
        ("unsuccessful", ("status", "timestamp"), " WHERE status <> 'success'"),
        ("latency", ("latency",), ""),
    ):
        columns = leading + tuple(c for c in _LOG_FILTERED_COLUMNS if c not in leading)
        listed = ", ".join(f'"{column}"' for column in columns)
        conn.execute(
            text(f"CREATE INDEX ix_request_log_{name}_cover ON request_log ({listed}){only}")
        )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "request log", _request_log_v1),
    Migration(2, "usage rollups", _usage_rollups_v2),
    Migration(3, "governance at run time", _governance_v3),
    Migration(4, "async jobs and webhook deliveries", _async_jobs_v4),
    Migration(5, "who made an operator's change", _change_authors_v5),
    Migration(6, "covering indexes for the log's filters", _covering_log_indexes_v6),
)

#: The schema version this code reads and writes (the highest: versions may land out of
#: order, and each is applied when missing).
LATEST = max(migration.version for migration in MIGRATIONS)


async def migrate(engine: AsyncEngine, backend: Backend, where: str) -> list[int]:
    """Apply the migrations the store lacks; the versions applied now (none: up to date).

    A store whose schema is newer than this code is a :class:`ConfigError` naming
    ``where`` (an older proxy must not write to a schema it does not know).
    """
    async with engine.connect() as conn:
        if backend == "sqlite":
            # Takes the write lock at BEGIN: two processes cannot both read the
            # versions as missing and then both apply them.
            await conn.execution_options(sqlite_begin="IMMEDIATE")
        async with conn.begin():
            if backend == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            await conn.run_sync(lambda sync: _versions.create(sync, checkfirst=True))
            applied = set((await conn.execute(select(_versions.c.version))).scalars())
            newest = max(applied, default=0)
            if newest > LATEST:
                raise ConfigError(
                    f"{where}: the store's schema is version {newest}, newer than this "
                    f"proxy's ({LATEST}): run the newer proxy, or use another store"
                )
            done = []
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                await conn.run_sync(migration.apply)
                await conn.execute(
                    _versions.insert().values(
                        version=migration.version,
                        name=migration.name,
                        applied_at=int(time.time() * 1000),
                    )
                )
                done.append(migration.version)
            return done
