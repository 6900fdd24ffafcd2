"""The request log's writer: batches off the request path, a bounded queue while the store
is slow or down, dropped batches on database errors, the live tail, retention."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import string
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from multidict import MultiDict
from sqlalchemy import event, func, select, text

from proxy.config.schema import LogsSettings
from proxy.store.engine import Store, open_store
from proxy.store.log_filters import LogFilters
from proxy.store.log_queries import LogQueries
from proxy.store.log_rows import MAX_MODEL_CHARS, LogRow, as_params, entry
from proxy.store.request_log import DropReason, RequestLog
from proxy.store.tables import request_log, usage_rollup
from tests.helpers.log_rows import log_row
from tests.helpers.postgres import PostgresServer

LOGGER = "proxy.store.request_log"


class Drops:
    """What ``on_dropped`` was told."""

    def __init__(self) -> None:
        self.counts: dict[DropReason, int] = {}

    def __call__(self, count: int, reason: DropReason) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count


async def _count(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(request_log))).scalar_one())


@pytest.fixture
async def drops() -> Drops:
    return Drops()


def _log(store: Store, drops: Drops | None = None, **settings: Any) -> RequestLog:
    log = RequestLog(store, LogsSettings(**settings), on_dropped=drops)
    log.start()
    return log


@pytest.fixture
async def request_log_(store: Store, drops: Drops) -> AsyncIterator[RequestLog]:
    log = _log(store, drops, batch_max_rows=100, flush_interval_ms=50, content=True)
    yield log
    await log.close()


async def test_rows_are_written_in_batches_and_read_back_field_for_field(store: Store) -> None:
    statements: list[int] = []

    @event.listens_for(store.engine.sync_engine, "before_cursor_execute")
    def count(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        if sql.startswith("INSERT INTO request_log"):
            statements.append(len(params) if many else 1)

    log = _log(store, batch_max_rows=100, flush_interval_ms=60_000, content=True)
    full = LogRow(
        id="req-full",
        object="realtime.turn",
        timestamp=round(time.time()) - 60 + 0.123,
        parent_request_id="sess-1",
        provider="azure",
        model_requested="whisper-1",
        model_deployment="my-whisper",
        virtual_key_id="team-b",
        status="error",
        status_code=502,
        error_code="bad_gateway",
        latency=1234,
        first_event_latency=321,
        stream=True,
        response_format="verbose_json",
        bytes_in=123_456_789_012,
        audio_seconds=61.25,
        audio_seconds_source="container",
        cost=0.006125,
        number_of_retries=2,
        fallback_index=1,
        cache_hit=True,
        replica="replica-7",
        content="the words, said",
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )
    log.add(full)
    for number in range(249):
        log.add(log_row(number))
    assert await log.flush(10)
    await log.close()
    # 250 rows, at most 100 a statement: three statements, each many rows.
    assert statements == [100, 100, 50]
    assert log.written == 250
    shown = await LogQueries(store).log("req-full")
    assert shown is not None
    assert shown.pop("children") == []
    assert shown == entry(as_params(full))
    assert shown["timestamp"].endswith(".123Z")


async def test_rows_outlive_a_restart(store_url: str) -> None:
    store = await open_store(store_url)
    log = _log(store)
    for number in range(30):
        log.add(log_row(number))
    await log.close()  # flushes
    await store.close()
    again = await open_store(store_url)
    try:
        assert await _count(again) == 30
        assert (await LogQueries(again).log("req-00029")) is not None
    finally:
        await again.close()


async def test_a_row_added_again_replaces_the_first(store: Store, request_log_: RequestLog) -> None:
    request_log_.add(log_row(1, status="processing", status_code=None, latency=None))
    assert await request_log_.flush(5)
    request_log_.add(log_row(1, status="success", latency=900))
    # Both states of another request in one batch: the later one is kept.
    request_log_.add(log_row(2, status="processing", latency=None))
    request_log_.add(log_row(2, status="error", status_code=500, latency=50))
    assert await request_log_.flush(5)
    queries = LogQueries(store)
    assert await _count(store) == 2
    first, second = await queries.log("req-00001"), await queries.log("req-00002")
    assert first is not None
    assert (first["status"], first["latency"]) == ("success", 900)
    assert second is not None
    assert (second["status"], second["status_code"]) == ("error", 500)


async def test_content_is_kept_only_when_logs_content_is_on(store: Store) -> None:
    log = _log(store, content=False)
    log.add(log_row(1, content="private words"))
    await log.close()
    shown = await LogQueries(store).log("req-00001")
    assert shown is not None
    assert shown["content"] is None


async def test_text_with_nul_characters_costs_no_batch(
    store: Store, request_log_: RequestLog, drops: Drops
) -> None:
    request_log_.add(log_row(1, content="before\x00after", provider="open\x00ai"))
    request_log_.add(log_row(2))
    assert await request_log_.flush(5)
    assert drops.counts == {}
    shown = await LogQueries(store).log("req-00001")
    assert shown is not None
    assert shown["content"] == "before\ufffdafter"


async def test_a_database_error_drops_its_batch_and_the_writer_goes_on(
    store: Store, drops: Drops, caplog: pytest.LogCaptureFixture
) -> None:
    async with store.engine.begin() as conn:
        if store.backend == "sqlite":
            await conn.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON request_log "
                    "WHEN NEW.provider = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
                )
            )
        else:
            await conn.execute(
                text(
                    "ALTER TABLE request_log ADD CONSTRAINT poison "
                    "CHECK (provider IS DISTINCT FROM 'poison')"
                )
            )
    # Each burst of 10 rows is one batch (the interval is long: only full batches go).
    log = _log(store, drops, batch_max_rows=10, flush_interval_ms=60_000)
    caplog.set_level(logging.WARNING, LOGGER)
    for burst in range(4):
        for number in range(burst * 10, burst * 10 + 10):
            poisoned = burst in (1, 2) and number % 10 == 3
            log.add(log_row(number, provider="poison" if poisoned else "openai"))
        assert await log.flush(5)
    await log.close()
    assert drops.counts == {"store_error": 20}
    assert log.dropped == 20
    assert await _count(store) == 20
    # One line for the run of failed batches, one when writing works again.
    failed = [r for r in caplog.records if "could not be written" in r.message]
    recovered = [r for r in caplog.records if "writing again" in r.message]
    assert len(failed) == 1
    assert len(recovered) == 1
    assert "20 rows in 2 batches" in recovered[0].message


async def test_a_full_disk_drops_batches_until_there_is_room(tmp_path: Path, drops: Drops) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/proxy.sqlite3")
    full = True

    @event.listens_for(store.engine.sync_engine, "connect")
    def no_room(dbapi_connection: Any, _record: Any) -> None:
        if full:
            # The file may not grow past its size now: SQLITE_FULL, as on a full disk.
            dbapi_connection.cursor().execute("PRAGMA max_page_count = 1")

    await store.engine.dispose()
    log = _log(store, drops, batch_max_rows=50)
    try:
        for number in range(200):
            log.add(log_row(number, content="x" * 2000))
        assert await log.flush(10)
        assert drops.counts == {"store_error": 200}
        full = False
        await store.engine.dispose()
        log.add(log_row(1000))
        assert await log.flush(10)
        assert await _count(store) == 1
    finally:
        await log.close()
        await store.close()


async def test_while_postgresql_is_down_rows_wait_then_past_the_bound_are_dropped_exactly(
    drops: Drops, caplog: pytest.LogCaptureFixture, own_postgres: PostgresServer
) -> None:
    server = own_postgres
    url = await asyncio.to_thread(server.create_database, "outage")
    store = await open_store(url)
    log = _log(store, drops, queue_max_rows=200, batch_max_rows=50, flush_interval_ms=20)
    caplog.set_level(logging.WARNING, LOGGER)
    for number in range(100):
        log.add(log_row(number))
    assert await log.flush(10)
    await asyncio.to_thread(server.stop)
    # Mid-load: rows keep coming while the writer finds the store gone.
    for number in range(100, 337):
        log.add(log_row(number))
        if number % 20 == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    assert log.pending == 200
    assert drops.counts == {"queue_full": 37}
    await asyncio.to_thread(server.start)
    assert await log.flush(20)
    assert await _count(store) == 300
    assert drops.counts == {"queue_full": 37}
    await log.close()
    await store.close()
    messages = [r.message for r in caplog.records]
    assert sum("is unreachable" in m for m in messages) == 1
    assert sum("the most the queue holds" in m for m in messages) == 1
    assert sum("37 rows were dropped while the queue was full" in m for m in messages) == 0
    assert sum("reachable again" in m for m in messages) == 1
    assert "" not in messages


async def test_while_sqlite_is_locked_rows_wait_then_past_the_bound_are_dropped(
    tmp_path: Path, drops: Drops
) -> None:
    path = tmp_path / "proxy.sqlite3"
    store = await open_store(f"sqlite:///{path}", sqlite_busy_timeout_ms=50)
    log = _log(store, drops, queue_max_rows=100, batch_max_rows=20, flush_interval_ms=20)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        for number in range(130):
            log.add(log_row(number))
        await asyncio.sleep(0.5)
        assert log.pending == 100
        assert drops.counts == {"queue_full": 30}
        other.execute("ROLLBACK")
        assert await log.flush(10)
        assert await _count(store) == 100
        # The queue has room again: the next row is taken, and the burst's drops said once.
        log.add(log_row(500))
        assert await log.flush(5)
        assert drops.counts == {"queue_full": 30}
    finally:
        other.close()
        await log.close()
        await store.close()


async def test_add_never_waits_on_the_store(store: Store, drops: Drops) -> None:
    log = _log(store, drops, queue_max_rows=5000)
    started = time.perf_counter()
    for number in range(5000):
        log.add(log_row(number))
    took = time.perf_counter() - started
    assert log.pending == 5000
    assert took < 0.5  # a few microseconds a row, no I/O
    await log.close()
    assert await _count(store) == 5000


async def test_rows_still_waiting_at_the_close_timeout_are_counted(
    tmp_path: Path, drops: Drops
) -> None:
    path = tmp_path / "proxy.sqlite3"
    store = await open_store(f"sqlite:///{path}", sqlite_busy_timeout_ms=20)
    log = _log(store, drops)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        for number in range(10):
            log.add(log_row(number))
        await log.close(timeout_s=0.3)
        log.add(log_row(99))
    finally:
        other.close()
        await store.close()
    assert drops.counts == {"shutdown": 11}


async def test_the_live_tail_yields_matching_rows_as_they_are_written(
    store: Store, request_log_: RequestLog
) -> None:
    async with request_log_.subscribe(LogFilters.parse({"providers": "groq"})) as tail:
        for number in range(10):
            request_log_.add(log_row(number, provider="groq" if number % 2 else "openai"))
        seen = [await asyncio.wait_for(anext(tail), 5) for _ in range(5)]
    assert [row["id"] for row in seen] == [f"req-{n:05d}" for n in (1, 3, 5, 7, 9)]
    assert all(row["provider"] == "groq" for row in seen)
    assert seen[0]["timestamp"].endswith("Z")


async def test_a_slow_subscriber_misses_rows_rather_than_slowing_the_writer(
    store: Store, request_log_: RequestLog
) -> None:
    slow = request_log_.subscribe(max_rows=3)
    for number in range(50):
        request_log_.add(log_row(number))
    assert await request_log_.flush(5)
    assert request_log_.written == 50
    assert slow.dropped == 47
    await request_log_.close()
    # What it had is still read, then the tail ends with the log.
    assert [row["id"] async for row in slow] == ["req-00000", "req-00001", "req-00002"]


async def test_rows_past_their_retention_are_pruned(store: Store, drops: Drops) -> None:
    now = time.time()
    ages_days = {1: 45, 2: 31, 3: 29.9, 4: 1}
    # Written by a log that keeps rows forever: a started log with a retention prunes
    # at once in the background, and would race this test's own prune.
    writer = _log(store, drops, retention_days=0, flush_interval_ms=50)
    try:
        for number, age in ages_days.items():
            writer.add(log_row(number, timestamp=now - age * 86400))
        assert await writer.flush(5)
        await writer.rollups.roll_up(now)
    finally:
        await writer.close()
    assert await RequestLog(store, LogsSettings(retention_days=30)).prune(now) == 2
    queries = LogQueries(store)
    assert [await queries.log(f"req-{n:05d}") is not None for n in ages_days] == [
        False,
        False,
        True,
        True,
    ]
    async with store.engine.connect() as conn:
        days = (
            await conn.execute(
                select(func.min(usage_rollup.c.start)).where(usage_rollup.c.grain == "day")
            )
        ).scalar_one()
    assert days >= (now - 31 * 86400) * 1000


async def test_retention_runs_in_the_background(store: Store) -> None:
    log = RequestLog(store, LogsSettings(retention_days=1), prune_interval_s=0.05)
    try:
        log.start()
        log.add(log_row(1, timestamp=time.time() - 3 * 86400))
        log.add(log_row(2))
        assert await log.flush(5)
        for _ in range(100):
            if await _count(store) == 1:
                break
            await asyncio.sleep(0.05)
        assert await _count(store) == 1
    finally:
        await log.close()


@pytest.mark.parametrize(
    "query",
    [
        [("providers", "openai"), ("status", "success"), ("start_time", "2026-01-01T00:00:00Z")],
        [("virtual_key_ids", "team-a"), ("models", "whisper-1"), ("min_latency", "100")],
        [("status", "error"), ("objects", "transcription"), ("sort_by", "latency")],
        [("start_time", "2026-01-01T00:00:00Z"), ("sort_by", "cost"), ("order", "asc")],
    ],
)
async def test_a_filtered_pages_stats_are_read_from_an_index_alone(
    tmp_path: Path, query: list[tuple[str, str]]
) -> None:
    """No table lookup per row selected (what made stats over a million rows take 400 ms):
    the count, sums, p95 and the page's ids come from a covering index, and only the
    page's own rows are read, by id. SQLite's plans, which need no statistics."""
    store = await open_store(f"sqlite:///{tmp_path}/store.sqlite3")
    statements: list[tuple[str, Any]] = []

    @event.listens_for(store.engine.sync_engine, "before_cursor_execute")
    def keep(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if sql.lstrip().startswith("SELECT"):
            statements.append((sql, params))

    try:
        await LogQueries(store).logs(LogFilters.parse(MultiDict(query)))
        event.remove(store.engine.sync_engine, "before_cursor_execute", keep)
        assert len(statements) == 2  # the stats, then the page (no rows: no p95)
        async with store.engine.connect() as conn:
            for sql, params in statements:
                plan = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)
                reads = [step for *_, step in plan if " request_log " in f"{step} "]
                assert reads
                for step in reads:
                    assert "COVERING INDEX ix_request_log_" in step or step.endswith(
                        "USING INDEX sqlite_autoindex_request_log_1 (id=?)"
                    ), (sql, step)
    finally:
        await store.close()


async def test_a_model_name_of_any_length_costs_no_row(
    store: Store, request_log_: RequestLog, drops: Drops
) -> None:
    """A client's model name is in the log's indexes (PostgreSQL's entries hold 2704
    bytes at most): one too long for them would have cost its whole batch."""
    rng = random.Random(1)  # text that does not compress, as PostgreSQL would squeeze a repeat
    noise = "".join(rng.choices(string.ascii_letters + string.digits, k=10_000))
    accented = "".join(rng.choices("éèàüöñçß", k=3000))
    for number, model in ((1, "openai/" + noise), (2, accented), (3, "whisper-1")):
        request_log_.add(log_row(number, model_requested=model, model_deployment=model))
    assert await request_log_.flush(5)
    assert drops.counts == {}
    queries = LogQueries(store)
    rows = [await queries.log(f"req-{n:05d}") for n in (1, 2, 3)]
    assert [row["model_requested"] if row else None for row in rows] == [
        ("openai/" + noise)[:MAX_MODEL_CHARS],
        accented[:MAX_MODEL_CHARS],
        "whisper-1",
    ]
