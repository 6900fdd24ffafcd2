"""Where a small request's time goes in the proxy: pyinstrument over many of them.

The proxy runs as its own process under pyinstrument (a statistical profiler
that follows asyncio tasks and costs little per sample, so the profile's
shape is the proxy's own), in front of the fake upstream of
``bench_overhead.py``; this process sends 10 KB requests one after another,
then stops the proxy, whose report is printed: the proxy's frames with the
time spent in them.

    .venv/bin/python scripts/profile_request.py
    .venv/bin/python scripts/profile_request.py --requests 5000 --html profile.html
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
                    }
                }
            )
        )
        port = free_port()
        report = Path(args.html) if args.html else Path(scratch) / "profile.txt"
        renderer = "html" if args.html else "text"
        profiled = (
            sys.executable,
            "-m",
            "pyinstrument",
            "--interval",
            "0.0002",
            "-r",
            renderer,
            "-o",
            str(report),
            "-m",
            "proxy",
            "--port",
            str(port),
            "--config",
            str(config),
            "--log-level",
            "WARNING",
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
        if not args.html:
            print(report.read_text())
        else:
            print(f"wrote {report}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=3000, help="10 KB requests (3000)")
    parser.add_argument("--html", help="write an HTML report here instead of printing text")


if __name__ == "__main__":
    main(__doc__, add_arguments, run_upstream, bench)
