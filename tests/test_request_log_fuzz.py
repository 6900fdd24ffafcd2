"""Any text in any parameter of the log's and usage's queries is either a filter that runs
or a 400 naming that parameter: never an SQL error (on SQLite and PostgreSQL alike)."""

from __future__ import annotations

import asyncio
import string
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from proxy.config.schema import LogsSettings
from proxy.errors import InvalidRequestError
from proxy.store.engine import Store, open_store
from proxy.store.log_filters import LogFilters, UsageQuery
from proxy.store.log_queries import LogQueries
from proxy.store.request_log import RequestLog
from tests.helpers.log_rows import log_row

_T = TypeVar("_T")

LOG_PARAMETERS = [
    "providers", "models", "status", "objects", "virtual_key_ids", "start_time", "end_time",
    "min_latency", "max_latency", "min_cost", "content_search", "limit", "offset", "sort_by",
    "order",
]  # fmt: skip
USAGE_PARAMETERS = ["group_by", "interval", "start_time", "end_time"]

#: Values near the valid ones (where parsers slip) as well as any text at all.
values = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=string.printable, max_size=40),
    st.sampled_from(
        ["", "asc", "DESC", "latency", "success", "error,processing", "1h", "1m", "1d", "model",
         "%", "_", "\\", "%_\\'\";--", "' OR 1=1 --", "9" * 15, "9" * 16, "1.5", "0.000000001",
         "1001", "1000", "-1", "1e308", "inf", "nan", "٣", "2024-05-01T12:00:00Z",
         "2024-05-01T12:00:00.123456789+23:59", "0001-01-01T00:00:00+23:59",
         "9999-12-31T23:59:60-23:59", "2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z"]
    ),
    st.from_regex(r"[0-9]{1,18}(\.[0-9]{0,12})?", fullmatch=True),
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,12})?"
        r"([Zz]|[+-][0-9]{2}:[0-9]{2})",
        fullmatch=True,
    ),
)  # fmt: skip


class LoopThread:
    """An event loop in a thread, for Hypothesis (whose tests are not coroutines) to run
    queries on one open store."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _parsed(parse: Callable[[], _T]) -> _T | InvalidRequestError:
    """What ``parse`` returns, or the 400 it raises."""
    try:
        return parse()
    except InvalidRequestError as refused:
        return refused


@pytest.fixture
def opened(store_url: str) -> Iterator[tuple[LoopThread, Store]]:
    runner = LoopThread()
    store = runner.run(open_store(store_url))

    async def fill() -> None:
        log = RequestLog(store, LogsSettings(content=True))
        log.start()
        for number in range(50):
            log.add(log_row(number, content=f"said 50% of a_b \\ {number}"))
        await log.close()

    runner.run(fill())
    yield runner, store
    runner.run(store.close())
    runner.stop()


def test_any_log_query_is_a_filter_that_runs_or_a_400_naming_its_parameter(
    opened: tuple[LoopThread, Store],
) -> None:
    runner, store = opened
    queries = LogQueries(store)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.sampled_from(LOG_PARAMETERS), values), max_size=6))
    def check(items: list[tuple[str, str]]) -> None:
        query = MultiDict(items)
        filters = _parsed(lambda: LogFilters.parse(query))
        if isinstance(filters, InvalidRequestError):
            assert filters.status_code == 400
            assert filters.param in query
            return
        answer = runner.run(queries.logs(filters, virtual_key_id="team-a"))
        assert len(answer["logs"]) <= filters.limit
        assert answer["pagination"]["total_count"] >= len(answer["logs"])

    check()


def test_any_usage_query_is_one_that_runs_or_a_400_naming_its_parameter(
    opened: tuple[LoopThread, Store],
) -> None:
    runner, store = opened
    queries = LogQueries(store)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.sampled_from(USAGE_PARAMETERS), values), max_size=4))
    def check(items: list[tuple[str, str]]) -> None:
        query = MultiDict(items)
        usage = _parsed(lambda: UsageQuery.parse(query))
        if isinstance(usage, InvalidRequestError):
            assert usage.status_code == 400
            assert usage.param in query
            return
        answer = runner.run(queries.usage(usage))
        assert isinstance(answer["groups"], list)

    check()
