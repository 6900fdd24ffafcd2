"""Upload benchmark: the same uploads sent direct to a fake upstream and through the proxy.

Everything runs here, on 127.0.0.1, in one process tree and one run: a fake
upstream process that reads and counts what it is sent, the proxy as its own
process (``python -m proxy``), and this process as the client. Numbers are
reported as ratios against the direct baseline measured in the same run.

    .venv/bin/python scripts/bench_upload.py            # 1 MiB, 100 MiB, 1 GiB
    .venv/bin/python scripts/bench_upload.py --sizes 1,16 --repeat 1 --small 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from benchlib import (
    PeakRss,
    cpu_seconds,
    disk_write_bytes,
    main,
    percentile,
    rss_kib,
    upstream_and_proxy,
)

MIB = 1024 * 1024
BOUNDARY = "bench-boundary-5d41402abc4b2a76"


# --- the fake upstream (runs as a child process) -------------------------------------------


async def _sink(request: web.Request) -> web.Response:
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
    return web.json_response({"text": f"received {received} bytes"})


def run_upstream(port: int) -> None:
    """A transcription endpoint that reads everything and answers at once."""
    app = web.Application(client_max_size=1 << 40)
    app.router.add_post("/v1/audio/transcriptions", _sink)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the client ------------------------------------------------------------------------------


def form_parts(model_first: bool, fallback: bool = False) -> tuple[bytes, bytes]:
    model = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    ).encode()
    if fallback:
        model += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="fallbacks[]"\r\n\r\n'
            "backup/whisper-1\r\n"
        ).encode()
    file_head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    closing = f"--{BOUNDARY}--\r\n".encode()
    if model_first:
        return model + file_head, b"\r\n" + closing
    return file_head, b"\r\n" + model + closing


async def upload(
    session: aiohttp.ClientSession,
    url: str,
    size: int,
    *,
    model_first: bool = True,
    fallback: bool = False,
) -> float:
    """Send one ``size``-byte file; return the seconds it took to get the answer."""
    head, tail = form_parts(model_first, fallback)
    block = os.urandom(MIB)

    async def body() -> AsyncIterator[bytes]:
        yield head
        left = size
        while left > 0:
            piece = block if left >= MIB else block[:left]
            left -= len(piece)
            yield piece
        yield tail

    # Small bodies go in one write, as the SDKs and curl send them; large ones
    # are generated piece by piece, never held whole.
    data: bytes | AsyncIterator[bytes] = head + block[:size] + tail if size <= MIB else body()
    started = time.perf_counter()
    async with session.post(
        url,
        data=data,
        headers={
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Content-Length": str(len(head) + size + len(tail)),
        },
    ) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: status {response.status}: {await response.text()}")
    return time.perf_counter() - started


@dataclass
class SizeResult:
    size: int
    direct_mib_s: float
    proxied_mib_s: float
    peak_rss_mib: float
    proxy_cpu_s_per_gib: float


async def bench(args: argparse.Namespace) -> None:
    async with upstream_and_proxy(__file__) as (upstream_port, proxy_port, proxy):
        await run_measurements(args, upstream_port, proxy_port, proxy.pid)


async def run_measurements(
    args: argparse.Namespace, upstream_port: int, proxy_port: int, proxy_pid: int
) -> None:
    path = "/v1/audio/transcriptions"
    direct = f"http://127.0.0.1:{upstream_port}{path}"
    proxied = f"http://127.0.0.1:{proxy_port}{path}"
    sizes = [int(s) * MIB for s in args.sizes.split(",")]
    idle_rss = rss_kib(proxy_pid) / 1024
    print(f"proxy RSS when idle: {idle_rss:.1f} MiB")
    results: list[SizeResult] = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        await upload(session, direct, MIB)
        await upload(session, proxied, MIB)
        written_before = disk_write_bytes(proxy_pid)
        for size in sizes:
            direct_times, proxied_times = [], []
            proxy_cpu = 0.0
            async with PeakRss(proxy_pid) as peak:
                # Interleaved, so drift in the machine's load hits both alike;
                # the best of several runs, since noise only ever slows a run.
                for _ in range(args.repeat):
                    direct_times.append(await upload(session, direct, size))
                    cpu_before = cpu_seconds(proxy_pid)
                    proxied_times.append(await upload(session, proxied, size))
                    proxy_cpu += cpu_seconds(proxy_pid) - cpu_before
            results.append(
                SizeResult(
                    size=size,
                    direct_mib_s=size / MIB / min(direct_times),
                    proxied_mib_s=size / MIB / min(proxied_times),
                    peak_rss_mib=peak.peak_kib / 1024,
                    proxy_cpu_s_per_gib=proxy_cpu / args.repeat / (size / (1024 * MIB)),
                )
            )
        written_model_first = disk_write_bytes(proxy_pid) - written_before
        spool_size = min(sizes[-1], 64 * MIB)
        written_before = disk_write_bytes(proxy_pid)
        await upload(session, proxied, spool_size, model_first=False)
        written_file_first = disk_write_bytes(proxy_pid) - written_before

        # With a fallback named, the upload is recorded to a spool as it streams.
        largest = sizes[-1]
        written_before = disk_write_bytes(proxy_pid)
        async with PeakRss(proxy_pid) as recorded_peak:
            recorded_s = await upload(session, proxied, largest, fallback=True)
        written_recorded = disk_write_bytes(proxy_pid) - written_before
        plain_s = await upload(session, proxied, largest)

        small = await small_requests(session, direct, proxied, args.small)

    print()
    print(
        "| upload | direct MiB/s | proxied MiB/s | proxied/direct | proxy peak RSS "
        "| proxy CPU s/GiB |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.size / MIB:g} MiB | {r.direct_mib_s:.0f} | {r.proxied_mib_s:.0f} "
            f"| {r.proxied_mib_s / r.direct_mib_s:.2f}x | {r.peak_rss_mib:.1f} MiB "
            f"| {r.proxy_cpu_s_per_gib:.2f} |"
        )
    growth = results[-1].peak_rss_mib - results[0].peak_rss_mib
    print()
    print(
        f"peak RSS growth, {results[-1].size / MIB:g} MiB vs {results[0].size / MIB:g} MiB "
        f"upload: {growth:+.1f} MiB"
    )
    print(f"disk written by the proxy, model before file (all sizes): {written_model_first} bytes")
    print(
        f"disk written by the proxy, file before model ({spool_size / MIB:g} MiB, spooled): "
        f"{written_file_first} bytes"
    )
    print(
        f"recorded for a fallback ({largest / MIB:g} MiB, model first): "
        f"{largest / MIB / recorded_s:.0f} MiB/s "
        f"vs {largest / MIB / plain_s:.0f} MiB/s unrecorded, "
        f"peak RSS {recorded_peak.peak_kib / 1024:.1f} MiB, {written_recorded} bytes to disk"
    )
    print(small)


async def small_requests(
    session: aiohttp.ClientSession, direct: str, proxied: str, count: int
) -> str:
    """Latency of 10 KB uploads, direct and proxied, on kept-alive connections."""
    size = 10 * 1000
    timings: dict[str, list[float]] = {direct: [], proxied: []}
    for _ in range(20):  # warm both paths
        await upload(session, direct, size)
        await upload(session, proxied, size)
    for _ in range(count):
        for url in (direct, proxied):
            timings[url].append(await upload(session, url, size) * 1000)
    d50 = statistics.median(timings[direct])
    p50 = statistics.median(timings[proxied])
    d99 = percentile(timings[direct], 99)
    p99 = percentile(timings[proxied], 99)
    return (
        f"10 KB requests ({count} each): direct p50 {d50:.2f} ms, proxied p50 {p50:.2f} ms "
        f"(+{p50 - d50:.2f} ms); direct p99 {d99:.2f} ms, proxied p99 {p99:.2f} ms"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="1,100,1024", help="upload sizes in MiB (1,100,1024)")
    parser.add_argument("--repeat", type=int, default=5, help="uploads per size and path (5)")
    parser.add_argument("--small", type=int, default=500, help="10 KB requests per path (500)")


if __name__ == "__main__":
    main(__doc__, add_arguments, run_upstream, bench)
