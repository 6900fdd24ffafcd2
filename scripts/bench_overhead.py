"""Per-request overhead: the same requests direct, through nginx, and through the proxy.

One fake upstream; nginx (the system package, ``proxy_pass`` with request and
response buffering off, installed with apt-get when missing) and the proxy
in front of it, each as its own process. The client runs each measurement
against the three in turn, interleaved, for several rounds, and prints
medians. Everything runs on 127.0.0.1.

    .venv/bin/python scripts/bench_overhead.py
    .venv/bin/python scripts/bench_overhead.py --rounds 1 --small 300 --upload-mib 256
    git worktree add /tmp/before REV
    .venv/bin/python scripts/bench_overhead.py --baseline /tmp/before
    .venv/bin/python scripts/bench_overhead.py --baseline-config '{"logs": {"enabled": false}}'
    .venv/bin/python scripts/bench_overhead.py --duration-only

The container-length reader (what limits and budgets settle on when an
answer gives no seconds) reads every upload as it passes; its cost is
measured on MP3, Ogg Opus and WebM Opus uploads relayed through the proxy: the
proxy's CPU per GiB relayed (the reader on), and the reader's own CPU per
GiB fed the same bytes in the proxy's piece size in this process; the
relay without it is the difference. The uploads are a minute of encoded
noise repeated to the size (the reader parses heads and tails, so what is
in the middle only has to be passed along).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from benchlib import (
    ROOT,
    PeakRss,
    cpu_seconds,
    free_port,
    main,
    one_provider,
    percentile,
    proxy_with,
    running,
    system_binary,
)

MIB = 1024 * 1024
PATH = "/v1/audio/transcriptions"
BOUNDARY = "bench-overhead-boundary"
HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


# --- the fake upstream (a child process) -----------------------------------------------------


async def _answer(request: web.Request) -> web.StreamResponse:
    reader = await request.multipart()
    model = ""
    while (part := await reader.next()) is not None:
        assert isinstance(part, aiohttp.BodyPartReader)
        if part.name == "model":
            model = (await part.read()).decode()
        else:
            while await part.read_chunk(MIB):
                pass
    if not model.startswith("sse:"):
        return web.json_response({"text": "ok", "usage": {"type": "duration", "seconds": 1}})
    # sse:EVENTS:INTERVAL_MS, each event stamped with the (shared) monotonic clock.
    _, count, interval_ms = model.split(":")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for _ in range(int(count)):
        await asyncio.sleep(int(interval_ms) / 1000)
        event = {"type": "transcript.text.delta", "delta": "w ", "sent_ns": time.monotonic_ns()}
        await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
    await response.write(b'data: {"type":"transcript.text.done","text":"w"}\n\n')
    await response.write_eof()
    return response


def run_upstream(port: int) -> None:
    app = web.Application(client_max_size=1 << 40)
    app.router.add_post(PATH, _answer)
    app.router.add_get("/", lambda request: _ok())
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)


async def _ok() -> web.Response:
    return web.Response(text="ok")


# --- nginx -----------------------------------------------------------------------------------

NGINX_CONF = """
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  {upstream}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location / {{ {location} }}
  }}
}}
"""
#: nginx as the proxy under comparison: streaming both ways, connections kept alive.
PROXY_PASS = """
      proxy_pass http://whisper;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 600s;
"""
#: nginx as an upstream that costs next to nothing: the same answer to every request.
ANSWER = """
      default_type application/json;
      return 200 '{"text":"ok","usage":{"type":"duration","seconds":1}}';
"""


def nginx_in_front_of(upstream_port: int) -> AbstractAsyncContextManager[tuple[int, int]]:
    """nginx on a free port, proxying to the upstream; yields its port and its worker's pid."""
    upstream = f"upstream whisper {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}"
    return nginx_serving(PROXY_PASS, upstream)


@asynccontextmanager
async def nginx_serving(location: str, upstream: str = "") -> AsyncIterator[tuple[int, int]]:
    """nginx on a free port with ``location`` at ``/``; yields its port and its worker's pid."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as prefix:
        conf = os.path.join(prefix, "nginx.conf")
        text = NGINX_CONF.format(prefix=prefix, upstream=upstream, port=port, location=location)
        with open(conf, "w") as out:  # noqa: ASYNC230 - a few hundred bytes, once
            out.write(text)
        nginx = system_binary("nginx", "nginx-light")
        command = (nginx, "-c", str(conf), "-p", prefix, "-g", "daemon off;")
        async with running(*command, up=f"http://127.0.0.1:{port}/"):
            master = int(_read(os.path.join(prefix, "nginx.pid")))
            children = _read(f"/proc/{master}/task/{master}/children").split()
            yield port, int(children[0]) if children else master


def _read(path: str) -> str:
    with open(path) as file:
        return file.read()


# --- measurements ----------------------------------------------------------------------------


def small_body(size: int = 10_000) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + os.urandom(size)
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


async def small_requests(session: aiohttp.ClientSession, url: str, count: int) -> list[float]:
    """Seconds for each of ``count`` 10 KB requests, one after another, kept alive."""
    body = small_body()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        async with session.post(url, data=body, headers=HEADERS) as response:
            await response.read()
            assert response.status == 200, response.status
        times.append(time.perf_counter() - started)
    return times


async def concurrent_requests(url: str, count: int, concurrency: int) -> tuple[list[float], float]:
    """``count`` 10 KB requests, ``concurrency`` at a time: their latencies and the total time."""
    body = small_body()
    connector = aiohttp.TCPConnector(limit=concurrency)
    times: list[float] = []
    left = count
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                started = time.perf_counter()
                async with session.post(url, data=body, headers=HEADERS) as response:
                    await response.read()
                times.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return times, time.perf_counter() - started


async def upload(
    url: str,
    size: int,
    pid: int | None,
    block: bytes | None = None,
    filename: str = "a.wav",
    content_type: str = "audio/wav",
) -> tuple[float, float, float]:
    """A ``size``-byte upload, generated as sent (``block`` repeated): MiB/s, CPU s/GiB of
    ``pid``, its peak RSS MiB."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    block = block or os.urandom(MIB)
    blocks = size // len(block)

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(blocks):
            yield block
        yield tail

    size = blocks * len(block)
    headers = {**HEADERS, "Content-Length": str(len(head) + size + len(tail))}
    cpu_before = cpu_seconds(pid) if pid else 0.0
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        peak = PeakRss(pid) if pid else None
        if peak:
            await peak.__aenter__()
        started = time.perf_counter()
        async with session.post(url, data=body(), headers=headers) as response:
            await response.read()
        seconds = time.perf_counter() - started
        if peak:
            await peak.__aexit__()
    cpu = (cpu_seconds(pid) - cpu_before) if pid else 0.0
    gib = size / (1024 * MIB)
    return size / MIB / seconds, cpu / gib, (peak.peak_kib / 1024 if peak else 0.0)


async def sse_delays(session: aiohttp.ClientSession, url: str, events: int) -> list[float]:
    """Per-event delay in ms from the upstream's send to this client, for one stream."""
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nsse:{events}:5\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="stream"\r\n\r\ntrue\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\nRIFF\r\n--{BOUNDARY}--\r\n"
    ).encode()
    delays = []
    async with session.post(url, data=body, headers=HEADERS) as response:
        async for line in response.content:
            if line.startswith(b"data: {"):
                received = time.monotonic_ns()
                event = orjson.loads(line[6:])
                if "sent_ns" in event:
                    delays.append((received - event["sent_ns"]) / 1e6)
    return delays


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary={boundary}"
local file = io.open("{body}", "rb")
wrk.body = file:read("*a")
file:close()
"""


async def wrk_rps(url: str, seconds: int, connections: int, script: str) -> float:
    """Requests per second wrk (one thread, ``connections`` kept alive) gets from ``url``."""
    wrk = system_binary("wrk", "wrk")
    process = await asyncio.create_subprocess_exec(
        *(wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script, url),
        stdout=asyncio.subprocess.PIPE,
    )
    output = (await process.communicate())[0].decode()
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"wrk saw failed requests:\n{output}")
    return float(output.split("Requests/sec:")[1].split()[0])


async def workers_scaling(args: argparse.Namespace) -> dict[int, list[float]]:
    """RPS of the proxy with one worker and with two, in front of an upstream that costs
    next to nothing (nginx answering), loaded by wrk: what scales is the proxy's own work."""
    results: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as scratch:
        body = Path(scratch) / "body"
        body.write_bytes(small_body())
        script = Path(scratch) / "post.lua"
        script.write_text(WRK_SCRIPT.format(boundary=BOUNDARY, body=body))
        async with nginx_serving(ANSWER) as (upstream_port, _):
            config = one_provider(upstream_port)
            async with (
                proxy_with(config, "--workers", "1") as (one, _),
                proxy_with(config, "--workers", "2") as (two, _),
            ):
                ports = {1: one, 2: two}
                for port in ports.values():  # warm up
                    await wrk_rps(f"http://127.0.0.1:{port}{PATH}", 1, 50, str(script))
                for _ in range(args.rounds):
                    for workers, port in ports.items():
                        url = f"http://127.0.0.1:{port}{PATH}"
                        rps = await wrk_rps(url, args.wrk_seconds, 50, str(script))
                        results[workers].append(rps)
    return results


# --- the run ---------------------------------------------------------------------------------


Targets = dict[str, tuple[str, int | None]]


async def interleaved(
    targets: Targets, rounds: int, measure: Callable[[str, int | None], Coroutine[Any, Any, Any]]
) -> dict[str, list[Any]]:
    """``measure`` on each target in turn, ``rounds`` times: a change in load hits all three."""
    results: dict[str, list[Any]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, pid) in targets.items():
            results[name].append(await measure(url, pid))
    return results


#: A minimal aiohttp pass-through (scripts/aiohttp_floor.py): what aiohttp's
#: server and client cost on their own. It holds bodies whole and does not
#: stream answers, so it takes part in the small-request rows only.
FLOOR = "aiohttp floor"


async def bench(args: argparse.Namespace) -> None:
    if args.duration_only:
        await duration_reader_cost(args)
        return
    upstream_port = free_port()
    command = (sys.executable, __file__, "upstream", "--port", str(upstream_port))
    config = one_provider(upstream_port)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running(*command, up=f"http://127.0.0.1:{upstream_port}/"))
        nginx_port, nginx_pid = await stack.enter_async_context(nginx_in_front_of(upstream_port))
        floor_port = free_port()
        floor = await stack.enter_async_context(
            running(
                *(sys.executable, str(Path(__file__).with_name("aiohttp_floor.py"))),
                *(str(floor_port), f"http://127.0.0.1:{upstream_port}{PATH}"),
                up=f"http://127.0.0.1:{floor_port}/health",
            )
        )
        targets: Targets = {
            "direct": (f"http://127.0.0.1:{upstream_port}{PATH}", None),
            "nginx": (f"http://127.0.0.1:{nginx_port}{PATH}", nginx_pid),
            FLOOR: (f"http://127.0.0.1:{floor_port}{PATH}", floor.pid),
        }
        if args.baseline or args.baseline_config:
            # An earlier revision's proxy (a checkout of it), or this one set otherwise
            # (the request log off, say), measured in the same rounds.
            port, process = await stack.enter_async_context(
                proxy_with(merged(config, args.baseline_config or {}), cwd=args.baseline or ROOT)
            )
            targets["baseline"] = (f"http://127.0.0.1:{port}{PATH}", process.pid)
        proxy_port, proxy = await stack.enter_async_context(
            proxy_with(merged(config, args.proxy_config or {}))
        )
        targets["proxy"] = (f"http://127.0.0.1:{proxy_port}{PATH}", proxy.pid)
        streaming = {name: target for name, target in targets.items() if name != FLOOR}
        async with aiohttp.ClientSession() as session:
            for url, _ in targets.values():
                await small_requests(session, url, 50)  # warm up

            async def sequential(url: str, pid: int | None) -> tuple[list[float], float]:
                cpu = cpu_seconds(pid) if pid else 0.0
                times = await small_requests(session, url, args.small)
                return times, (cpu_seconds(pid) - cpu if pid else 0.0)

            small = await interleaved(targets, args.rounds, sequential)

            async def streams(url: str, pid: int | None) -> list[float]:
                return await sse_delays(session, url, args.events)

            sse = await interleaved(streaming, args.rounds, streams)

        async def concurrent(url: str, pid: int | None) -> tuple[list[float], float]:
            return await concurrent_requests(url, args.small, 50)

        loaded = await interleaved(targets, args.rounds, concurrent)

        async def big(url: str, pid: int | None) -> tuple[float, float, float]:
            return await upload(url, args.upload_mib * MIB, pid)

        uploads = await interleaved(streaming, args.rounds, big)

    scaling = await workers_scaling(args)
    report(args, small, sse, loaded, uploads, scaling)
    print()
    await duration_reader_cost(args)


def encoded_minute(container: str, codec: str) -> bytes:
    """A minute of noise, 48 kHz mono, encoded (PyAV, the ``long-audio`` extra)."""
    import io

    import av
    import numpy as np

    buffer = io.BytesIO()
    rate = 48000
    with av.open(buffer, "w", format=container) as output:
        stream: Any = output.add_stream(codec, rate=rate, layout="mono")
        noise = (np.random.default_rng(1).standard_normal(rate * 60) * 3000).astype(np.int16)
        for start in range(0, len(noise), 960):
            frame = av.AudioFrame.from_ndarray(
                noise[None, start : start + 960], format="s16", layout="mono"
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def reader_cpu_per_gib(data: bytes, size: int) -> float:
    """CPU s/GiB of :class:`DurationReader` fed ``data`` repeated to ``size``, in the
    proxy's piece size."""
    from proxy.audio.duration import DurationReader
    from proxy.form.limits import PIECE_BYTES

    pieces = [data[i : i + PIECE_BYTES] for i in range(0, len(data), PIECE_BYTES)]
    reader = DurationReader()
    fed = 0
    started = time.process_time()
    while fed < size:
        for piece in pieces:
            reader.feed(piece)
        fed += len(data)
    reader.finish()
    return (time.process_time() - started) / (fed / (1024 * MIB))


async def duration_reader_cost(args: argparse.Namespace) -> None:
    """The container-length reader's CPU against the relay's own, MP3, Ogg and WebM."""
    upstream_port = free_port()
    command = (sys.executable, __file__, "upstream", "--port", str(upstream_port))
    kinds = {
        "MP3": (encoded_minute("mp3", "libmp3lame"), "a.mp3", "audio/mpeg"),
        "Ogg Opus": (encoded_minute("ogg", "libopus"), "a.ogg", "audio/ogg"),
        "WebM Opus": (encoded_minute("webm", "libopus"), "a.webm", "audio/webm"),
    }
    size = args.upload_mib * MIB
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in kinds}
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running(*command, up=f"http://127.0.0.1:{upstream_port}/"))
        port, proxy = await stack.enter_async_context(proxy_with(one_provider(upstream_port)))
        url = f"http://127.0.0.1:{port}{PATH}"
        for _ in range(args.rounds):
            for name, (data, filename, content_type) in kinds.items():
                _, relay, _ = await upload(url, size, proxy.pid, data, filename, content_type)
                results[name].append((relay, reader_cpu_per_gib(data, size)))
    print(
        f"container-length reader, {args.upload_mib} MiB uploads, median of {args.rounds}\n\n"
        "| upload | proxy CPU s/GiB (reader on) | reader CPU s/GiB | relay without it | "
        "reader / relay |\n|---|---|---|---|---|"
    )
    for name, runs in results.items():
        relay = statistics.median(r for r, _ in runs)
        reader = statistics.median(c for _, c in runs)
        print(
            f"| {name} | {relay:.3f} | {reader:.4f} | {relay - reader:.3f} | "
            f"{reader / (relay - reader) * 100:.1f} % |"
        )


def report(
    args: argparse.Namespace,
    small: dict[str, list[Any]],
    sse: dict[str, list[Any]],
    loaded: dict[str, list[Any]],
    uploads: dict[str, list[Any]],
    scaling: dict[int, list[float]],
) -> None:
    columns = list(small)

    def row(label: str, cells: dict[str, str]) -> None:
        print(f"| {label} | " + " | ".join(cells.get(name, "") for name in columns) + " |")

    times = {n: [t for run, _ in r for t in run] for n, r in small.items()}
    p50 = {n: statistics.median(t) * 1000 for n, t in times.items()}
    rps = {n: len(r[0][0]) / statistics.median(sum(run) for run, _ in r) for n, r in small.items()}
    cpu_each = {n: sum(c for _, c in r) / len(times[n]) * 1000 for n, r in small.items()}
    e50 = {n: statistics.median(d for run in r for d in run) for n, r in sse.items()}
    e99 = {n: percentile([d for run in r for d in run], 99) for n, r in sse.items()}
    mib_s = {n: statistics.median(u[0] for u in r) for n, r in uploads.items()}
    cpu = {n: statistics.median(u[1] for u in r) for n, r in uploads.items()}
    rss = {n: max(u[2] for u in r) for n, r in uploads.items()}
    print(f"{args.rounds} interleaved rounds, medians (2 cores, everything on 127.0.0.1)\n")
    print("| | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    row(
        "10 KB request, sequential, p50 (added over direct)",
        {n: f"{p50[n]:.2f} ms (+{p50[n] - p50['direct']:.2f})" for n in p50},
    )
    row("10 KB requests per second, sequential", {n: f"{rps[n]:.0f}" for n in rps})
    row(
        "CPU per 10 KB request (the middle process)",
        {n: f"{cpu_each[n]:.2f} ms" for n in cpu_each if n != "direct"},
    )
    cells = {}
    for name, runs in loaded.items():
        latencies = [t for run, _ in runs for t in run]
        total = statistics.median(elapsed for _, elapsed in runs)
        cells[name] = (
            f"{statistics.median(latencies) * 1000:.1f} / "
            f"{percentile(latencies, 99) * 1000:.1f} ms / {args.small / total:.0f}"
        )
    row("10 KB, 50 at once: p50 / p99 / RPS", cells)
    row(
        f"{args.upload_mib} MiB upload, MiB/s (CPU s/GiB of the middle process)",
        {n: f"{mib_s[n]:.0f}" + (f" ({cpu[n]:.2f})" if n != "direct" else "") for n in mib_s},
    )
    row(
        "SSE per-event delay added, p50 / p99",
        {n: f"+{e50[n] - e50['direct']:.2f} / +{e99[n] - e99['direct']:.2f} ms" for n in e50},
    )
    row(
        f"peak RSS, {args.upload_mib} MiB upload",
        {n: f"{rss[n]:.1f} MiB" for n in rss if n != "direct"},
    )
    one, two = (statistics.median(scaling[n]) for n in (1, 2))
    print(
        "\n| proxy, 10 KB, 50 connections (wrk), upstream nginx answering | RPS |\n|---|---|\n"
        f"| --workers 1 | {one:.0f} |\n| --workers 2 | {two:.0f} ({two / one:.2f}x) |"
    )


def merged(config: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``more``'s sections merged in, one level deep."""
    out = dict(config)
    for name, section in more.items():
        out[name] = {**out.get(name, {}), **section} if isinstance(section, dict) else section
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (2)")
    parser.add_argument("--small", type=int, default=500, help="10 KB requests a round (500)")
    parser.add_argument("--events", type=int, default=200, help="SSE events a stream (200)")
    parser.add_argument("--upload-mib", type=int, default=1024, help="the upload's size (1024)")
    parser.add_argument(
        "--baseline",
        type=lambda path: Path(path).resolve(),
        help="a checkout of an earlier revision: its proxy is measured too, as 'baseline'",
    )
    parser.add_argument(
        "--baseline-config",
        type=orjson.loads,
        help="config sections merged into the baseline's (this checkout's when --baseline "
        'is not given): --baseline-config \'{"logs": {"enabled": false}}\'',
    )
    parser.add_argument(
        "--proxy-config",
        type=orjson.loads,
        help="config sections merged into the measured proxy's",
    )
    parser.add_argument(
        "--wrk-seconds", type=int, default=5, help="each wrk run of the workers scaling (5)"
    )
    parser.add_argument(
        "--duration-only",
        action="store_true",
        help="only the container-length reader's cost against the relay's",
    )


if __name__ == "__main__":
    main(__doc__, add_arguments, run_upstream, bench)
