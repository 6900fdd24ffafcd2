"""Where a small request's time goes in the proxy: a profiler over many of them.

The proxy runs as its own process under the profiler, in front of the fake
upstream of ``bench_overhead.py``; this process sends 10 KB requests one
after another, then stops the proxy and prints the profile.

Two profilers, for two questions:

- ``cprofile`` (the default; the standard library's deterministic profiler):
  which code the CPU runs. A coroutine is charged only while it runs, never
  while it awaits, so the upstream's own time is not mixed in. Each call
  costs the profiler a little, so its times are read as shares: the report
  turns them into milliseconds with the CPU per request measured first,
  without the profiler, and lists the stages of a request with its own
  listing of functions below.
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
from typing import Any

import aiohttp
from bench_overhead import PATH, small_requests
from benchlib import (
    ROOT,
    cpu_seconds,
    free_port,
    main,
    one_provider,
    proxy_with,
    running,
    wait_until_up,
)


def run_upstream(port: int) -> None:
    from bench_overhead import run_upstream as overhead_upstream

    overhead_upstream(port)


def profiler_command(args: argparse.Namespace, output: Path) -> tuple[str, ...]:
    """The interpreter and profiler arguments that run ``-m proxy`` under the profiler."""
    if args.profiler == "pyinstrument":
        return (sys.executable, "-m", "pyinstrument", "--interval", "0.0002", "-o", str(output))
    return (sys.executable, "-m", "cProfile", "-o", str(output))


#: Where a function's cumulative time is a stage's: (stage, file, functions).
#: The handler's stages run inside the middleware; the others outside it.
HANDLER_STAGES = (
    ("request id", "proxy/logs.py", ("new_request_id",)),
    ("auth", "proxy/governance/credentials.py", ("identify",)),
    ("form reading", "proxy/form/reader.py", ("read",)),
    ("routing", "proxy/router.py", ("plan",)),
    ("governance", "proxy/governance/governor.py", ("check_routes", "admit", "settle")),
    ("upstream call: pool, headers, send, answer read", "proxy/providers/http.py", ("transcribe",)),
    ("answer JSON", "proxy/answers/responses.py", ("transcription_response",)),
)
HANDLER = ("proxy/app.py", ("observe_middleware",))
OTHER_STAGES = (
    ("sockets read, HTTP parsed (both sides)", "asyncio/selector_events.py", ("_read_ready",)),
    ("upstream body (its own write task)", "aiohttp/client_reqrep.py", ("write_bytes",)),
    ("answer written to the client", "aiohttp/web_protocol.py", ("finish_response",)),
    ("access log and request metrics", "proxy/app.py", ("_access_log",)),
)


def stage_report(output: Path, cpu_ms: float) -> str:
    """Each stage's share of the busy time under the profiler, and that share of ``cpu_ms``."""
    stats: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(str(output)).stats  # type: ignore[attr-defined]
    busy = sum(
        float(entry[2])
        for (file, _, function), entry in stats.items()
        if "poll" not in function and "importlib" not in file and function != "<module>"
    )

    def seconds(where: str, functions: tuple[str, ...]) -> float:
        return sum(
            float(entry[3])
            for (file, _, function), entry in stats.items()
            if file.endswith(where) and function in functions
        )

    def line(stage: str, time: float) -> str:
        return f"| {stage} | {time / busy:.0%} | {time / busy * cpu_ms:.2f} |"

    lines = [f"| stage | share | ms of {cpu_ms:.2f} ms CPU per request |", "|---|---|---|"]
    handler = seconds(*HANDLER)
    lines.append(line("**in the handler**", handler))
    for stage, where, functions in HANDLER_STAGES:
        time = seconds(where, functions)
        handler -= time
        lines.append(line(f"- {stage}", time))
    lines.append(line("- the handler's own steps, middleware included", handler))
    rest = busy - seconds(*HANDLER)
    for stage, where, functions in OTHER_STAGES:
        time = seconds(where, functions)
        rest -= time
        lines.append(line(stage, time))
    lines.append(line("the event loop, tasks and timers, aiohttp's request dispatch", rest))
    return "\n".join(lines)


def cprofile_report(output: Path, lines: int, cpu_ms: float) -> str:
    """The stages of a request, then the proxy's CPU by function."""
    text = io.StringIO()
    stats = pstats.Stats(str(output), stream=text)
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(r"proxy/", lines)
    return stage_report(output, cpu_ms) + "\n" + text.getvalue()


async def cpu_per_request(config: dict[str, Any], requests: int) -> float:
    """The proxy's CPU per 10 KB request in ms, without a profiler."""
    async with proxy_with(config) as (port, process), aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}{PATH}"
        await small_requests(session, url, 200)  # warm up
        before = cpu_seconds(process.pid)
        await small_requests(session, url, requests)
        return (cpu_seconds(process.pid) - before) / requests * 1000


async def bench(args: argparse.Namespace) -> None:
    upstream_port = free_port()
    upstream = (sys.executable, str(ROOT / "scripts" / "bench_overhead.py"), "upstream")
    settings = one_provider(upstream_port)
    with tempfile.TemporaryDirectory(prefix="profile-") as scratch:
        config = Path(scratch) / "proxy.json"
        config.write_text(json.dumps(settings))
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
            cpu_ms = await cpu_per_request(settings, args.requests)
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
            print(cprofile_report(output, args.lines, cpu_ms))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=3000, help="10 KB requests (3000)")
    parser.add_argument(
        "--profiler", choices=("cprofile", "pyinstrument"), default="cprofile", help="(cprofile)"
    )
    parser.add_argument("--lines", type=int, default=40, help="functions listed (40)")


if __name__ == "__main__":
    main(__doc__, add_arguments, run_upstream, bench)
