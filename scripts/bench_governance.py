"""Governance benchmark: how soon a virtual key changed on one replica is honoured by
another sharing its store, polling it (``proxy.governance_poll_s``, 0.5 s) or told over
Redis pub/sub.

Two proxy processes share one SQLite store (and, in the Redis mode, one redis-server
this script starts). ``--changes`` times a key is deactivated or activated again on
the first (``PUT /api/governance/virtual-keys/{id}``, each at a random moment of the
poll's cycle); from the moment its answer
arrives, the second is asked every 5 ms (``GET /api/logs?limit=1`` with the key:
200 while it is active, 403 once it is not) until it answers as the change says.
Reported: the p50, p95 and longest of those delays, against the change's own round
trip on the first replica (the baseline, measured in the same run) and the 1 s target.

    .venv/bin/python scripts/bench_governance.py
    .venv/bin/python scripts/bench_governance.py --modes redis --changes 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from benchlib import ROOT, free_port, percentile, proxy_with, system_binary

sys.path.insert(0, str(ROOT))

ADMIN = "sk-admin-bench-governance-0123456789"
TARGET_MS = 1000.0
#: How often the second replica is asked while a change is on its way.
PROBE_INTERVAL_S = 0.005
#: ``proxy.governance_poll_s``'s default.
POLL_S = 0.5


def replica_config(store_url: str, redis_url: str | None) -> dict[str, Any]:
    """A replica with credentials required, an admin key, and the shared store."""
    proxy: dict[str, Any] = {"store": store_url, "web_ui": False}
    if redis_url is not None:
        proxy["redis_url"] = redis_url
    return {
        "client": {"enforce_auth_on_inference": True},
        "governance": {"admin_keys": [ADMIN]},
        "proxy": proxy,
        "logs": {"flush_interval_ms": 100},
    }


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    """A redis-server on a free port (installed with apt-get the first time)."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        system_binary("redis-server", "redis-server"),
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        await process.wait()


async def probe(http: aiohttp.ClientSession, port: int, value: str) -> int:
    """The status the replica at ``port`` answers the key ``value`` with."""
    url = f"http://127.0.0.1:{port}/api/logs?limit=1"
    async with http.get(url, headers={"x-bf-vk": value}) as response:
        await response.read()
        return response.status


async def answered_with(http: aiohttp.ClientSession, port: int, value: str, wanted: int) -> None:
    """Ask the replica at ``port`` every 5 ms until it answers ``value`` with ``wanted``."""
    while True:
        if await probe(http, port, value) == wanted:
            return
        await asyncio.sleep(PROBE_INTERVAL_S)


async def measure(first: int, second: int, changes: int) -> tuple[list[float], list[float]]:
    """Per change: the first replica's round trip, and the delay until the second honours
    it (both in ms)."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    api = f"http://127.0.0.1:{first}/api/governance/virtual-keys"
    key: dict[str, Any] = {"provider_configs": []}
    round_trips, delays = [], []
    async with aiohttp.ClientSession() as http:
        async with http.post(api, json={"id": "bench", **key}, headers=admin) as response:
            value = (await response.json())["value"]
        await answered_with(http, second, value, 200)
        rng = random.Random(1)
        for change in range(changes):
            # At a random moment of the poll's cycle: right after the previous change was
            # seen, the next poll is a whole interval away.
            await asyncio.sleep(rng.uniform(0, POLL_S))
            active = change % 2 == 1
            started = time.perf_counter()
            async with http.put(
                f"{api}/bench", json={**key, "is_active": active}, headers=admin
            ) as response:
                assert response.status == 200, await response.text()
            answered = time.perf_counter()
            round_trips.append((answered - started) * 1000)
            wanted = 200 if active else 403
            await answered_with(http, second, value, wanted)
            delays.append((time.perf_counter() - answered) * 1000)
    return round_trips, delays


async def bench_mode(mode: str, changes: int) -> tuple[str, ...]:
    with tempfile.TemporaryDirectory(prefix="bench-governance-") as directory:
        store_url = f"sqlite:///{directory}/proxy.sqlite3"
        async with contextlib.AsyncExitStack() as stack:
            redis_url = await stack.enter_async_context(redis_server()) if mode == "redis" else None
            config = replica_config(store_url, redis_url)
            first, _ = await stack.enter_async_context(proxy_with(config))
            second, _ = await stack.enter_async_context(proxy_with(config))
            round_trips, delays = await measure(first, second, changes)
    baseline = statistics.median(round_trips)
    p50, p95 = statistics.median(delays), percentile(delays, 95)
    verdict = "ok" if p95 <= TARGET_MS else f"MISSES {TARGET_MS:g} ms"
    return (
        mode,
        f"{changes} changes",
        f"change p50 {baseline:.1f} ms (baseline)",
        f"seen on the other replica p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(delays):.1f} ms",
        f"p95 = {p95 / baseline:.1f}x baseline",
        verdict,
    )


async def bench(args: argparse.Namespace) -> None:
    lines = [await bench_mode(mode, args.changes) for mode in args.modes.split(",")]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--modes", default="polling,redis", help="polling, redis or both")
    parser.add_argument("--changes", type=int, default=100, help="key changes timed (100)")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
