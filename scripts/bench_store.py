"""Store benchmark: the request log's writer under sustained load, and its queries over a
million rows, on SQLite and on PostgreSQL (a real server this script starts).

1. Writes: ``RequestLog.add`` at ``--rate`` rows/s for ``--seconds`` with the default
   settings (batches of 500, a 500 ms flush interval), from the same event loop as
   the writer, as the proxy's requests would. Reported: rows/s written and the
   queue's high-water mark (a queue that keeps up stays near one flush's rows).
2. Queries: ``--rows`` rows spread over 30 days (50 keys, 4 providers, 6 models)
   put in with a bulk insert, then the p50 (and p95) of ``logs()`` with three filters
   and its stats, and of ``usage()`` by key over the 30 days.

    .venv/bin/python scripts/bench_store.py
    .venv/bin/python scripts/bench_store.py --backends sqlite --rows 200000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchlib import ROOT

sys.path.insert(0, str(ROOT))

from multidict import MultiDict

from proxy.config.schema import LogsSettings
from proxy.store.engine import Store, open_store
from proxy.store.log_filters import LogFilters, UsageQuery
from proxy.store.log_queries import LogQueries
from proxy.store.log_rows import COLUMNS, LogRow, as_params
from proxy.store.request_log import RequestLog
from proxy.store.tables import request_log
from proxy.store.usage import UsageRollups
from tests.helpers.postgres import PostgresServer, unavailable

DAY_S = 86_400
PROVIDERS = ("openai", "groq", "azure", "local")
MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "whisper-large-v3",
          "tiny.en", "distil-whisper")  # fmt: skip
KEYS = tuple(f"team-{i:02d}" for i in range(50))
TARGET_LOGS_MS = 100.0
TARGET_USAGE_MS = 200.0


def fake_row(rng: random.Random, index: int, now: float, span_s: float) -> LogRow:
    """One plausible row, at a random moment of the last ``span_s`` seconds."""
    roll = rng.random()
    status = "success" if roll < 0.95 else "error" if roll < 0.99 else "processing"
    provider = PROVIDERS[index % len(PROVIDERS)]
    audio = round(rng.uniform(1, 600), 2)
    return LogRow(
        id=f"req_{index:09d}",
        object="transcription" if index % 10 else "realtime.turn",
        timestamp=now - rng.random() * span_s,
        provider=provider,
        model_requested=MODELS[index % len(MODELS)],
        model_deployment=MODELS[index % len(MODELS)],
        virtual_key_id=KEYS[rng.randrange(len(KEYS))],
        status=status,  # type: ignore[arg-type]
        status_code=200 if status == "success" else 502 if status == "error" else None,
        error_code="bad_gateway" if status == "error" else None,
        latency=None if status == "processing" else int(rng.lognormvariate(7, 0.8)),
        first_event_latency=int(rng.lognormvariate(5, 0.5)),
        stream=index % 3 == 0,
        response_format="json",
        bytes_in=int(audio * 16_000),
        audio_seconds=audio,
        audio_seconds_source="answer",
        cost=round(audio / 60 * 0.006, 6),
        number_of_retries=int(rng.random() < 0.05),
        fallback_index=0,
        replica="bench",
    )


async def bench_writes(store: Store, rate: int, seconds: float) -> dict[str, float]:
    """Rows added at ``rate`` per second for ``seconds``: rows/s written, the queue's peak."""
    log = RequestLog(store, LogsSettings())
    log.start()
    rng = random.Random(1)
    tick_s = 0.01
    started = time.monotonic()
    added = 0
    now = time.time()
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate)
        while added < due:
            log.add(fake_row(rng, 10_000_000 + added, now, 60))
            added += 1
        await asyncio.sleep(tick_s)
    flushed = await log.flush(60)
    took = time.monotonic() - started
    result = {
        "added": added,
        "written": log.written,
        "rows_per_s": log.written / took,
        "high_water": log.high_water,
        "dropped": log.dropped,
        "flushed": flushed,
    }
    await log.close()
    return result


async def fill(store: Store, rows: int) -> float:
    """``rows`` rows over 30 days with a bulk insert through the driver itself (asyncpg's
    COPY, sqlite3's executemany), in chunks; seconds taken, ANALYZE included."""
    rng = random.Random(2)
    now = time.time()
    started = time.monotonic()
    chunk = 50_000
    names = list(COLUMNS)
    async with store.engine.connect() as conn:
        raw: Any = (await conn.get_raw_connection()).driver_connection
        for first in range(0, rows, chunk):
            records = [
                tuple(as_params(fake_row(rng, i, now, 30 * DAY_S)).values())
                for i in range(first, min(first + chunk, rows))
            ]
            if store.backend == "postgresql":
                await raw.copy_records_to_table("request_log", records=records, columns=names)
            else:
                marks = ", ".join("?" * len(names))
                await raw.execute("BEGIN")  # the store's connections do not begin by themselves
                await raw.executemany(
                    f"INSERT INTO request_log ({', '.join(names)}) VALUES ({marks})", records
                )
                await raw.commit()
        await conn.exec_driver_sql("ANALYZE")
        await conn.commit()
    return time.monotonic() - started


async def timed(run: Callable[[], Awaitable[Any]], times: int) -> tuple[float, float]:
    """p50 and p95 in ms of ``times`` runs (after one to warm the caches)."""
    await run()
    took = []
    for _ in range(times):
        started = time.perf_counter()
        await run()
        took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return statistics.median(took), took[int(len(took) * 0.95) - 1]


async def bench_backend(
    name: str, url: str, args: argparse.Namespace
) -> list[tuple[str, str, str, str]]:
    lines: list[tuple[str, str, str, str]] = []
    store = await open_store(url)
    try:
        writes = await bench_writes(store, args.rate, args.seconds)
        lines.append((
            name,
            f"write {args.rate} rows/s for {args.seconds:g} s",
            f"{writes['rows_per_s']:.0f} rows/s written, queue high-water {writes['high_water']}",
            f"{writes['dropped']} dropped" + ("" if writes["flushed"] else ", not flushed"),
        ))  # fmt: skip
        async with store.engine.begin() as conn:
            await conn.execute(request_log.delete())
        fill_s = await fill(store, args.rows)
        lines.append(
            (
                name,
                f"bulk insert {args.rows:,} rows",
                f"{fill_s:.1f} s",
                f"{args.rows / fill_s:,.0f} rows/s",
            )
        )
        # Imported rows are not the writer's: mark their hours, then roll them up.
        rollups = UsageRollups(store)
        started = time.monotonic()
        hours = await rollups.rebuild()
        await rollups.roll_up()
        took = time.monotonic() - started
        label = f"roll up usage of {hours} hours"
        lines.append((name, label, f"{took:.1f} s", f"{took / hours * 1000:.0f} ms an hour"))
        queries = LogQueries(store)
        week_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7 * DAY_S))
        cases = {
            "providers=openai&status=success&start_time=-7d": MultiDict(
                [("providers", "openai"), ("status", "success"), ("start_time", week_ago)]
            ),
            "virtual_key_ids=team-07&models=whisper-1&min_latency=1000": MultiDict(
                [("virtual_key_ids", "team-07"), ("models", "whisper-1"), ("min_latency", "1000")]
            ),
            "status=error&objects=transcription&sort_by=latency": MultiDict(
                [("status", "error"), ("objects", "transcription"), ("sort_by", "latency")]
            ),
        }
        for label, query in cases.items():
            filters = LogFilters.parse(query)
            p50, p95 = await timed(functools.partial(queries.logs, filters), args.times)
            verdict = "ok" if p50 <= TARGET_LOGS_MS else f"MISSES {TARGET_LOGS_MS:g} ms"
            lines.append((name, f"logs() {label}", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms", verdict))
        month_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 30 * DAY_S - 60))
        for interval in ("1d", "1h"):
            usage = UsageQuery.parse(
                {"group_by": "virtual_key", "interval": interval, "start_time": month_ago}
            )
            p50, p95 = await timed(functools.partial(queries.usage, usage), args.times)
            verdict = "ok" if p50 <= TARGET_USAGE_MS else f"MISSES {TARGET_USAGE_MS:g} ms"
            label = f"usage() by key, 30 days, {interval}"
            lines.append((name, label, f"p50 {p50:.1f} ms, p95 {p95:.1f} ms", verdict))
        p50, p95 = await timed(queries.filterdata, args.times)
        lines.append((name, "filterdata()", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms", ""))
    finally:
        await store.close()
    return lines


async def bench(args: argparse.Namespace) -> None:
    lines: list[tuple[str, str, str, str]] = []
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory(prefix="bench-store-") as directory:
            lines += await bench_backend("sqlite", f"sqlite:///{directory}/proxy.sqlite3", args)
    if "postgresql" in backends:
        reason = unavailable()
        if reason is not None:
            print(f"postgresql: skipped: {reason}", file=sys.stderr)
        else:
            # Default durability (fsync on): what a deployment runs.
            server = PostgresServer()
            try:
                await asyncio.to_thread(server.start)
                url = await asyncio.to_thread(server.create_database, "bench")
                lines += await bench_backend("postgresql", url, args)
            finally:
                await asyncio.to_thread(server.remove)
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    for line in lines:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--rate", type=int, default=2000, help="rows/s added (2000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="of sustained writes (30)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows queried over (1,000,000)")
    parser.add_argument("--times", type=int, default=20, help="runs of each query (20)")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
