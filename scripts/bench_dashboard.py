"""Dashboard benchmark: its first paint (charts and table drawn) in Chromium, over a store
holding 30 days of requests, against the same page over an empty store in the same run.

The rows (``--rows-per-day`` for each of 30 days, as scripts/bench_store.py makes them)
go into a SQLite store with a bulk insert, their usage rolled up as the proxy's writer
would have; then the proxy (``python -m proxy``) serves each store in turn, and a fresh
page of Debian's chromium (driven by Playwright) opens ``/dashboard`` ``--times`` times.
Measured in the page: from the navigation's start to the mark the page sets once every
section has answered and been drawn (``dashboard:painted``); then, on the full store,
from choosing the 30-day range to its charts being drawn.

    .venv/bin/python scripts/bench_dashboard.py
    .venv/bin/python scripts/bench_dashboard.py --rows-per-day 1000 --times 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_store import fill
from benchlib import ROOT, free_port, one_provider, proxy_with

sys.path.insert(0, str(ROOT))

from proxy.store.engine import open_store
from proxy.store.usage import UsageRollups
from tests.helpers.browser import launch

TARGET_MS = 1000.0


async def filled(data_dir: Path, rows: int) -> tuple[float, float]:
    """``rows`` rows over 30 days in ``data_dir``'s store, rolled up; seconds taken to
    insert them, and to roll them up."""
    store = await open_store(f"sqlite:///{data_dir}/proxy.sqlite3")
    try:
        inserted_s = await fill(store, rows)
        # Imported rows are not the writer's: mark their hours, then roll them up.
        started = time.monotonic()
        rollups = UsageRollups(store)
        await rollups.rebuild()
        await rollups.roll_up()
        return inserted_s, time.monotonic() - started
    finally:
        await store.close()


async def paints(browser: Any, url: str, times: int) -> list[float]:
    """Milliseconds from navigation to the dashboard's first paint, in ``times`` fresh pages."""
    took = []
    for _ in range(times + 1):  # the first warms the proxy's and the store's caches
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        await page.goto(url)
        await page.wait_for_selector("body[data-painted]", timeout=60_000)
        took.append(
            await page.evaluate("performance.getEntriesByName('dashboard:painted')[0].startTime")
        )
        await context.close()
    return took[1:]


async def month_views(browser: Any, url: str, times: int) -> list[float]:
    """Milliseconds from choosing the 30-day range to its charts being drawn, ``times``
    times (back to the day's range between)."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(url)
    await page.wait_for_selector("body[data-painted]", timeout=60_000)
    took = []
    for _ in range(times):
        started = await page.evaluate("performance.now()")
        await page.select_option("#range", "month")
        await page.wait_for_selector("#usage[data-range=month]", timeout=60_000)
        took.append(await page.evaluate("performance.now()") - started)
        await page.select_option("#range", "day")
        await page.wait_for_selector("#usage[data-range=day]", timeout=60_000)
    await page.close()
    return took


async def measure(data_dir: Path, browser: Any, times: int, month: bool) -> dict[str, float]:
    config = one_provider(free_port())
    config["proxy"] = {**config["proxy"], "web_ui": True, "data_dir": str(data_dir)}
    async with proxy_with(config) as (port, _):
        url = f"http://127.0.0.1:{port}/dashboard"
        took = await paints(browser, url, times)
        result = {"p50": statistics.median(took), "max": max(took)}
        if month:
            result["month"] = statistics.median(await month_views(browser, url, times))
    return result


async def bench(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    rows = args.rows_per_day * 30
    with (
        tempfile.TemporaryDirectory(prefix="bench-dash-empty-") as empty,
        tempfile.TemporaryDirectory(prefix="bench-dash-full-") as full,
    ):
        inserted_s, rolled_s = await filled(Path(full), rows)
        print(
            f"stored {rows:,} rows over 30 days in {inserted_s:.1f} s, "
            f"rolled up in {rolled_s:.1f} s",
            file=sys.stderr,
        )
        async with async_playwright() as playwright:
            browser = await launch(playwright)
            try:
                baseline = await measure(Path(empty), browser, args.times, month=False)
                loaded = await measure(Path(full), browser, args.times, month=True)
            finally:
                await browser.close()
    verdict = "ok" if loaded["p50"] <= TARGET_MS else f"MISSES {TARGET_MS:g} ms"
    empty_p50, empty_max = baseline["p50"], baseline["max"]
    print(f"first paint, empty store:        p50 {empty_p50:.0f} ms, max {empty_max:.0f} ms")
    print(
        f"first paint, {rows:,} rows/30 days: p50 {loaded['p50']:.0f} ms, "
        f"max {loaded['max']:.0f} ms ({loaded['p50'] / baseline['p50']:.1f}x empty)  {verdict}"
    )
    print(f"30-day charts drawn after choosing them: p50 {loaded['month']:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--rows-per-day", type=int, default=3000, help="rows in each of 30 days (3000)"
    )
    parser.add_argument("--times", type=int, default=5, help="page loads measured per store (5)")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
