"""What tracing costs the proxy: its CPU per 10 KB request, and per GiB uploaded, with
tracing off and with tracing on (spans sent to a local OTLP/HTTP receiver).

One fake upstream (bench_overhead.py's), an OTLP receiver (this script's
``upstream`` role: it decodes and counts the spans it is sent), and the proxy
twice, as separate processes (each with its own data directory): tracing off, and
tracing on with the SDK's default batching. With ``--baseline``, a checkout of the
proxy from before tracing is measured as well, in the same rounds. Each
measurement runs on every proxy in turn, interleaved, for many short rounds (in
reverse order every other round, so that a drift of the machine's speed charges
no proxy more than another); a proxy's CPU is read from /proc (each thread's
schedstat, in nanoseconds: the SDK exports from a thread of its own), and each
round's is counted up to that proxy's next round (or a settle longer than the
batch delay after the last), so spans exported after a round are charged to it.
Ratios are the median of each round's ratio, proxy to proxy in the same round.
Everything runs on 127.0.0.1.

    .venv/bin/python scripts/bench_tracing.py
    .venv/bin/python scripts/bench_tracing.py --rounds 2 --small 500 --upload-mib 256
    .venv/bin/python scripts/bench_tracing.py --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from bench_overhead import PATH, small_requests, upload
from benchlib import free_port, main, one_provider, proxy_with, running

MIB = 1024 * 1024
#: Longer than the SDK's batch delay (5 s): the last spans are sent, and charged.
SETTLE_S = 6.0
#: Requests each proxy serves before it is measured.
WARM_UP = 200
#: The spans one traced request makes: the server span, the form's reading, the try.
SPANS_PER_REQUEST = 3


# --- the OTLP receiver (a child process) -----------------------------------------------------


def run_receiver(port: int) -> None:
    """``POST /v1/traces``, decoded and counted; ``GET /`` says how many spans came."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    spans = 0
    answer = ExportTraceServiceResponse().SerializeToString()

    async def traces(request: web.Request) -> web.Response:
        nonlocal spans
        export = ExportTraceServiceRequest.FromString(await request.read())
        spans += sum(
            len(scope.spans) for resource in export.resource_spans for scope in resource.scope_spans
        )
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str(spans))

    app = web.Application(client_max_size=64 * MIB)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/", count)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``, from their schedstat (nanoseconds: the clock
    ticks of /proc/PID/stat are too coarse for a round of small requests)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


async def spans_received(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return int(await response.text())


# --- the run ---------------------------------------------------------------------------------

#: A proxy under measurement: its URL and its process id.
Target = tuple[str, int]


async def rounds(
    targets: dict[str, Target],
    count: int,
    measure: Callable[[str], Awaitable[int]],
    served: dict[str, int],
) -> dict[str, list[float]]:
    """``measure`` on each proxy in turn, ``count`` times (every other time in reverse):
    each round's CPU seconds per unit ``measure`` returns (a request, a GiB), counted up
    to that proxy's next round."""
    per_unit: dict[str, list[float]] = {name: [] for name in targets}
    began: dict[str, tuple[float, int]] = {}

    def close_round(name: str) -> None:
        if name in began:
            cpu, units = began.pop(name)
            per_unit[name].append((cpu_seconds(targets[name][1]) - cpu) / units)

    for number in range(count):
        order = list(targets.items())
        for name, (url, pid) in order[:: -1 if number % 2 else 1]:
            close_round(name)
            cpu = cpu_seconds(pid)
            units = await measure(url)
            began[name] = (cpu, units)
            served[name] = served.get(name, 0) + units
    await asyncio.sleep(SETTLE_S)
    for name in targets:
        close_round(name)
    return per_unit


async def bench(args: argparse.Namespace) -> None:
    upstream_port, receiver_port = free_port(), free_port()
    overhead = Path(__file__).with_name("bench_overhead.py")
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as scratch:
        config = one_provider(upstream_port)

        def settings(name: str, **more: Any) -> dict[str, Any]:
            # The request log's store (on in every proxy alike) out of the checkout, and
            # each proxy's its own: one SQLite file shared would be written in turns.
            data_dir = Path(scratch) / name
            data_dir.mkdir()
            return {**config, "proxy": {**config["proxy"], "data_dir": str(data_dir), **more}}

        async with contextlib.AsyncExitStack() as stack:
            upstream = (sys.executable, str(overhead), "upstream", "--port", str(upstream_port))
            receiver = (sys.executable, __file__, "upstream", "--port", str(receiver_port))
            await stack.enter_async_context(
                running(*upstream, up=f"http://127.0.0.1:{upstream_port}/")
            )
            await stack.enter_async_context(
                running(*receiver, up=f"http://127.0.0.1:{receiver_port}/")
            )
            targets: dict[str, Target] = {}
            if args.baseline:
                port, process = await stack.enter_async_context(
                    proxy_with(settings("before"), cwd=args.baseline)
                )
                targets["before"] = (f"http://127.0.0.1:{port}{PATH}", process.pid)
            for name, each in (
                ("off", settings("off")),
                ("on", settings("on", tracing=_tracing(receiver_port))),
            ):
                port, process = await stack.enter_async_context(proxy_with(each))
                targets[name] = (f"http://127.0.0.1:{port}{PATH}", process.pid)
            async with aiohttp.ClientSession() as session:
                for url, _ in targets.values():
                    await small_requests(session, url, WARM_UP)
                served = dict.fromkeys(targets, WARM_UP)

                count: int = args.small

                async def small(url: str) -> int:
                    await small_requests(session, url, count)
                    return count

                per_request = await rounds(targets, args.rounds, small, served)
                # Every span made so far has been sent: the rounds end with a settle.
                spans = await spans_received(f"http://127.0.0.1:{receiver_port}/")

            async def big(url: str) -> int:
                await upload(url, args.upload_mib * MIB, None)
                return 1

            per_upload = await rounds(targets, args.upload_rounds, big, {})
    report(args, per_request, per_upload, spans, served["on"])


def _tracing(receiver_port: int) -> dict[str, Any]:
    """Tracing on, to the receiver, batched as the SDK does by default."""
    return {"otlp_endpoint": f"http://127.0.0.1:{receiver_port}"}


def report(
    args: argparse.Namespace,
    per_request: dict[str, list[float]],
    per_upload: dict[str, list[float]],
    spans: int,
    traced_requests: int,
) -> None:
    gib = args.upload_mib / 1024
    names = list(per_request)
    print(
        f"{args.rounds} interleaved rounds of {args.small} sequential 10 KB requests, and "
        f"{args.upload_rounds} of one {args.upload_mib} MiB upload, to each proxy; the proxy "
        "process's CPU, medians; a ratio is the median of the rounds' own, with their "
        "quartiles (2 cores, everything on 127.0.0.1)\n"
    )
    print(
        "| proxy | CPU per 10 KB request | "
        + " | ".join(f"vs {n}" for n in names[:-1])
        + " | upload CPU s/GiB | "
        + " | ".join(f"vs {n}" for n in names[:-1])
        + " |\n|"
        + "---|" * (2 * len(names) + 1)
    )
    for name in names:
        cells = [f"{statistics.median(per_request[name]) * 1000:.3f} ms"]
        cells += [_ratio(per_request[name], per_request[other]) for other in names[:-1]]
        cells.append(f"{statistics.median(per_upload[name]) / gib:.3f}")
        cells += [_ratio(per_upload[name], per_upload[other]) for other in names[:-1]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    each = ", ".join(f"{v * 1000:.3f}" for v in per_request["on"])
    print(f"\nrounds, tracing on (ms of CPU per request, in order): {each}")
    expected = traced_requests * SPANS_PER_REQUEST
    print(f"spans the receiver got from the traced proxy: {spans} of {expected} made")


def _ratio(values: list[float], against: list[float]) -> str:
    """The median of the rounds' ratios, and their quartiles: ``1.012x (0.99-1.03)``."""
    if values is against:
        return ""
    ratios = [value / other for value, other in zip(values, against, strict=True)]
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios * 3)
    return f"{statistics.median(ratios):.3f}x ({low:.2f}-{high:.2f})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (20)")
    parser.add_argument("--small", type=int, default=500, help="10 KB requests a round (500)")
    parser.add_argument("--upload-mib", type=int, default=1024, help="the upload's size (1024)")
    parser.add_argument(
        "--upload-rounds", type=int, default=4, help="interleaved rounds of the upload (4)"
    )
    parser.add_argument(
        "--baseline",
        type=lambda path: Path(path).resolve(),
        help="a checkout from before tracing: its proxy is measured too, as 'before'",
    )


if __name__ == "__main__":
    # ``upstream --port N`` is the OTLP receiver (the proxy's upstream is bench_overhead's).
    main(__doc__, add_arguments, run_receiver, bench)
