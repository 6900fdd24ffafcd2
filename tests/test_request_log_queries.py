"""The request log's queries: every filter, pagination, sorting, stats, literal content
search, a key's own rows, children, filter values, and usage over time."""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from multidict import MultiDict

from proxy.config.schema import LogsSettings
from proxy.errors import InvalidRequestError
from proxy.store.engine import Store
from proxy.store.latency_bins import BINS, EDGES, percentile
from proxy.store.log_filters import GROUP_BYS, Interval, LogFilters, UsageQuery
from proxy.store.log_queries import LogQueries
from proxy.store.log_rows import LogRow, as_params, entry
from proxy.store.request_log import RequestLog
from proxy.store.usage import HOUR_MS, UsageRollups
from tests.helpers.log_rows import log_row

CONTENTS = (
    "pay 50% now",
    "500 files",
    "a_b here",
    "aXb there",
    "back\\slash",
    "back/slash",
    "PLAIN",
)


def _rows(now: float) -> list[LogRow]:
    rows = []
    for i in range(84):
        status = "processing" if i % 11 == 0 else "error" if i % 6 == 0 else "success"
        requested = ("whisper-1", "gpt-4o-transcribe")[i % 2]
        rows.append(
            log_row(
                i,
                timestamp=now - 7200 + i * 60,
                object=("transcription", "translation", "realtime.turn")[i % 3],
                provider=("openai", "groq", "azure", None)[i % 4],
                model_requested=requested,
                model_deployment=None if i % 7 == 0 else "my-whisper" if i % 5 == 0 else requested,
                virtual_key_id=("team-a", "team-b", None)[i % 3],
                status=status,
                latency=None if status == "processing" else (i * 37) % 1000 + i,
                cost=None if i % 9 == 0 else round(i * 0.001, 6),
                audio_seconds=None if i % 8 == 0 else i * 1.5,
                content=CONTENTS[i % len(CONTENTS)] + f" #{i}",
                parent_request_id="req-00001" if i in (2, 3) else None,
            )
        )
    return rows


@pytest.fixture
async def filled(store: Store) -> tuple[LogQueries, list[LogRow]]:
    rows = _rows(time.time())
    log = RequestLog(store, LogsSettings(content=True))
    log.start()
    for row in rows:
        log.add(row)
    await log.close()
    return LogQueries(store), rows


def _ids(rows: Sequence[LogRow]) -> list[str]:
    return [row.id for row in rows]


async def _all(queries: LogQueries, query: MultiDict[str], key: str | None = None) -> list[str]:
    answer = await queries.logs(LogFilters.parse(query), key)
    return sorted(row["id"] for row in answer["logs"])


FILTERS: list[list[tuple[str, str]]] = [
    [("providers", "groq")],
    [("providers", "groq,azure")],
    [("providers", "groq"), ("providers", " azure ")],
    [("models", "my-whisper")],  # a deployment
    [("models", "gpt-4o-transcribe")],  # requested (or deployed)
    [("status", "error")],
    [("status", "processing,success")],
    [("objects", "realtime.turn")],
    [("virtual_key_ids", "team-b")],
    [("min_latency", "500")],
    [("max_latency", "99.5")],
    [("min_latency", "200"), ("max_latency", "300")],
    [("min_cost", "0.05")],
    [("content_search", "slash")],
    [("providers", "openai"), ("status", "success"), ("min_latency", "100")],
]


@pytest.mark.parametrize("query", FILTERS, ids=lambda q: "&".join(f"{k}={v}" for k, v in q))
async def test_each_filter_selects_the_rows_it_names(
    filled: tuple[LogQueries, list[LogRow]], query: list[tuple[str, str]]
) -> None:
    queries, rows = filled
    filters = LogFilters.parse(MultiDict([*query, ("limit", "1000")]))
    expected = sorted(row.id for row in rows if filters.matches(row))
    assert expected, "the dataset has rows for every filter"
    assert len(expected) < len(rows)
    assert await _all(queries, MultiDict([*query, ("limit", "1000")])) == expected


async def test_filters_mean_what_they_say(filled: tuple[LogQueries, list[LogRow]]) -> None:
    queries, rows = filled
    answer = await queries.logs(LogFilters.parse({"providers": "groq", "limit": "1000"}))
    assert {row["provider"] for row in answer["logs"]} == {"groq"}
    answer = await queries.logs(LogFilters.parse({"min_latency": "500", "limit": "1000"}))
    assert min(row["latency"] for row in answer["logs"]) >= 500
    # A time range: both ends included.
    start, end = rows[10], rows[20]
    query = {
        "start_time": entry(as_params(start))["timestamp"],
        "end_time": entry(as_params(end))["timestamp"],
        "limit": "1000",
    }
    assert await _all(queries, MultiDict(query)) == _ids(rows[10:21])


@pytest.mark.parametrize("sort_by", ["timestamp", "latency", "cost", "audio_seconds"])
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_pages_follow_the_sort_order(
    filled: tuple[LogQueries, list[LogRow]], sort_by: str, order: str
) -> None:
    queries, rows = filled

    def value(row: LogRow) -> Any:
        return round(row.timestamp * 1000) if sort_by == "timestamp" else getattr(row, sort_by)

    known = sorted((r for r in rows if value(r) is not None), key=lambda r: (value(r), r.id))
    unknown = sorted((r for r in rows if value(r) is None), key=lambda r: r.id)
    if order == "desc":
        known.reverse()
        unknown.reverse()
    expected = _ids(known + unknown)  # rows without the value last, either way
    seen: list[str] = []
    for offset in range(0, len(rows) + 7, 7):
        page = await queries.logs(
            LogFilters.parse(
                {"sort_by": sort_by, "order": order, "limit": "7", "offset": str(offset)}
            )
        )
        assert page["pagination"] == {
            "limit": 7,
            "offset": offset,
            "sort_by": sort_by,
            "order": order,
            "total_count": len(rows),
        }
        seen += [row["id"] for row in page["logs"]]
    assert seen == expected


async def test_stats_cover_every_row_selected_not_just_the_page(
    filled: tuple[LogQueries, list[LogRow]],
) -> None:
    queries, rows = filled
    answer = await queries.logs(LogFilters.parse({"providers": "openai,groq", "limit": "3"}))
    chosen = [row for row in rows if row.provider in ("openai", "groq")]
    latencies = sorted(row.latency for row in chosen if row.latency is not None)
    successes = sum(row.status == "success" for row in chosen)
    errors = sum(row.status == "error" for row in chosen)
    stats = answer["stats"]
    assert len(answer["logs"]) == 3
    assert stats["total_requests"] == len(chosen)
    assert stats["success_rate"] == pytest.approx(100 * successes / (successes + errors))
    assert stats["average_latency"] == pytest.approx(sum(latencies) / len(latencies))
    assert stats["p95_latency"] == latencies[math.ceil(0.95 * len(latencies)) - 1]
    assert stats["total_cost"] == pytest.approx(sum(row.cost or 0 for row in chosen))
    assert stats["total_audio_seconds"] == pytest.approx(
        sum(row.audio_seconds or 0 for row in chosen)
    )
    empty = await queries.logs(LogFilters.parse({"providers": "nobody"}))
    assert empty["logs"] == []
    assert empty["stats"] == {
        "total_requests": 0,
        "success_rate": 0.0,
        "average_latency": 0.0,
        "p95_latency": None,
        "total_cost": 0.0,
        "total_audio_seconds": 0.0,
    }


@pytest.mark.parametrize(
    ("needle", "contents"),
    [
        ("50%", {"pay 50% now"}),  # not "500 files": % is no wildcard
        ("a_b", {"a_b here"}),  # not "aXb there": _ is no wildcard
        ("k\\s", {"back\\slash"}),  # not "back/slash": \ is no escape
        ("%", {"pay 50% now"}),
        ("_", {"a_b here"}),
        ("\\", {"back\\slash"}),
        ("plain", {"PLAIN"}),  # without regard to case
    ],
)
async def test_content_search_matches_text_literally(
    filled: tuple[LogQueries, list[LogRow]], needle: str, contents: set[str]
) -> None:
    queries, rows = filled
    found = await _all(queries, MultiDict({"content_search": needle, "limit": "1000"}))
    expected = sorted(r.id for r in rows if r.content and r.content.split(" #")[0] in contents)
    assert found == expected


async def test_a_key_sees_only_its_own_rows(filled: tuple[LogQueries, list[LogRow]]) -> None:
    queries, rows = filled
    mine = await _all(queries, MultiDict({"limit": "1000"}), "team-a")
    assert mine == sorted(row.id for row in rows if row.virtual_key_id == "team-a")
    # Naming another key's id in the filters does not widen it.
    assert await _all(queries, MultiDict({"virtual_key_ids": "team-b"}), "team-a") == []
    other = next(row for row in rows if row.virtual_key_id == "team-b")
    assert await queries.log(other.id, "team-a") is None
    assert await queries.log(other.id) is not None


async def test_one_row_comes_with_its_children(filled: tuple[LogQueries, list[LogRow]]) -> None:
    queries, rows = filled
    parent = await queries.log("req-00001")
    assert parent is not None
    assert [child["id"] for child in parent["children"]] == ["req-00002", "req-00003"]
    assert parent["children"][0] == entry(as_params(rows[2]))
    assert await queries.log("no-such-request") is None


async def test_filter_values_are_the_distinct_providers_models_and_keys(
    filled: tuple[LogQueries, list[LogRow]], store: Store
) -> None:
    queries, _ = filled
    expected = {
        "providers": ["azure", "groq", "openai"],
        "models": ["gpt-4o-transcribe", "my-whisper", "whisper-1"],
        "virtual_key_ids": ["team-a", "team-b"],
    }
    # From the rows not rolled up yet, then from the rollups.
    assert await queries.filterdata() == expected
    await UsageRollups(store).roll_up(time.time() + 7200)
    assert await queries.filterdata() == expected
    mine = await queries.filterdata("team-b")
    assert mine["virtual_key_ids"] == ["team-b"]


# --- usage -------------------------------------------------------------------------------


def _expected_usage(
    rows: Sequence[LogRow], query: UsageQuery, key: str | None = None
) -> dict[str, Any]:
    """What usage() must answer, added up here row by row."""
    width = {"1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}[query.interval]
    buckets: dict[tuple[str | None, int], dict[str, Any]] = {}
    for row in rows:
        at = round(row.timestamp * 1000)
        if not query.start_ms <= at < query.end_ms or (key and row.virtual_key_id != key):
            continue
        group = {
            "virtual_key": row.virtual_key_id,
            "model": row.model_deployment or row.model_requested,
            "provider": row.provider,
        }[query.group_by]
        found = buckets.setdefault(
            (group, at // width * width),
            {"requests": 0, "errors": 0, "audio_seconds": 0.0, "cost": 0.0, "bins": [0] * BINS},
        )
        found["requests"] += 1
        found["errors"] += row.status == "error"
        found["audio_seconds"] += row.audio_seconds or 0.0
        found["cost"] += row.cost or 0.0
        if row.latency is not None:
            found["bins"][bisect.bisect_right(EDGES, row.latency)] += 1
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for (group, start), found in sorted(
        buckets.items(), key=lambda item: (item[0][0] is None, item[0][0] or "", item[0][1])
    ):
        bins = found.pop("bins")
        groups.setdefault(group, []).append(
            {
                "start": entry({**as_params(log_row(0)), "timestamp": start})["timestamp"],
                **found,
                "latency_p50": percentile(bins, 50),
                "latency_p95": percentile(bins, 95),
            }
        )
    return {"groups": [{"group": g, "buckets": b} for g, b in groups.items()]}


def _approx(answer: dict[str, Any]) -> dict[str, Any]:
    for group in answer["groups"]:
        for bucket in group["buckets"]:
            bucket["cost"] = pytest.approx(bucket["cost"], abs=1e-9)
            bucket["audio_seconds"] = pytest.approx(bucket["audio_seconds"], abs=1e-9)
    return answer


async def test_usage_adds_up_rows_and_rollups_alike(store: Store) -> None:
    now = (time.time() // 3600) * 3600 + 1800  # half past an hour
    rows = []
    for i in range(400):
        # Every 11 minutes over the 3 days before now, up to the current hour.
        rows.append(
            replace(
                _rows(now)[i % 84],
                id=f"use-{i:04d}",
                timestamp=now - 3 * 86400 + i * 660 + 0.5,
                parent_request_id=None,
            )
        )
    log = RequestLog(store, LogsSettings())
    log.start()
    for row in rows:
        log.add(row)
    assert await log.flush(10)
    rollups = UsageRollups(store)
    now_ms = int(now * 1000)
    spans: tuple[tuple[Interval, int], ...] = (
        ("1h", 3 * 86_400_000),
        ("1d", 3 * 86_400_000 - 1234),
        ("1m", 7_200_000),
    )
    queries = [
        UsageQuery(group, interval, now_ms - span, now_ms + 60_000)
        for group in GROUP_BYS
        for interval, span in spans
    ]
    # Edges that cut hours in two, and a range wholly inside one hour.
    queries.append(
        UsageQuery("provider", "1h", now_ms - 50 * HOUR_MS - 5000, now_ms - 2 * HOUR_MS + 7)
    )
    queries.append(UsageQuery("model", "1d", now_ms - 20 * 60_000, now_ms))
    for stage in ("rows", "rolled up", "a late row", "rolled up again"):
        if stage == "rolled up":
            assert await rollups.roll_up(now) > 70
        elif stage == "a late row":
            late = replace(rows[5], id="use-late", latency=99_999, cost=1.0)
            log.add(late)
            rows.append(late)
            assert await log.flush(5)
        elif stage == "rolled up again":
            assert await rollups.roll_up(now) == 1
        for query in queries:
            answer = await rollups.usage(query, now=now)
            assert _approx(answer) == _expected_usage(rows, query), (stage, query)
        for group in ("virtual_key", "model"):
            query = UsageQuery(group, "1d", now_ms - 3 * 86_400_000, now_ms + 1)
            answer = await rollups.usage(query, "team-b", now=now)
            assert _approx(answer) == _expected_usage(rows, query, "team-b"), (stage, query)
    await log.close()


async def test_usage_percentiles_are_close_to_the_true_ones(store: Store) -> None:
    now = time.time()
    latencies = [int(10 ** (1 + 3 * (i / 999))) for i in range(1000)]  # 10 ms to 10 s
    log = RequestLog(store, LogsSettings(batch_max_rows=1000))
    log.start()
    for i, latency in enumerate(latencies):
        log.add(log_row(i, timestamp=now - 7200 + i, latency=latency))
    assert await log.flush(10)
    rollups = UsageRollups(store)
    await rollups.roll_up(now)
    query = UsageQuery("provider", "1d", int((now - 86400) * 1000), int(now * 1000))
    (bucket,) = (await rollups.usage(query, now=now))["groups"][0]["buckets"]
    assert bucket["requests"] == 1000
    assert bucket["latency_p50"] == pytest.approx(sorted(latencies)[499], rel=0.1)
    assert bucket["latency_p95"] == pytest.approx(sorted(latencies)[949], rel=0.1)
    await log.close()


# --- parsing -----------------------------------------------------------------------------


def test_filters_parse_repeated_and_comma_separated_values() -> None:
    filters = LogFilters.parse(
        MultiDict(
            [
                ("providers", "openai, groq"),
                ("providers", "azure"),
                ("providers", ""),
                ("status", "error"),
                ("start_time", "2024-05-01T12:00:00.0005+02:00"),
                ("end_time", "2024-05-01t12:00:00z"),
                ("min_latency", "10.2"),
                ("max_latency", "99.9"),
                ("order", "ASC"),
            ]
        )
    )
    assert filters.providers == ("openai", "groq", "azure")
    assert filters.statuses == ("error",)
    assert filters.start_ms == 1_714_557_600_001  # 10:00:00.0005Z, rounded up
    assert filters.end_ms == 1_714_564_800_000
    assert (filters.min_latency, filters.max_latency) == (11, 99)
    assert (filters.limit, filters.offset, filters.sort_by, filters.order) == (
        50,
        0,
        "timestamp",
        "asc",
    )


@pytest.mark.parametrize(
    "query",
    [
        {"status": "done"},
        {"start_time": "2024-05-01"},
        {"start_time": "2024-02-30T00:00:00Z"},
        {"end_time": "2024-05-01T24:00:00Z"},
        {"end_time": "yesterday"},
        {"min_latency": "-1"},
        {"max_latency": "1e3"},
        {"min_cost": "NaN"},
        {"min_cost": "١٢"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"offset": "-5"},
        {"sort_by": "provider"},
        {"order": "sideways"},
        {"content_search": "nul\x00"},
        {"providers": "x" * 1001},
        {"models": ",".join(f"m{i}" for i in range(101))},
    ],
)
def test_a_filter_that_does_not_parse_is_a_400_naming_it(query: dict[str, str]) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        LogFilters.parse(query)
    assert raised.value.status_code == 400
    assert raised.value.param == next(iter(query))


def test_a_single_valued_parameter_given_twice_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as raised:
        LogFilters.parse(MultiDict([("limit", "1"), ("limit", "2")]))
    assert raised.value.param == "limit"


def test_usage_queries_parse_with_defaults_and_bounds() -> None:
    now = 1_714_564_800.0
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(now, UTC)
    query = UsageQuery.parse({}, now=at)
    assert query == UsageQuery("virtual_key", "1h", int(now * 1000) - 86_400_000, int(now * 1000))
    assert (
        UsageQuery.parse({"interval": "1d"}, now=at).start_ms == int(now * 1000) - 30 * 86_400_000
    )
    for bad, param in (
        ({"group_by": "team"}, "group_by"),
        ({"interval": "5m"}, "interval"),
        ({"interval": "1m", "start_time": "2024-04-01T00:00:00Z"}, "start_time"),
        ({"start_time": "2024-05-02T00:00:00Z", "end_time": "2024-05-01T00:00:00Z"}, "start_time"),
    ):
        with pytest.raises(InvalidRequestError) as raised:
            UsageQuery.parse(bad, now=at)
        assert raised.value.param == param
