"""Where a small request's time goes in the proxy: a profiler over many of them.

The proxy runs as its own process under the profiler, in front of the fake
upstream of ``bench_overhead.py``; this process sends 10 KB requests one
after another, then stops the proxy and prints the profile.

Two profilers, for two questions:

- ``cprofile`` (the default; the standard library's deterministic profiler):
  which code the CPU runs. A coroutine is charged only while it runs, never
  while it awaits, so the upstream's own time is not mixed in; each call
  costs the profiler a little, which inflates the many small calls, so read
  it for shares, not absolute times.
- ``pyinstrument`` (``pip install pyinstrument``; a sampling profiler that
  follows asyncio tasks): where a request's wall time goes, awaits
  included, charged to the coroutine that awaited.

    .venv/bin/python scripts/profile_request.py
    .venv/bin/python scripts/profile_request.py --profiler pyinstrument --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from bench_overhead import PATH, small_requests
from benchlib import ROOT, free_port, main, running, wait_until_up


def run_upstream(port: int) -> None:
    from bench_overhead import run_upstream as overhead_upstream

    overhead_upstream(port)


def profiler_command(args: argparse.Namespace, output: Path) -> tuple[str, ...]:
    """The interpreter and profiler arguments that run ``-m proxy`` under the profiler."""
    if args.profiler == "pyinstrument":
        return (sys.executable, "-m", "pyinstrument", "--interval", "0.0002", "-o", str(output))
    return (sys.executable, "-m", "cProfile", "-o", str(output))


def cprofile_report(output: Path, lines: int) -> str:
    """The proxy's CPU by function: most time in the function itself, then cumulative."""
    text = io.StringIO()
    stats = pstats.Stats(str(output), stream=text)
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(r"proxy/", lines)
    return text.getvalue()


async def bench(args: argparse.Namespace) -> None:
    upstream_port = free_port()
    upstream = (sys.executable, str(ROOT / "scripts" / "bench_overhead.py"), "upstream")
    with tempfile.TemporaryDirectory(prefix="profile-") as scratch:
        config = Path(scratch) / "proxy.json"
        config.write_text(
            json.dumps(
                {
                    "providers": {
                        "openai": {
                            "keys": [{"value": "sk-bench"}],
                            "network_config": {"base_url": f"http://127.0.0.1:{upstream_port}"},
                        }
                    },
                    "proxy": {"web_ui": False},
                }
            )
        )
        port = free_port()
        output = Path(scratch) / "profile.out"
        profiled = (
            *profiler_command(args, output),
            *("-m", "proxy", "--port", str(port), "--config", str(config)),
            *("--log-level", "WARNING"),
        )
        async with running(
            *upstream, "--port", str(upstream_port), up=f"http://127.0.0.1:{upstream_port}/"
        ):
            process = await asyncio.create_subprocess_exec(*profiled, cwd=ROOT)
            try:
                await wait_until_up(f"http://127.0.0.1:{port}/health")
                async with aiohttp.ClientSession() as session:
                    url = f"http://127.0.0.1:{port}{PATH}"
                    started = time.perf_counter()
                    await small_requests(session, url, args.requests)
                    elapsed = time.perf_counter() - started
            finally:
                process.send_signal(signal.SIGINT)
                await process.wait()
        print(
            f"{args.requests} requests of 10 KB in {elapsed:.2f} s "
            f"({elapsed / args.requests * 1000:.2f} ms each, under the profiler)"
        )
        if args.profiler == "pyinstrument":
            print(output.read_text())
        else:
            print(cprofile_report(output, args.lines))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=3000, help="10 KB requests (3000)")
    parser.add_argument(
        "--profiler", choices=("cprofile", "pyinstrument"), default="cprofile", help="(cprofile)"
    )
    parser.add_argument("--lines", type=int, default=40, help="functions listed (40)")


if __name__ == "__main__":
    main(__doc__, add_arguments, run_upstream, bench)
