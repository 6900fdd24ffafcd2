"""The request log's filters, read from a request's query: anything that does not parse is
a 400 naming the parameter, so every filter that reaches SQL is a typed, bounded value
(and only ever a bound parameter)."""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

from multidict import MultiMapping

from ..errors import InvalidRequestError
from .log_rows import EPOCH, STATUSES, LogRow

SortKey = Literal["timestamp", "latency", "cost", "audio_seconds"]
SORT_KEYS: tuple[SortKey, ...] = ("timestamp", "latency", "cost", "audio_seconds")
Order = Literal["asc", "desc"]
GroupBy = Literal["virtual_key", "model", "provider"]
GROUP_BYS: tuple[GroupBy, ...] = ("virtual_key", "model", "provider")
Interval = Literal["1m", "1h", "1d"]
INTERVAL_MS: dict[Interval, int] = {"1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
#: Values one list filter may name (each is a bound parameter of an ``IN``).
MAX_VALUES = 100
#: Characters in one parameter's value.
MAX_TEXT = 1000
#: Buckets one usage query may ask for (a day of minutes fits).
MAX_BUCKETS = 2000
#: A usage query's span when it names no start: a few dozen buckets.
DEFAULT_SPANS: dict[Interval, timedelta] = {
    "1m": timedelta(hours=1),
    "1h": timedelta(days=1),
    "1d": timedelta(days=30),
}

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_NUMBER = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
_WHOLE = re.compile(r"[0-9]{1,12}")
_Choice = TypeVar("_Choice", bound=str)
_NAIVE_EPOCH = datetime(1970, 1, 1)

#: What no value may hold: NUL (PostgreSQL's text cannot) and lone surrogates (not UTF-8).
_UNSAFE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class LogFilters:
    """Which rows ``GET /api/logs`` (and the live tail) is about, and which page of them."""

    providers: tuple[str, ...] = ()
    #: A row matches when its requested model or its deployment is listed.
    models: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    virtual_key_ids: tuple[str, ...] = ()
    #: Both ends included; Unix epoch milliseconds.
    start_ms: int | None = None
    end_ms: int | None = None
    #: Milliseconds, both ends included.
    min_latency: int | None = None
    max_latency: int | None = None
    #: USD.
    min_cost: float | None = None
    #: Text the stored transcript contains, matched literally and without regard to case.
    content_search: str | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    sort_by: SortKey = "timestamp"
    order: Order = "desc"

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> LogFilters:
        """The filters a query names (a ``MultiDict`` for repeated parameters; any value
        may also be comma-separated); unknown parameters are left to the caller.

        Raises :class:`InvalidRequestError` naming the parameter that does not parse.
        """
        statuses = _names(query, "status")
        for status in statuses:
            if status not in STATUSES:
                raise InvalidRequestError(
                    f"status: {status!r} is not one of {', '.join(STATUSES)}", param="status"
                )
        start = _time(query, "start_time", up=True)
        end = _time(query, "end_time", up=False)
        min_latency = _number(query, "min_latency")
        max_latency = _number(query, "max_latency")
        min_cost = _number(query, "min_cost")
        content = _one(query, "content_search")
        limit = _whole(query, "limit", DEFAULT_LIMIT)
        if limit > MAX_LIMIT:
            raise InvalidRequestError(f"limit: at most {MAX_LIMIT}, got {limit}", param="limit")
        return cls(
            providers=_names(query, "providers"),
            models=_names(query, "models"),
            statuses=statuses,
            objects=_names(query, "objects"),
            virtual_key_ids=_names(query, "virtual_key_ids"),
            start_ms=start,
            end_ms=end,
            # The column holds whole milliseconds: a bound between two is the next one in.
            min_latency=None if min_latency is None else math.ceil(min_latency),
            max_latency=None if max_latency is None else math.floor(max_latency),
            min_cost=min_cost,
            content_search=content or None,
            limit=limit,
            offset=_whole(query, "offset", 0),
            sort_by=_choice(query, "sort_by", SORT_KEYS, "timestamp"),
            order=_choice(query, "order", ("asc", "desc"), "desc"),
        )

    def matches(self, row: LogRow) -> bool:
        """Whether ``row`` is one of the rows these filters select (the live tail's test,
        the same as the query's)."""
        timestamp = round(row.timestamp * 1000)
        return (
            (not self.providers or row.provider in self.providers)
            and (
                not self.models
                or row.model_requested in self.models
                or row.model_deployment in self.models
            )
            and (not self.statuses or row.status in self.statuses)
            and (not self.objects or row.object in self.objects)
            and (not self.virtual_key_ids or row.virtual_key_id in self.virtual_key_ids)
            and (self.start_ms is None or timestamp >= self.start_ms)
            and (self.end_ms is None or timestamp <= self.end_ms)
            and _at_least(row.latency, self.min_latency)
            and (
                self.max_latency is None
                or (row.latency is not None and row.latency <= self.max_latency)
            )
            and _at_least(row.cost, self.min_cost)
            and (
                self.content_search is None
                or (row.content is not None and self.content_search.lower() in row.content.lower())
            )
        )


@dataclass(frozen=True)
class UsageQuery:
    """What ``GET /api/usage`` asks: totals by key, model or provider, per interval."""

    group_by: GroupBy
    interval: Interval
    #: Unix epoch milliseconds, the start included and the end not.
    start_ms: int
    end_ms: int

    @classmethod
    def parse(cls, query: Mapping[str, str], now: datetime | None = None) -> UsageQuery:
        """The usage query a request's query names: ``group_by`` (``virtual_key``),
        ``interval`` (``1h``), ``start_time`` (a few dozen intervals before the end),
        ``end_time`` (now). Raises :class:`InvalidRequestError` naming the parameter."""
        group_by = _choice(query, "group_by", GROUP_BYS, "virtual_key")
        interval = _choice(query, "interval", tuple(INTERVAL_MS), "1h")
        end = _time(query, "end_time", up=False)
        if end is None:
            end = epoch_ms(now or datetime.now(UTC))
        start = _time(query, "start_time", up=True)
        if start is None:
            start = end - DEFAULT_SPANS[interval] // timedelta(milliseconds=1)
        if start > end:
            raise InvalidRequestError("start_time: after end_time", param="start_time")
        width = INTERVAL_MS[interval]
        buckets = end // width - start // width + 1
        if buckets > MAX_BUCKETS:
            raise InvalidRequestError(
                f"start_time: {buckets} intervals of {interval} from start_time to end_time; "
                f"at most {MAX_BUCKETS} (a later start_time or a longer interval)",
                param="start_time",
            )
        return cls(group_by=group_by, interval=interval, start_ms=start, end_ms=end)


def epoch_ms(moment: datetime) -> int:
    """An aware datetime as Unix epoch milliseconds (its sub-millisecond part dropped)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _at_least(value: float | None, bound: float | None) -> bool:
    return bound is None or (value is not None and value >= bound)


def _raw(query: Mapping[str, str], name: str) -> list[str]:
    """Every value ``name`` is given, each checked to be text a database can take."""
    if isinstance(query, MultiMapping):
        values = [str(v) for v in query.getall(name, [])]
    else:
        values = [] if name not in query else [str(query[name])]
    for value in values:
        if len(value) > MAX_TEXT:
            raise InvalidRequestError(f"{name}: longer than {MAX_TEXT} characters", param=name)
        if _UNSAFE.search(value) is not None:
            raise InvalidRequestError(
                f"{name}: contains a NUL character or an unpaired surrogate", param=name
            )
    return values


def _one(query: Mapping[str, str], name: str) -> str | None:
    """The value of a parameter given at most once."""
    values = _raw(query, name)
    if len(values) > 1:
        raise InvalidRequestError(f"{name}: given more than once", param=name)
    return values[0] if values else None


def _names(query: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A list parameter: repeated, comma-separated, or both; blanks ignored."""
    names: dict[str, None] = {}
    for value in _raw(query, name):
        for item in value.split(","):
            if item := item.strip():
                names[item] = None
    if len(names) > MAX_VALUES:
        raise InvalidRequestError(f"{name}: at most {MAX_VALUES} values", param=name)
    return tuple(names)


def _choice(
    query: Mapping[str, str], name: str, choices: tuple[_Choice, ...], default: _Choice
) -> _Choice:
    value = _one(query, name)
    if value is None or value == "":
        return default
    for choice in choices:
        if value.lower() == choice.lower():
            return choice
    raise InvalidRequestError(f"{name}: {value!r} is not one of {', '.join(choices)}", param=name)


def _whole(query: Mapping[str, str], name: str, default: int) -> int:
    value = _one(query, name)
    if value is None:
        return default
    if _WHOLE.fullmatch(value) is None:
        raise InvalidRequestError(f"{name}: expected a whole number, got {value!r}", param=name)
    return int(value)


def _number(query: Mapping[str, str], name: str) -> float | None:
    value = _one(query, name)
    if value is None:
        return None
    if _NUMBER.fullmatch(value) is None:
        raise InvalidRequestError(
            f"{name}: expected a number of at most 15 digits (and 9 decimals), got {value!r}",
            param=name,
        )
    return float(value)


def _time(query: Mapping[str, str], name: str, *, up: bool) -> int | None:
    """An RFC 3339 date-time as epoch milliseconds, rounded ``up`` (a start: nothing
    before it) or down (an end)."""
    value = _one(query, name)
    if value is None:
        return None
    match = _RFC3339.fullmatch(value)
    millis = None if match is None else _epoch_ms(match, up=up)
    if millis is None:
        raise InvalidRequestError(
            f"{name}: expected an RFC 3339 date-time (2024-05-01T12:00:00Z), got {value!r}",
            param=name,
        )
    return millis


def _epoch_ms(match: re.Match[str], *, up: bool) -> int | None:
    """The epoch milliseconds a matched RFC 3339 string names, or None when its fields
    are out of range (a 13th month, a 25th hour). Integer arithmetic throughout: an
    offset cannot push year 1 or 9999 out of :class:`datetime`'s range."""
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    sign, hours, minutes = match.group(9), match.group(10), match.group(11)
    offset_s = 0
    if sign is not None:
        if int(hours) > 23 or int(minutes) > 59:
            return None
        offset_s = (int(hours) * 3600 + int(minutes) * 60) * (1 if sign == "+" else -1)
    if not (1 <= month <= 12 and hour <= 23 and minute <= 59 and second <= 60 and year >= 1):
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    # A leap second (:60) is the next minute's start, as most systems read it.
    naive = datetime(year, month, day, hour, minute, min(second, 59))
    seconds = (naive - _NAIVE_EPOCH) // timedelta(seconds=1) + (second - min(second, 59))
    nanos = int((match.group(7) or "0").ljust(9, "0"))
    millis = (seconds - offset_s) * 1000 + nanos // 1_000_000
    return millis + 1 if up and nanos % 1_000_000 else millis
