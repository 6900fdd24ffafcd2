"""Streaming benchmark: delay added per relayed event, and many streams held open at once.

A fake upstream streams transcript deltas, each stamped with the time it was
sent (the system-wide monotonic clock, shared by every process here). The
same client reads the same streams direct and through the proxy, in one run,
and reports how much later each event arrives through the proxy. Then it
holds many streams open through the proxy at once and reports its RSS.
Everything runs on 127.0.0.1.

    .venv/bin/python scripts/bench_stream.py
    .venv/bin/python scripts/bench_stream.py --streams 5 --concurrent 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import orjson
from aiohttp import web
from benchlib import PeakRss, main, percentile, rss_kib, upstream_and_proxy

PATH = "/v1/audio/transcriptions"
BOUNDARY = "bench-stream-boundary"


# --- the fake upstream (a child process) -----------------------------------------------------


async def _stream(request: web.Request) -> web.StreamResponse:
    fields: dict[str, str] = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        assert isinstance(part, aiohttp.BodyPartReader)
        fields[part.name or ""] = (await part.read()).decode(errors="replace")
    # model "EVENTS:INTERVAL_MS": that many deltas, one every INTERVAL_MS.
    count, interval_ms = (int(n) for n in fields["model"].split(":"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for _ in range(count):
        await asyncio.sleep(interval_ms / 1000)
        event = {"type": "transcript.text.delta", "delta": "word ", "sent_ns": time.monotonic_ns()}
        await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
    done = {"type": "transcript.text.done", "text": "word " * count, "sent_ns": time.monotonic_ns()}
    await response.write(b"data: " + orjson.dumps(done) + b"\n\n")
    await response.write_eof()
    return response


def run_upstream(port: int) -> None:
    app = web.Application()
    app.router.add_post(PATH, _stream)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


# --- the client ------------------------------------------------------------------------------


def form(model: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="stream"\r\n\r\ntrue\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\nRIFF\r\n--{BOUNDARY}--\r\n"
    ).encode()


HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def stream_delays(
    session: aiohttp.ClientSession,
    url: str,
    events: int,
    interval_ms: int,
    first_event: asyncio.Event | None = None,
) -> list[float]:
    """Read one stream; the delay of each event from its upstream send, in ms."""
    delays = []
    async with session.post(url, data=form(f"{events}:{interval_ms}"), headers=HEADERS) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: status {resp.status}: {await resp.text()}")
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            received = time.monotonic_ns()
            event = orjson.loads(line[6:])
            if "sent_ns" in event:
                delays.append((received - event["sent_ns"]) / 1e6)
            if first_event is not None:
                first_event.set()
                first_event = None
    return delays


async def bench(args: argparse.Namespace) -> None:
    async with upstream_and_proxy(__file__) as (upstream_port, proxy_port, proxy):
        direct = f"http://127.0.0.1:{upstream_port}{PATH}"
        proxied = f"http://127.0.0.1:{proxy_port}{PATH}"
        delays: dict[str, list[float]] = {direct: [], proxied: []}
        async with aiohttp.ClientSession() as session:
            for _ in range(args.streams):
                # Interleaved, so a change in the machine's load hits both.
                for url in (direct, proxied):
                    delays[url] += await stream_delays(session, url, args.events, args.interval_ms)
        d50, p50 = (statistics.median(delays[u]) for u in (direct, proxied))
        d99, p99 = (percentile(delays[u], 99) for u in (direct, proxied))
        print(
            f"per-event delay, {len(delays[proxied])} events each: "
            f"direct p50 {d50:.3f} ms, proxied p50 {p50:.3f} ms (+{p50 - d50:.3f} ms); "
            f"direct p99 {d99:.3f} ms, proxied p99 {p99:.3f} ms (+{p99 - d99:.3f} ms)"
        )
        await concurrent_streams(args, proxied, proxy.pid)


async def concurrent_streams(args: argparse.Namespace, url: str, proxy_pid: int) -> None:
    """Hold ``args.concurrent`` streams open through the proxy; report its RSS."""
    idle = rss_kib(proxy_pid) / 1024
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=args.hold_s * 4 + 60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        opened = [asyncio.Event() for _ in range(args.concurrent)]
        events = max(1, args.hold_s)  # one delta a second for hold_s seconds
        async with PeakRss(proxy_pid) as peak:
            tasks = [
                asyncio.create_task(stream_delays(session, url, events, 1000, first))
                for first in opened
            ]
            started = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 120)
            all_open = time.monotonic() - started
            rss_all_open = rss_kib(proxy_pid) / 1024
            results = await asyncio.gather(*tasks, return_exceptions=True)
    failed = sum(isinstance(r, BaseException) for r in results)
    print(
        f"{args.concurrent} concurrent streams (all open after {all_open:.1f} s, "
        f"{failed} failed): proxy RSS {idle:.1f} MiB idle, {rss_all_open:.1f} MiB with all open, "
        f"peak {peak.peak_kib / 1024:.1f} MiB"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--streams", type=int, default=10, help="streams per path (10)")
    parser.add_argument("--events", type=int, default=200, help="deltas per stream (200)")
    parser.add_argument("--interval-ms", type=int, default=5, help="between deltas (5)")
    parser.add_argument("--concurrent", type=int, default=1000, help="streams open at once (1000)")
    parser.add_argument("--hold-s", type=int, default=5, help="how long each stays open (5)")


if __name__ == "__main__":
    main(__doc__, add_arguments, run_upstream, bench)
