"""Latency histograms: the bins usage rollups count latencies in, and percentiles read
back from them.

Bins are whole milliseconds up to 8 ms, then a quarter of an octave wide (each
edge 2^(1/4), about 19%, above the last) up to 2^24 ms (4.7 hours), and one bin
past that: 93 bins. A percentile read from them is the bin's geometric middle,
within 9% of the true value (exact below 8 ms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, case, literal_column, null

#: Each bin's upper edge (exclusive), ascending; bin ``i`` holds latencies from
#: ``EDGES[i - 1]`` (0 for the first) up to ``EDGES[i]``; the last bin has no edge.
EDGES: tuple[int, ...] = tuple(sorted({math.ceil(2 ** (i / 4)) for i in range(97)}))
BINS = len(EDGES) + 1
#: The rollup table's histogram columns, one per bin.
BIN_COLUMNS: tuple[str, ...] = tuple(f"l{i:02d}" for i in range(BINS))


def bin_of(latency: ColumnElement[Any]) -> ColumnElement[Any]:
    """The bin of ``latency`` in SQL (NULL for none): a CASE tree, seven comparisons deep,
    that both backends evaluate alike (no logarithm: SQLite may lack one)."""
    return case((latency.is_(None), null()), else_=_tree(latency, 0, BINS - 1))


def _tree(latency: ColumnElement[Any], low: int, high: int) -> ColumnElement[Any]:
    if low == high:
        return literal_column(str(low))
    middle = (low + high) // 2
    # Bins up to ``middle`` hold latencies below its upper edge. The edges are this
    # module's constants, written into the SQL (not values from a request).
    return case(
        (latency < literal_column(str(EDGES[middle])), _tree(latency, low, middle)),
        else_=_tree(latency, middle + 1, high),
    )


def percentile(histogram: Sequence[int], percent: int) -> int | None:
    """The nearest-rank ``percent``-th percentile of the latencies ``histogram`` counts,
    as its bin's geometric middle (whole milliseconds); None when it counts none."""
    count = sum(histogram)
    if not count:
        return None
    rank = nearest_rank(count, percent)
    seen = 0
    for index, in_bin in enumerate(histogram):
        seen += in_bin
        if seen >= rank:
            return middle(index)
    return middle(BINS - 1)


def nearest_rank(count: int, percent: int) -> int:
    """The nearest rank of the ``percent``-th percentile among ``count`` values (1-based):
    ``ceil(count * percent / 100)``, in integers as the SQL computes it."""
    return (count * percent + 99) // 100


def middle(index: int) -> int:
    """A bin's representative latency: exact for a one-millisecond bin, the lower edge
    for the last (unbounded) bin, else the geometric middle of its edges."""
    low = EDGES[index - 1] if index > 0 else 0
    if index >= len(EDGES):
        return low
    high = EDGES[index]
    if high - low <= 1:
        return low
    return round(math.sqrt(low * high))
