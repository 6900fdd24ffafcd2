"""The request log's writer: rows go to a bounded queue and a background task writes them
in batches, off the request path; a live tail fans written rows out to subscribers; the
usage rollups of passed hours are brought up to date, and rows past their retention
pruned, in the background.

``add`` never waits and never raises. While the store is slow or unreachable rows wait
in the queue; past its bound new rows are dropped and counted (``on_dropped``, the
owner's metric), with one log line per burst of drops rather than one per row. A
batch the database refuses (a full disk, any other error) is dropped and counted, and
the writer goes on with the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from itertools import islice
from types import TracebackType
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.sql.dml import Insert

from ..config.schema import LogsSettings
from .engine import Store, describe
from .log_filters import LogFilters
from .log_rows import COLUMNS, LogRow, as_params, entry
from .tables import request_log
from .usage import UsageRollups, hours_of, mark_dirty

log = logging.getLogger(__name__)

DropReason = Literal["queue_full", "store_error", "shutdown"]
#: Told how many rows were dropped, and why (wired to ``proxy_log_rows_dropped_total``).
OnDropped = Callable[[int, DropReason], None]

#: Between tries while the store is unreachable: from the first to the longest.
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0
#: How often passed hours' usage is rolled up (the usage API reads the rows of
#: hours not rolled up yet, so this bounds how many it reads, not what it shows).
ROLLUP_INTERVAL_S = 60.0
#: Rows deleted per statement when pruning (each a short write lock, not one long one).
PRUNE_BATCH = 5000
#: Rows one live-tail subscriber may have unread before more are dropped for it.
SUBSCRIBER_MAX_ROWS = 1000

#: asyncpg's SQLSTATEs for a connection that failed or a server going away or full.
_PG_UNREACHABLE = ("08", "57P01", "57P02", "57P03", "53300")
#: SQLite's SQLITE_BUSY and SQLITE_LOCKED: another writer held the file past the timeout.
_SQLITE_BUSY = (5, 6)

_Outcome = Literal["written", "failed", "unreachable"]


class Subscription:
    """A live tail: the rows matching its filters, as they are written.

    An async iterator of log entries (the API's shape); it ends when it is closed or
    the log closes. A subscriber that falls ``max_rows`` behind misses rows rather
    than slowing the writer (``dropped`` counts them). Use it as ``async with``, or
    ``aclose`` it, so the writer stops offering it rows.
    """

    def __init__(
        self, filters: LogFilters, max_rows: int, unsubscribe: Callable[[Subscription], None]
    ) -> None:
        self.filters = filters
        #: Rows this subscriber missed by falling behind.
        self.dropped = 0
        self._max_rows = max_rows
        self._rows: deque[dict[str, Any]] = deque()
        self._ready = asyncio.Event()
        self._ended = False
        self._unsubscribe = unsubscribe

    def offer(self, row: dict[str, Any]) -> None:
        """A written row for this subscriber: queued, or dropped when it is behind."""
        if self._ended:
            return
        if len(self._rows) >= self._max_rows:
            self.dropped += 1
            return
        self._rows.append(row)
        self._ready.set()

    def end(self) -> None:
        """No more rows: the iterator ends once the ones queued are read."""
        self._ended = True
        self._ready.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._rows:
            if self._ended:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._rows.popleft()

    async def aclose(self) -> None:
        """Stop receiving rows."""
        self._unsubscribe(self)
        self.end()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class RequestLog:
    """The request log's writer, live tail and retention, over an open :class:`Store`.

    Call :meth:`start` in the running loop, :meth:`add` from its thread, and
    :meth:`close` at shutdown (it flushes what it can within its timeout).
    """

    def __init__(
        self,
        store: Store,
        settings: LogsSettings,
        *,
        on_dropped: OnDropped | None = None,
        prune_interval_s: float = 3600.0,
        rollup_interval_s: float = ROLLUP_INTERVAL_S,
    ) -> None:
        self._store = store
        self._settings = settings
        self._on_dropped = on_dropped
        self._prune_interval_s = prune_interval_s
        self._rollup_interval_s = rollup_interval_s
        self._interval_s = settings.flush_interval_ms / 1000
        self._upsert = _upsert(store)
        self._mark_dirty = mark_dirty(store)
        #: The usage rollups this log's rows feed.
        self.rollups = UsageRollups(store)
        #: Rows waiting, each with when it came (``time.monotonic``).
        self._queue: deque[tuple[float, LogRow]] = deque()
        self._wake = asyncio.Event()
        self._subscribers: set[Subscription] = set()
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._roller: asyncio.Task[None] | None = None
        self._closing = False
        #: Write what is queued without waiting for the flush interval (``flush``).
        self._hurry = False
        # Bursts, each logged once: rows dropped at the full queue, failed batches,
        # the store unreachable.
        self._full_dropped = 0
        self._failed_rows = 0
        self._failed_batches = 0
        self._unreachable_since: float | None = None
        #: Rows written, and rows dropped for any reason, since start.
        self.written = 0
        self.dropped = 0
        #: The most rows that have waited at once.
        self.high_water = 0

    @property
    def pending(self) -> int:
        """Rows waiting to be written (the batch being written included)."""
        return len(self._queue)

    def start(self) -> None:
        """Start the writer, the usage rollups and, with a retention, the pruner."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(), name="request-log-writer")
        if self._roller is None:
            self._roller = asyncio.create_task(self._roll_forever(), name="request-log-rollups")
        if self._pruner is None and self._settings.retention_days > 0:
            self._pruner = asyncio.create_task(self._prune_forever(), name="request-log-pruner")

    def add(self, row: LogRow) -> None:
        """Queue ``row`` to be written; never waits, never raises. Past the queue's
        bound (or once closing) the row is dropped and counted."""
        if self._closing:
            self._drop(1, "shutdown")
            return
        if len(self._queue) >= self._settings.queue_max_rows:
            if self._full_dropped == 0:
                log.warning(
                    "request log: %d rows waiting, the most the queue holds; new rows are "
                    "dropped until the store catches up",
                    len(self._queue),
                )
            self._full_dropped += 1
            self._drop(1, "queue_full")
            return
        if self._full_dropped:
            log.warning(
                "request log: %d rows were dropped while the queue was full", self._full_dropped
            )
            self._full_dropped = 0
        if not self._settings.content and row.content is not None:
            row = replace(row, content=None)
        self._queue.append((time.monotonic(), row))
        waiting = len(self._queue)
        self.high_water = max(self.high_water, waiting)
        # The writer sleeps until a first row starts the flush interval, or a full batch.
        if waiting == 1 or waiting >= self._settings.batch_max_rows:
            self._wake.set()

    def subscribe(
        self, filters: LogFilters | None = None, *, max_rows: int = SUBSCRIBER_MAX_ROWS
    ) -> Subscription:
        """A live tail of the rows matching ``filters`` (all rows when None), from the
        next batch written on."""
        subscription = Subscription(filters or LogFilters(), max_rows, self._subscribers.discard)
        if self._closing:
            subscription.end()
        else:
            self._subscribers.add(subscription)
        return subscription

    async def flush(self, timeout_s: float) -> bool:
        """Write every row added so far now, without waiting for the flush interval;
        whether they were all written (or dropped) within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
            self._hurry = True
            self._wake.set()
            await asyncio.sleep(0.005)
        return not self._queue

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued within ``timeout_s``, then stop; rows still waiting then
        are dropped and counted. Live tails end."""
        self._closing = True
        self._wake.set()
        for task in (self._pruner, self._roller):
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
        if self._writer is not None:
            done, _ = await asyncio.wait({self._writer}, timeout=timeout_s)
            if not done:
                self._writer.cancel()
                await asyncio.wait({self._writer})
        if self._queue:
            log.warning("request log: %d rows not written at shutdown", len(self._queue))
            self._drop(len(self._queue), "shutdown")
            self._queue.clear()
        for subscription in list(self._subscribers):
            subscription.end()
        self._subscribers.clear()

    async def prune(self, now: float | None = None) -> int:
        """Delete the rows older than ``logs.retention_days`` (and the usage rollups of
        hours and days wholly before then); how many rows."""
        cutoff_s = (time.time() if now is None else now) - self._settings.retention_days * 86400
        cutoff = int(cutoff_s * 1000)
        c = request_log.c
        total = 0
        while True:
            oldest = select(c.id).where(c.timestamp < cutoff).limit(PRUNE_BATCH).scalar_subquery()
            async with self._store.engine.begin() as conn:
                result = await conn.execute(delete(request_log).where(c.id.in_(oldest)))
            total += result.rowcount
            if result.rowcount < PRUNE_BATCH:
                async with self._store.engine.begin() as conn:
                    await self.rollups.prune(conn, cutoff)
                return total

    # --- the writer ------------------------------------------------------------------------

    async def _write_forever(self) -> None:
        retry_s = RETRY_FIRST_S
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._hurry = False
                self._wake.clear()
                await self._wake.wait()
                continue
            batch_max = self._settings.batch_max_rows
            if len(self._queue) < batch_max and not (self._closing or self._hurry):
                delay = self._queue[0][0] + self._interval_s - time.monotonic()
                if delay > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                    continue
            # Rows stay queued while they are written: an unreachable store keeps them,
            # and they count against the queue's bound meanwhile.
            batch = [row for _, row in islice(self._queue, batch_max)]
            outcome = await self._write(batch)
            if outcome == "unreachable":
                # No sooner when closing: the close's own timeout decides when to give up.
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, RETRY_MAX_S)
                continue
            retry_s = RETRY_FIRST_S
            for _ in batch:
                self._queue.popleft()

    async def _write(self, batch: list[LogRow]) -> _Outcome:
        # One statement per batch; a row added again (its final state after
        # "processing") replaces the earlier one, here and in the table.
        latest = {row.id: row for row in batch}
        params = [as_params(row) for row in latest.values()]
        try:
            async with self._store.engine.begin() as conn:
                await conn.execute(self._upsert, params)
                # Their hours' usage is recomputed once each hour has passed.
                await conn.execute(self._mark_dirty, hours_of(p["timestamp"] for p in params))
        except Exception as exc:  # whatever it is, the writer goes on with the next batch
            if _unreachable(exc):
                if self._unreachable_since is None:
                    self._unreachable_since = time.monotonic()
                    log.warning(
                        "request log: the store %s is unreachable (%s); rows wait in the "
                        "queue (at most %d)",
                        self._store.url,
                        describe(exc),
                        self._settings.queue_max_rows,
                    )
                return "unreachable"
            if self._failed_batches == 0:
                log.error(
                    "request log: a batch of %d rows could not be written (%s); it is "
                    "dropped, and so is each batch until writing works again",
                    len(batch),
                    describe(exc),
                )
            self._failed_batches += 1
            self._failed_rows += len(batch)
            self._drop(len(batch), "store_error")
            return "failed"
        self._recovered()
        self.written += len(params)
        if self._subscribers:
            self._publish(latest.values(), params)
        return "written"

    def _recovered(self) -> None:
        if self._unreachable_since is not None:
            log.warning(
                "request log: the store is reachable again after %.1f s; %d rows waiting",
                time.monotonic() - self._unreachable_since,
                len(self._queue),
            )
            self._unreachable_since = None
        if self._failed_batches:
            log.warning(
                "request log: writing again; %d rows in %d batches were dropped",
                self._failed_rows,
                self._failed_batches,
            )
            self._failed_batches = self._failed_rows = 0

    def _publish(self, rows: Any, params: list[dict[str, Any]]) -> None:
        for row, columns in zip(rows, params, strict=True):
            shown: dict[str, Any] | None = None
            for subscription in self._subscribers:
                if subscription.filters.matches(row):
                    shown = shown or entry(columns)
                    subscription.offer(shown)

    def _drop(self, count: int, reason: DropReason) -> None:
        self.dropped += count
        if self._on_dropped is not None:
            try:
                self._on_dropped(count, reason)
            except Exception:  # the owner's metric must not break a request
                log.exception("request log: the dropped-rows callback failed")

    # --- rollups and retention ----------------------------------------------------------

    async def _roll_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._rollup_interval_s)
            try:
                await self.rollups.roll_up()
            except Exception as exc:  # logged once, tried again next time
                if not failing:
                    log.warning("request log: rolling up usage failed (%s)", describe(exc))
                failing = True
            else:
                failing = False

    async def _prune_forever(self) -> None:
        while True:
            try:
                pruned = await self.prune()
            except Exception as exc:  # logged, tried again next time
                log.warning("request log: pruning old rows failed (%s)", describe(exc))
            else:
                if pruned:
                    log.info(
                        "request log: pruned %d rows older than %g days",
                        pruned,
                        self._settings.retention_days,
                    )
            await asyncio.sleep(self._prune_interval_s)


def _upsert(store: Store) -> Insert:
    """``INSERT ... ON CONFLICT (id) DO UPDATE``: the same statement on both backends,
    from each one's dialect."""
    insert = sqlite_insert if store.backend == "sqlite" else postgresql_insert
    statement = insert(request_log)
    return statement.on_conflict_do_update(
        index_elements=[request_log.c.id],
        set_={name: statement.excluded[name] for name in COLUMNS if name != "id"},
    )


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot be reached right now (refused, gone, busy,
    out of connections), so the rows should wait, rather than that it refused them."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    for cause in _causes(exc):
        if isinstance(cause, OSError | PoolTimeoutError):
            return True
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_PG_UNREACHABLE):
            return True
        code = getattr(cause, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _SQLITE_BUSY:
            return True
    return False


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the driver's error it wraps, and what caused each (a bounded walk)."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 16:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        yield current
        for linked in (
            getattr(current, "orig", None),
            current.__cause__,
            current.__context__,
        ):
            if isinstance(linked, BaseException):
                todo.append(linked)
