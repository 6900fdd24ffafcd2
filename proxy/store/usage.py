"""Usage over time: hourly and daily rollups of the request log, kept up to date in the
background, and the ``usage()`` query that reads them.

Summing every row of a month on each query costs seconds at a million rows (SQLite
and PostgreSQL alike), so ``usage_rollup`` holds each closed hour's and day's totals
and latency histogram per virtual key, model and provider. The writer marks the
hour of every row it writes in ``usage_dirty``; :meth:`UsageRollups.roll_up`
recomputes each marked hour once it has passed (from its rows: a row added twice,
or late, is still counted once) and the day around it. ``usage()`` then reads
day rows for whole clean days, hour rows for whole clean hours, and the rows
themselves for the rest (the current hour, marked hours, partial hours at the
edges, and every 1-minute bucket), and adds them up.

Latency percentiles come from the histograms (:mod:`.latency_bins`): within about
10% of the true value, exact below 8 ms. Rows put in the table by other means than
the writer (an import) are counted once :meth:`UsageRollups.rebuild` marks them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Insert

from .engine import Store
from .latency_bins import BIN_COLUMNS, BINS, bin_of, percentile
from .log_filters import INTERVAL_MS, UsageQuery
from .log_rows import now_ms, rfc3339
from .tables import request_log, usage_dirty, usage_rollup

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: ``key`` of the rows that add up every key; ``value`` of rows with no key, model, provider.
ALL_KEYS = ""
NONE = ""
#: Separate ranges of rows one query may add up; past it, every row is read instead.
MAX_RANGES = 64
#: Serializes rollups between replicas sharing a PostgreSQL store.
_LOCK_KEY = 0x726F6C6C7570  # "rollup"

c = request_log.c
r = usage_rollup.c
_MODEL = func.coalesce(c.model_deployment, c.model_requested)
#: Grouped by an expression rather than the column: SQLite would otherwise walk the
#: (key, time) index to have the rows in key order, seeking each key's hour among a
#: month of rows, rather than read the hour's rows from the time index and sort them.
_KEY = func.coalesce(c.virtual_key_id, NONE)
_GROUPS = {"virtual_key": _KEY, "model": _MODEL, "provider": c.provider}

Range = tuple[int, int]
#: A group's name, its bucket's start (epoch ms), and the bucket as answered.
_Bucket = tuple[str | None, int, dict[str, Any]]


def mark_dirty(store: Store) -> Insert:
    """The statement the writer marks its rows' hours with (``marks`` counts up)."""
    insert_into = sqlite_insert if store.backend == "sqlite" else postgresql_insert
    statement = insert_into(usage_dirty)
    return statement.on_conflict_do_update(
        index_elements=[usage_dirty.c.start], set_={"marks": usage_dirty.c.marks + 1}
    )


def hours_of(timestamps: Iterable[int]) -> list[dict[str, int]]:
    """The ``mark_dirty`` parameters for rows at ``timestamps`` (epoch ms)."""
    return [
        {"start": hour, "marks": 1} for hour in sorted({t // HOUR_MS * HOUR_MS for t in timestamps})
    ]


@dataclass(slots=True)
class _Totals:
    """One group's totals in one bucket (or one rollup row), histogram included."""

    requests: int = 0
    errors: int = 0
    audio_seconds: float = 0.0
    cost: float = 0.0
    #: Counts per latency bin; None until one is counted.
    histogram: list[int] | None = None

    def bins(self) -> list[int]:
        """The histogram, made on first use."""
        if self.histogram is None:
            self.histogram = [0] * BINS
        return self.histogram


class UsageRollups:
    """The rollups' upkeep and the usage query over them."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def roll_up(self, now: float | None = None) -> int:
        """Recompute every marked hour that has passed, and its day; how many hours."""
        horizon = _hour(int((time.time() if now is None else now) * 1000))
        async with self._store.engine.connect() as conn:
            marked = (
                await conn.execute(
                    select(usage_dirty.c.start, usage_dirty.c.marks)
                    .where(usage_dirty.c.start < horizon)
                    .order_by(usage_dirty.c.start)
                )
            ).all()
        by_day: dict[int, list[tuple[int, int]]] = {}
        for hour, marks in marked:
            by_day.setdefault(hour // DAY_MS * DAY_MS, []).append((hour, marks))
        for day, hours in by_day.items():
            await self._recompute(day, hours)
        return len(marked)

    async def rebuild(self) -> int:
        """Mark every hour that has rows (after rows were put in by other means than the
        writer); :meth:`roll_up` then recomputes them. How many hours."""
        hour = (c.timestamp // HOUR_MS) * HOUR_MS
        hours = select(hour.label("start")).distinct().subquery()
        async with self._store.engine.begin() as conn:
            found = [row.start for row in await conn.execute(select(hours.c.start))]
            if found:
                await conn.execute(mark_dirty(self._store), hours_of(found))
        return len(found)

    async def prune(self, conn: AsyncConnection, cutoff_ms: int) -> None:
        """Forget rollups (and marks) of hours and days wholly before ``cutoff_ms``."""
        await conn.execute(
            delete(usage_rollup).where(
                or_(
                    and_(r.grain == "hour", r.start + HOUR_MS <= cutoff_ms),
                    and_(r.grain == "day", r.start + DAY_MS <= cutoff_ms),
                )
            )
        )
        await conn.execute(delete(usage_dirty).where(usage_dirty.c.start + HOUR_MS <= cutoff_ms))

    async def usage(
        self, query: UsageQuery, virtual_key_id: str | None = None, now: float | None = None
    ) -> dict[str, Any]:
        """Requests, errors, audio seconds, cost and latency p50/p95 per group and interval
        from ``query.start_ms`` (included) to ``query.end_ms`` (not); only buckets with
        rows. ``virtual_key_id`` restricts it to that key's rows."""
        horizon = _hour(int((time.time() if now is None else now) * 1000))
        buckets: dict[tuple[str | None, int], _Totals] = {}
        whole: list[_Bucket] = []
        async with self._store.engine.connect() as conn:
            dirty = set(
                (
                    await conn.execute(
                        select(usage_dirty.c.start).where(
                            usage_dirty.c.start >= _hour(query.start_ms),
                            usage_dirty.c.start < query.end_ms,
                        )
                    )
                ).scalars()
            )
            days, hours, raw = _plan(query, horizon, dirty)
            for grain, ranges in (("day", days), ("hour", hours)):
                if not ranges:
                    continue
                if INTERVAL_MS[query.interval] == (DAY_MS if grain == "day" else HOUR_MS):
                    # Each bucket is one rollup row, whole: its own percentiles.
                    found = await conn.execute(_whole(query, grain, ranges, virtual_key_id))
                    whole.extend(_whole_buckets(found))
                else:
                    rolled = _rolled(query, grain, ranges, virtual_key_id)
                    for row in await conn.execute(rolled):
                        _add_rolled(buckets, row)
            if raw:
                for row in await conn.execute(_raw(query, raw, virtual_key_id)):
                    _add_raw(buckets, row)
        return _answer(whole + [_bucket(where, found) for where, found in buckets.items()])

    async def names(self, dimension: str, virtual_key_id: str | None = None) -> list[str]:
        """The distinct keys, models or providers with usage (rolled up, or in the rows
        not rolled up yet): the log's filter values."""
        column = {"virtual_key": c.virtual_key_id, "model": _MODEL, "provider": c.provider}[
            dimension
        ]
        horizon = _hour(now_ms())
        rolled = select(r.value).distinct().where(r.grain == "day", r.dimension == dimension)
        rolled = rolled.where(*_rollup_key(dimension, virtual_key_id), r.value != NONE)
        async with self._store.engine.connect() as conn:
            oldest = (await conn.execute(select(func.min(usage_dirty.c.start)))).scalar()
            since = horizon if oldest is None else min(oldest, horizon)
            recent = (
                select(column.label("value"))
                .distinct()
                .where(column.is_not(None), c.timestamp >= since)
            )
            if virtual_key_id is not None:
                recent = recent.where(c.virtual_key_id == virtual_key_id)
            found = set((await conn.execute(rolled)).scalars())
            found |= set((await conn.execute(recent)).scalars())
        return sorted(str(v) for v in found)

    async def _recompute(self, day: int, hours: Sequence[tuple[int, int]]) -> None:
        """The marked ``hours``' rollup rows from their rows, then their day's from its
        hours (a day is never read while its hours are newer: one transaction).

        The hours' rows are read first, outside the transaction: reading an hour of
        a busy log takes a while, and on SQLite the transaction holds the write lock
        the request log's writer needs. A row written meanwhile marks its hour again
        (``marks`` grows), so the mark read before stays and the hour is redone."""
        totals = {}
        async with self._store.engine.connect() as conn:
            for hour, _ in hours:
                totals[hour] = _hour_totals(await conn.execute(_hour_groups(hour)))
        async with self._store.serialized(_lock_rollups) as conn:
            for hour, found in totals.items():
                await conn.execute(delete(usage_rollup).where(r.grain == "hour", r.start == hour))
                if found:
                    rows = [_rollup_row("hour", hour, where, sums) for where, sums in found.items()]
                    await conn.execute(insert(usage_rollup), rows)
            await conn.execute(delete(usage_rollup).where(r.grain == "day", r.start == day))
            await conn.execute(_day_from_hours(day))
            await _day_percentiles(conn, day)
            for hour, marks in hours:
                await conn.execute(
                    delete(usage_dirty).where(
                        usage_dirty.c.start == hour, usage_dirty.c.marks == marks
                    )
                )


async def _lock_rollups(conn: AsyncConnection) -> None:
    """PostgreSQL's lock for a rollup: one replica rolls an hour up at a time."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def _hour(ms: int) -> int:
    return ms // HOUR_MS * HOUR_MS


#: Rows that are usage: not an operator's change (``governance.*``), and not an async
#: job's submission (``async.*.submit``: its run, a row of its own, is the usage).
_IS_USAGE = and_(c.object.not_like("governance.%"), c.object.not_like("%.submit"))


def _hour_groups(hour: int) -> Any:
    """One hour's rows counted by key, model, provider and latency bin."""
    rows = (
        select(
            _KEY.label("key"),
            _MODEL.label("model"),
            c.provider.label("provider"),
            bin_of(c.latency).label("bin"),
            c.status,
            c.audio_seconds,
            c.cost,
        )
        .where(c.timestamp >= hour, c.timestamp < hour + HOUR_MS, _IS_USAGE)
        .subquery()
    )
    return select(
        rows.c.key,
        rows.c.model,
        rows.c.provider,
        rows.c.bin,
        func.count().label("requests"),
        func.sum(case((rows.c.status == "error", 1), else_=0)).label("errors"),
        func.sum(rows.c.audio_seconds).label("audio_seconds"),
        func.sum(rows.c.cost).label("cost"),
    ).group_by(rows.c.key, rows.c.model, rows.c.provider, rows.c.bin)


def _hour_totals(rows: Iterable[Any]) -> dict[tuple[str, str, str], _Totals]:
    """The hour's rollup rows: (dimension, key, value) -> totals."""
    totals: dict[tuple[str, str, str], _Totals] = {}
    for row in rows:
        key, model, provider = row.key or NONE, row.model or NONE, row.provider or NONE
        targets = [
            ("virtual_key", ALL_KEYS, key),
            ("model", ALL_KEYS, model),
            ("provider", ALL_KEYS, provider),
        ]
        if row.key:
            targets += [("model", key, model), ("provider", key, provider)]
        for target in targets:
            found = totals.setdefault(target, _Totals())
            _add(found, row.requests, row.errors, row.audio_seconds, row.cost)
            if row.bin is not None:
                found.bins()[int(row.bin)] += int(row.requests)
    return totals


def _rollup_row(
    grain: str, start: int, where: tuple[str, str, str], found: _Totals
) -> dict[str, Any]:
    dimension, key, value = where
    return {
        "grain": grain,
        "dimension": dimension,
        "key": key,
        "start": start,
        "value": value,
        "requests": found.requests,
        "errors": found.errors,
        "audio_seconds": found.audio_seconds,
        "cost": found.cost,
        "latency_p50": percentile(found.bins(), 50),
        "latency_p95": percentile(found.bins(), 95),
        **dict(zip(BIN_COLUMNS, found.bins(), strict=True)),
    }


async def _day_percentiles(conn: AsyncConnection, day: int) -> None:
    """The day rows' percentiles, from the histograms their hours add up to."""
    rows = await conn.execute(
        select(r.dimension, r.key, r.value, *(r[name] for name in BIN_COLUMNS)).where(
            r.grain == "day", r.start == day
        )
    )
    updates = []
    for row in rows:
        histogram = [int(row._mapping[name]) for name in BIN_COLUMNS]
        updates.append(
            {
                "d": row.dimension,
                "k": row.key,
                "v": row.value,
                "p50": percentile(histogram, 50),
                "p95": percentile(histogram, 95),
            }
        )
    if updates:
        await conn.execute(
            update(usage_rollup)
            .where(
                r.grain == "day",
                r.start == day,
                r.dimension == bindparam("d"),
                r.key == bindparam("k"),
                r.value == bindparam("v"),
            )
            .values(latency_p50=bindparam("p50"), latency_p95=bindparam("p95")),
            updates,
        )


def _day_from_hours(day: int) -> Insert:
    """The day's rollup rows: its hours' added up, in SQL."""
    sums = [
        func.sum(r[name]) for name in ("requests", "errors", "audio_seconds", "cost", *BIN_COLUMNS)
    ]
    hours = select(
        literal("day"), r.dimension, r.key, literal(day, BigInteger), r.value, *sums
    ).where(r.grain == "hour", r.start >= day, r.start < day + DAY_MS)
    names = [
        "grain",
        "dimension",
        "key",
        "start",
        "value",
        "requests",
        "errors",
        "audio_seconds",
        "cost",
        *BIN_COLUMNS,
    ]
    return insert(usage_rollup).from_select(names, hours.group_by(r.dimension, r.key, r.value))


def _plan(
    query: UsageQuery, horizon: int, dirty: set[int]
) -> tuple[list[Range], list[Range], list[Range]]:
    """Which time ranges to read as day rollups, as hour rollups, and as rows."""
    whole: Range = (query.start_ms, query.end_ms)
    if query.interval == "1m":
        return [], [], [whole]
    first = -(-query.start_ms // HOUR_MS) * HOUR_MS
    last = min(_hour(query.end_ms), horizon)
    clean = [hour for hour in range(first, last, HOUR_MS) if hour not in dirty]
    days: list[int] = []
    if query.interval == "1d":
        per_day: dict[int, int] = {}
        for hour in clean:
            per_day[hour // DAY_MS * DAY_MS] = per_day.get(hour // DAY_MS * DAY_MS, 0) + 1
        days = [day for day, count in per_day.items() if count == 24]
    in_days = set(days)
    hours = [hour for hour in clean if hour // DAY_MS * DAY_MS not in in_days]
    day_ranges = _merged((day, day + DAY_MS) for day in days)
    hour_ranges = _merged((hour, hour + HOUR_MS) for hour in hours)
    raw = _gaps(whole, sorted(day_ranges + hour_ranges))
    if max(len(day_ranges), len(hour_ranges), len(raw)) > MAX_RANGES:
        return [], [], [whole]
    return day_ranges, hour_ranges, raw


def _merged(ranges: Iterable[Range]) -> list[Range]:
    merged: list[Range] = []
    for start, end in sorted(ranges):
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _gaps(whole: Range, covered: Sequence[Range]) -> list[Range]:
    gaps: list[Range] = []
    at = whole[0]
    for start, end in covered:
        if start > at:
            gaps.append((at, start))
        at = max(at, end)
    if at < whole[1]:
        gaps.append((at, whole[1]))
    return gaps


def _within(column: Any, ranges: Sequence[Range]) -> ColumnElement[bool]:
    return or_(*(and_(column >= start, column < end) for start, end in ranges))


def _rollup_key(dimension: str, virtual_key_id: str | None) -> list[ColumnElement[bool]]:
    """Which rollup rows hold every key's usage, or ``virtual_key_id``'s own."""
    if virtual_key_id is None:
        return [r.key == ALL_KEYS]
    if dimension == "virtual_key":
        return [r.key == ALL_KEYS, r.value == virtual_key_id]
    return [r.key == virtual_key_id]


def _rolled(
    query: UsageQuery, grain: str, ranges: Sequence[Range], virtual_key_id: str | None
) -> Any:
    width = INTERVAL_MS[query.interval]
    # The bucket is computed once, in a subquery: its parameter must not appear twice
    # (PostgreSQL would not see SELECT's and GROUP BY's expressions as the same).
    rows = (
        select(
            r.value.label("g"),
            ((r.start // width) * width).label("b"),
            r.requests,
            r.errors,
            r.audio_seconds,
            r.cost,
            *(r[name] for name in BIN_COLUMNS),
        )
        .where(
            r.grain == grain,
            r.dimension == query.group_by,
            *_rollup_key(query.group_by, virtual_key_id),
            _within(r.start, ranges),
        )
        .subquery()
    )
    sums = [
        func.sum(rows.c[name]).label(name)
        for name in ("requests", "errors", "audio_seconds", "cost", *BIN_COLUMNS)
    ]
    return select(rows.c.g, rows.c.b, *sums).group_by(rows.c.g, rows.c.b)


def _whole(
    query: UsageQuery, grain: str, ranges: Sequence[Range], virtual_key_id: str | None
) -> Any:
    """Rollup rows that are buckets by themselves, without their histograms."""
    return (
        select(
            r.value.label("g"),
            r.start.label("b"),
            r.requests,
            r.errors,
            r.audio_seconds,
            r.cost,
            r.latency_p50,
            r.latency_p95,
        )
        .where(
            r.grain == grain,
            r.dimension == query.group_by,
            *_rollup_key(query.group_by, virtual_key_id),
            _within(r.start, ranges),
        )
        .order_by(r.value, r.start)
    )


def _raw(query: UsageQuery, ranges: Sequence[Range], virtual_key_id: str | None) -> Any:
    width = INTERVAL_MS[query.interval]
    where = [_within(c.timestamp, ranges), _IS_USAGE]
    if virtual_key_id is not None:
        where.append(c.virtual_key_id == virtual_key_id)
    rows = (
        select(
            _GROUPS[query.group_by].label("g"),
            ((c.timestamp // width) * width).label("b"),
            bin_of(c.latency).label("bin"),
            c.status,
            c.audio_seconds,
            c.cost,
        )
        .where(*where)
        .subquery()
    )
    return select(
        rows.c.g,
        rows.c.b,
        rows.c.bin,
        func.count().label("requests"),
        func.sum(case((rows.c.status == "error", 1), else_=0)).label("errors"),
        func.sum(rows.c.audio_seconds).label("audio_seconds"),
        func.sum(rows.c.cost).label("cost"),
    ).group_by(rows.c.g, rows.c.b, rows.c.bin)


def _add(found: _Totals, requests: Any, errors: Any, audio_seconds: Any, cost: Any) -> None:
    found.requests += int(requests or 0)
    found.errors += int(errors or 0)
    found.audio_seconds += float(audio_seconds or 0.0)
    found.cost += float(cost or 0.0)


def _add_rolled(buckets: dict[tuple[str | None, int], _Totals], row: Any) -> None:
    found = buckets.setdefault((row.g or None, int(row.b)), _Totals())
    _add(found, row.requests, row.errors, row.audio_seconds, row.cost)
    mapping = row._mapping
    for index, name in enumerate(BIN_COLUMNS):
        found.bins()[index] += int(mapping[name] or 0)


def _add_raw(buckets: dict[tuple[str | None, int], _Totals], row: Any) -> None:
    found = buckets.setdefault((row.g or None, int(row.b)), _Totals())
    _add(found, row.requests, row.errors, row.audio_seconds, row.cost)
    if row.bin is not None:
        found.bins()[int(row.bin)] += int(row.requests)


def _whole_buckets(rows: Iterable[Any]) -> list[_Bucket]:
    # Tuples, not named access: a month of hours by key is tens of thousands of rows.
    starts: dict[int, str] = {}  # each start is shared by every group's bucket
    found = []
    for name, start, requests, errors, audio_seconds, cost, p50, p95 in rows:
        shown = starts.get(start)
        if shown is None:
            shown = starts[start] = rfc3339(start)
        bucket = {
            "start": shown,
            "requests": int(requests),
            "errors": int(errors),
            "audio_seconds": float(audio_seconds),
            "cost": float(cost),
            "latency_p50": p50,
            "latency_p95": p95,
        }
        found.append((name or None, int(start), bucket))
    return found


def _bucket(where: tuple[str | None, int], found: _Totals) -> _Bucket:
    name, start = where
    histogram = found.bins()
    bucket = {
        "start": rfc3339(start),
        "requests": found.requests,
        "errors": found.errors,
        "audio_seconds": found.audio_seconds,
        "cost": found.cost,
        "latency_p50": percentile(histogram, 50),
        "latency_p95": percentile(histogram, 95),
    }
    return name, start, bucket


def _answer(buckets: list[_Bucket]) -> dict[str, Any]:
    groups: dict[str | None, list[dict[str, Any]]] = {}
    # Rows with no key (or model, or provider) come last.
    buckets.sort(key=lambda found: (found[0] is None, found[0] or "", found[1]))
    for name, _, bucket in buckets:
        groups.setdefault(name, []).append(bucket)
    return {"groups": [{"group": name, "buckets": found} for name, found in groups.items()]}
