"""Opening the store: one async SQLAlchemy engine over SQLite or PostgreSQL, migrated.

SQLite runs in WAL mode (readers never wait for the writer, nor it for them)
with a busy timeout (writers from several processes wait their turn rather than
fail); PostgreSQL through a pool of ``proxy.store_pool_size`` connections, each
checked before use so a restarted server costs no failed statement.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, event
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..config.schema import ConfigError
from .migrations import migrate
from .urls import Backend, check_store_url, redacted

log = logging.getLogger(__name__)

_CLASS_PREFIX = re.compile(r"^<class '[\w.]+'>: ")

#: How long a SQLite writer waits for another's lock before its statement fails.
SQLITE_BUSY_TIMEOUT_MS = 5000
#: Longest wait for a PostgreSQL connection to open, and for one statement.
PG_CONNECT_TIMEOUT_S = 10.0
PG_STATEMENT_TIMEOUT_S = 60.0
#: SQLite's lock wait while migrating: as long as another replica's migration takes.
MIGRATION_WAIT_MS = 3_600_000


@dataclass
class Store:
    """An open store: its engine, which backend it is, and its URL without the password."""

    engine: AsyncEngine
    backend: Backend
    url: str

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    @asynccontextmanager
    async def serialized(
        self, lock: Callable[[AsyncConnection], Awaitable[object]]
    ) -> AsyncIterator[AsyncConnection]:
        """A transaction that runs alone among those of its kind, on every replica: SQLite
        takes the file's write lock at BEGIN; on PostgreSQL ``lock`` takes, first thing,
        the lock that stands for the kind (a row FOR UPDATE, an advisory lock)."""
        async with self.engine.connect() as conn:
            if self.backend == "sqlite":
                await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                if self.backend == "postgresql":
                    await lock(conn)
                yield conn


async def open_store(
    url: str,
    *,
    pool_size: int = 5,
    where: str = "proxy.store",
    sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
) -> Store:
    """Connect to the store at ``url`` and bring its schema up to date.

    A SQLite file's directory is created if missing. A URL that does not connect or
    migrate is a :class:`ConfigError` naming ``where``, the URL without its password,
    and why (the CLI prints it and exits; no stack trace).
    """
    backend, driver_url = check_store_url(url, where)
    shown = redacted(url)
    # Migrations run on an engine of their own whose waits have no limit: building an
    # index over millions of rows (or waiting for another replica that is) takes longer
    # than any statement of a request's may.
    migrating = _engine(
        backend, driver_url, where, shown, pool_size=1, busy_timeout_ms=MIGRATION_WAIT_MS
    )
    try:
        applied = await migrate(migrating, backend, where)
    except (SQLAlchemyError, OSError) as exc:
        raise ConfigError(f"{where}: cannot open {shown}: {describe(exc)}") from None
    finally:
        await migrating.dispose()
    if applied:
        log.info("store %s: schema migrated to version %d", shown, applied[-1])
    engine = _engine(
        backend,
        driver_url,
        where,
        shown,
        pool_size=pool_size,
        busy_timeout_ms=sqlite_busy_timeout_ms,
        statement_timeout_s=PG_STATEMENT_TIMEOUT_S,
    )
    try:
        # Its first connection now, kept by the pool: open from the start, as the files
        # it holds (SQLite's WAL) are, rather than at the first request's row.
        async with engine.connect():
            pass
    except (SQLAlchemyError, OSError) as exc:
        await engine.dispose()
        raise ConfigError(f"{where}: cannot open {shown}: {describe(exc)}") from None
    return Store(engine=engine, backend=backend, url=shown)


def _engine(
    backend: Backend,
    driver_url: URL,
    where: str,
    shown: str,
    *,
    pool_size: int,
    busy_timeout_ms: int,
    statement_timeout_s: float | None = None,
) -> AsyncEngine:
    """A store's engine: SQLite's writers wait ``busy_timeout_ms`` for the file's lock;
    PostgreSQL's statements run ``statement_timeout_s`` at most (None: no limit)."""
    if backend == "sqlite":
        return _sqlite_engine(driver_url.database or "", busy_timeout_ms, where, shown)
    return create_async_engine(
        driver_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        connect_args={
            "timeout": PG_CONNECT_TIMEOUT_S,
            "command_timeout": statement_timeout_s,
            "server_settings": {"application_name": "transcription-proxy"},
        },
    )


def _sqlite_engine(path: str, busy_timeout_ms: int, where: str, shown: str) -> AsyncEngine:
    directory = Path(path).parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot create {directory} for {shown}: {exc.strerror or exc}"
        ) from None
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling begins transactions only before
        # DML and commits around DDL; ours (below) makes migrations atomic.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # In WAL mode NORMAL loses no consistency, only the last commits at a power
        # cut; FULL would sync the disk on every batch.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}" if mode == "IMMEDIATE" else "BEGIN")

    return engine


def describe(exc: BaseException) -> str:
    """A database failure in one line, without the SQL or SQLAlchemy's help links."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        # The driver's own words ("database "x" does not exist"), less its class's name.
        lines = str(exc.orig).strip().splitlines()
        return _CLASS_PREFIX.sub("", lines[0]) if lines else type(exc.orig).__name__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
