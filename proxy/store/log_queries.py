"""The request log's queries: a filtered page with its stats, one row with its children,
the values to filter by, and usage over time (the last two from :mod:`.usage`'s
rollups). Every filter is a bound parameter.

The stats' p95 latency is nearest-rank and exact, found by SQL both backends share
(sorted from the slowest, so only the slowest 5% are kept while sorting) rather than
PostgreSQL's ``percentile_cont``, which SQLite lacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .engine import Store
from .latency_bins import nearest_rank
from .log_filters import LogFilters, UsageQuery
from .log_rows import entry
from .tables import request_log
from .usage import UsageRollups

c = request_log.c

_SORT_COLUMNS = {
    "timestamp": c.timestamp,
    "latency": c.latency,
    "cost": c.cost,
    "audio_seconds": c.audio_seconds,
}


class LogQueries:
    """Reads of the request log, for ``/api/logs``, ``/api/usage`` and the dashboard."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def logs(self, filters: LogFilters, virtual_key_id: str | None = None) -> dict[str, Any]:
        """The page of rows ``filters`` selects, with its pagination and the stats of every
        row selected; ``virtual_key_id`` restricts it to that key's own rows."""
        where = conditions(filters, virtual_key_id)
        async with self._store.engine.connect() as conn:
            totals = (await conn.execute(_stats(where))).one()
            p95 = await _p95(conn, where, totals.timed)
            page = await conn.execute(_page(filters, where))
            rows = [entry(row._mapping) for row in page]
        finished = (totals.successes or 0) + (totals.errors or 0)
        return {
            "logs": rows,
            "pagination": {
                "limit": filters.limit,
                "offset": filters.offset,
                "sort_by": filters.sort_by,
                "order": filters.order,
                "total_count": totals.count,
            },
            "stats": {
                "total_requests": totals.count,
                # Of the rows that finished (not those still processing), in percent.
                "success_rate": 100.0 * (totals.successes or 0) / finished if finished else 0.0,
                "average_latency": float(totals.average_latency or 0.0),
                "p95_latency": p95,
                "total_cost": float(totals.cost or 0.0),
                "total_audio_seconds": float(totals.audio_seconds or 0.0),
            },
        }

    async def log(self, id: str, virtual_key_id: str | None = None) -> dict[str, Any] | None:
        """One row and its children (a session's turns, a request's chunks, oldest first)
        under ``children``; None when there is no such row (or it is not the key's)."""
        mine = [] if virtual_key_id is None else [c.virtual_key_id == virtual_key_id]
        async with self._store.engine.connect() as conn:
            row = (await conn.execute(select(request_log).where(c.id == id, *mine))).first()
            if row is None:
                return None
            children = await conn.execute(
                select(request_log)
                .where(c.parent_request_id == id, *mine)
                .order_by(c.timestamp, c.id)
            )
            found = entry(row._mapping)
            found["children"] = [entry(child._mapping) for child in children]
        return found

    async def filterdata(self, virtual_key_id: str | None = None) -> dict[str, list[str]]:
        """The distinct providers, models (the ones that served, else the ones asked for)
        and virtual key ids with usage, to offer as filters (from the usage rollups:
        reading every row's would take seconds at a million rows)."""
        rollups = UsageRollups(self._store)
        return {
            "providers": await rollups.names("provider", virtual_key_id),
            "models": await rollups.names("model", virtual_key_id),
            "virtual_key_ids": await rollups.names("virtual_key", virtual_key_id),
        }

    async def usage(self, query: UsageQuery, virtual_key_id: str | None = None) -> dict[str, Any]:
        """Requests, errors, audio seconds, cost and latency p50/p95 per group (key, model
        or provider) and interval from ``query.start_ms`` (included) to ``query.end_ms``
        (not); only buckets with rows. ``virtual_key_id`` restricts it to that key's
        rows. Read from the usage rollups (see :mod:`.usage`)."""
        return await UsageRollups(self._store).usage(query, virtual_key_id)


def conditions(filters: LogFilters, virtual_key_id: str | None = None) -> list[ColumnElement[bool]]:
    """The WHERE clause of ``filters``, each value a bound parameter."""
    where: list[ColumnElement[bool]] = []
    if virtual_key_id is not None:
        where.append(c.virtual_key_id == virtual_key_id)
    if filters.providers:
        where.append(c.provider.in_(filters.providers))
    if filters.models:
        where.append(
            or_(c.model_requested.in_(filters.models), c.model_deployment.in_(filters.models))
        )
    if filters.statuses:
        where.append(c.status.in_(filters.statuses))
        if "success" not in filters.statuses:
            # The partial index of the rows that did not succeed applies only to a
            # query that says so in its own words, not a bound parameter's.
            where.append(c.status != literal_column("'success'"))
    if filters.objects:
        where.append(c.object.in_(filters.objects))
    if filters.virtual_key_ids:
        where.append(c.virtual_key_id.in_(filters.virtual_key_ids))
    if filters.start_ms is not None:
        where.append(c.timestamp >= filters.start_ms)
    if filters.end_ms is not None:
        where.append(c.timestamp <= filters.end_ms)
    if filters.min_latency is not None:
        where.append(c.latency >= filters.min_latency)
    if filters.max_latency is not None:
        where.append(c.latency <= filters.max_latency)
    if filters.min_cost is not None:
        where.append(c.cost >= filters.min_cost)
    if filters.content_search is not None:
        # LIKE with %, _ and the escape character escaped: the text is matched as written.
        where.append(c.content.icontains(filters.content_search, autoescape=True))
    return where


def _stats(where: Sequence[ColumnElement[bool]]) -> Select[Any]:
    return select(
        func.count().label("count"),
        func.sum(case((c.status == "success", 1), else_=0)).label("successes"),
        func.sum(case((c.status == "error", 1), else_=0)).label("errors"),
        func.count(c.latency).label("timed"),
        func.avg(c.latency).label("average_latency"),
        func.sum(c.cost).label("cost"),
        func.sum(c.audio_seconds).label("audio_seconds"),
    ).where(*where)


async def _p95(
    conn: AsyncConnection, where: Sequence[ColumnElement[bool]], timed: int
) -> int | None:
    """The nearest-rank 95th percentile of the rows' latencies: counted from the top, so
    the database keeps only the slowest 5% while it sorts."""
    if not timed:
        return None
    from_top = timed - nearest_rank(timed, 95)
    slowest = (
        select(c.latency)
        .where(*where, c.latency.is_not(None))
        .order_by(c.latency.desc())
        .limit(1)
        .offset(from_top)
    )
    value = (await conn.execute(slowest)).scalar_one()
    return int(value)


def _page(filters: LogFilters, where: Sequence[ColumnElement[bool]]) -> Select[Any]:
    column = _SORT_COLUMNS[filters.sort_by]
    ordered = column.asc() if filters.order == "asc" else column.desc()
    tie = c.id.asc() if filters.order == "asc" else c.id.desc()
    if filters.sort_by != "timestamp":
        # Rows without the value last, either way (the backends' defaults differ).
        ordered = ordered.nulls_last()
    # The page's ids are chosen from a covering index, then only its rows are read:
    # sorting thousands of whole rows to keep fifty took a hundred milliseconds.
    chosen = (
        select(c.id)
        .where(*where)
        .order_by(ordered, tie)
        .limit(filters.limit)
        .offset(filters.offset)
        .subquery()
    )
    return select(request_log).where(c.id.in_(select(chosen.c.id))).order_by(ordered, tie)
