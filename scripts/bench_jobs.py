"""Async jobs benchmark: a 2-hour recording submitted as a job, then 200 jobs at once.

Everything runs here, on 127.0.0.1: a fake upstream process that reads and counts
what it is sent (answering after ``--upstream-delay-ms``, as a slow provider
would), the proxy as its own process with its own SQLite store and spool, and
this process as the client. Figures are against baselines measured in the same run.

1. A 2-hour 16 kHz WAV (230 MB, generated as it is sent: no file anywhere) is
   submitted. Reported: the proxy's peak RSS over its idle RSS while the upload is
   spooled and the job runs (target <= 32 MiB), and the time from the last byte
   sent to the 202 (target <= 100 ms), against a 1 KiB job's in the same run.
2. ``--jobs`` jobs of 30 s each submitted at once, 2 workers: all complete, none
   is sent upstream twice (counted by the job id the upstream sees), and the queue
   wait (claimed - created) p50 and p95 read from the store.

    .venv/bin/python scripts/bench_jobs.py
    .venv/bin/python scripts/bench_jobs.py --hours 0.5 --jobs 50
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from benchlib import ROOT, PeakRss, free_port, main, proxy_with, rss_kib, running

sys.path.insert(0, str(ROOT))

from sqlalchemy import select

from proxy.audio.wav_header import wav_header
from proxy.store.engine import open_store
from proxy.store.tables import async_jobs

MIB = 1024 * 1024
RATE = 16_000
BYTES_PER_S = RATE * 2
PIECE = 256 * 1024
BOUNDARY = "bench-jobs-5d41402abc4b2a76"
JOBS = "/v1/async/audio/transcriptions"
TARGET_RSS_GROWTH_MIB = 32.0
TARGET_202_MS = 100.0


# --- the fake upstream (runs as a child process) -------------------------------------------


def run_upstream(port: int, delay_s: float) -> None:
    """A transcription endpoint that reads everything, waits ``delay_s``, and answers; it
    counts the requests each job id made (``GET /counts``)."""
    counts: collections.Counter[str] = collections.Counter()

    async def transcribe(request: web.Request) -> web.Response:
        counts[request.headers.get("x-request-id", "-")] += 1
        received = 0
        async for chunk in request.content.iter_any():
            received += len(chunk)
        await asyncio.sleep(delay_s)
        return web.json_response({"text": f"received {received} bytes"})

    async def read_counts(request: web.Request) -> web.Response:
        return web.json_response(dict(counts))

    app = web.Application(client_max_size=1 << 40)
    app.router.add_post("/v1/audio/transcriptions", transcribe)
    app.router.add_get("/counts", read_counts)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the client ------------------------------------------------------------------------------


class Recording:
    """A multipart body holding a WAV of ``seconds`` of generated audio, made as it is
    sent; ``last_byte_at`` is when its last piece has been written to the socket."""

    def __init__(self, seconds: float, seed: int = 1) -> None:
        self.data_bytes = int(seconds * BYTES_PER_S)
        self.seed = seed
        self.last_byte_at = 0.0

    async def body(self) -> AsyncIterator[bytes]:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
            f"whisper-1\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; "
            f'name="file"; filename="long.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        ).encode()
        yield wav_header(self.data_bytes, RATE)
        # A quiet hiss: not silence (nothing may shortcut it), not random (cheap to make).
        piece = bytes((i * 7 + self.seed) % 256 for i in range(PIECE))
        left = self.data_bytes
        while left > 0:
            yield piece[: min(PIECE, left)]
            left -= PIECE
        yield f"\r\n--{BOUNDARY}--\r\n".encode()
        # Resumed only once the last piece is on its way: the upload is sent.
        self.last_byte_at = time.monotonic()


async def submit(
    session: aiohttp.ClientSession, url: str, recording: Recording
) -> tuple[str, float]:
    """The job's id, and ms from the last byte sent to the 202."""
    async with session.post(
        f"{url}{JOBS}",
        data=recording.body(),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    ) as response:
        answered = time.monotonic()
        body = await response.json()
        if response.status != 202:
            raise RuntimeError(f"submit answered {response.status}: {body}")
    return body["id"], (answered - recording.last_byte_at) * 1000


async def completed(session: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    while True:
        async with session.get(f"{url}{JOBS}/{job_id}") as response:
            body: dict[str, Any] = await response.json()
            if response.status == 200:
                if body["status"] != "completed":
                    raise RuntimeError(f"job {job_id} ended {body['status']}: {body}")
                return body
        await asyncio.sleep(0.05)


async def bench(args: argparse.Namespace) -> None:
    upstream_port = free_port()
    upstream = (
        sys.executable,
        __file__,
        "upstream",
        "--port",
        str(upstream_port),
        "--upstream-delay-ms",
        str(args.upstream_delay_ms),
    )
    with tempfile.TemporaryDirectory() as scratch:
        store_url = f"sqlite:///{scratch}/store.sqlite3"
        (Path(scratch) / "spool").mkdir()
        config = {
            "client": {"max_request_body_size_mb": 1 << 20},
            "providers": {
                "openai": {
                    "keys": [{"value": "sk-bench"}],
                    "network_config": {"base_url": f"http://127.0.0.1:{upstream_port}"},
                }
            },
            "proxy": {
                "web_ui": False,
                "store": store_url,
                "max_audio_seconds": 365 * 24 * 3600,
                "jobs": {"workers": 2, "spool_dir": f"{scratch}/spool", "poll_interval_s": 0.2},
            },
            "logs": {"enabled": False},
        }
        async with (
            running(*upstream, up=f"http://127.0.0.1:{upstream_port}/counts"),
            proxy_with(config) as (port, proxy),
            aiohttp.ClientSession() as session,
        ):
            url = f"http://127.0.0.1:{port}"
            print(json.dumps(await long_recording(session, url, proxy.pid, args.hours)))
            print(json.dumps(await many_jobs(session, url, store_url, upstream_port, args.jobs)))


async def long_recording(
    session: aiohttp.ClientSession, url: str, pid: int, hours: float
) -> dict[str, Any]:
    small_id, small_ms = await submit(session, url, Recording(1024 / BYTES_PER_S))
    await completed(session, url, small_id)
    await asyncio.sleep(0.5)
    idle_kib = rss_kib(pid)
    recording = Recording(hours * 3600)
    started = time.monotonic()
    async with PeakRss(pid, interval=0.01) as peak:
        job_id, after_last_byte_ms = await submit(session, url, recording)
        submitted_s = time.monotonic() - started
        job = await completed(session, url, job_id)
    growth_mib = (peak.peak_kib - idle_kib) / 1024
    size_mib = (recording.data_bytes + 44) / MIB
    print(
        f"{hours:g} h recording ({size_mib:.0f} MiB): uploaded and spooled in {submitted_s:.1f} s; "
        f"202 {after_last_byte_ms:.1f} ms after the last byte (1 KiB job: {small_ms:.1f} ms, "
        f"target {TARGET_202_MS:g} ms); proxy RSS idle {idle_kib / 1024:.1f} MiB, peak growth "
        f"{growth_mib:.1f} MiB (target <= {TARGET_RSS_GROWTH_MIB:g} MiB); "
        f"answer: {job['result']['text']}"
    )
    return {
        "hours": hours,
        "size_mib": round(size_mib, 1),
        "ms_202_after_last_byte": round(after_last_byte_ms, 1),
        "ms_202_small_job": round(small_ms, 1),
        "rss_idle_mib": round(idle_kib / 1024, 1),
        "rss_growth_mib": round(growth_mib, 1),
        "met": after_last_byte_ms <= TARGET_202_MS and growth_mib <= TARGET_RSS_GROWTH_MIB,
    }


async def many_jobs(
    session: aiohttp.ClientSession, url: str, store_url: str, upstream_port: int, count: int
) -> dict[str, Any]:
    started = time.monotonic()
    ids = [
        job_id
        for job_id, _ in await asyncio.gather(
            *(submit(session, url, Recording(30, seed=i)) for i in range(count))
        )
    ]
    submitted_s = time.monotonic() - started
    await asyncio.gather(*(completed(session, url, job_id) for job_id in ids))
    took_s = time.monotonic() - started
    async with session.get(f"http://127.0.0.1:{upstream_port}/counts") as response:
        counts: dict[str, int] = await response.json()
    twice = [job_id for job_id in ids if counts.get(job_id, 0) != 1]
    store = await open_store(store_url)
    try:
        async with store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(async_jobs.c.started_at - async_jobs.c.created_at).where(
                        async_jobs.c.id.in_(ids)
                    )
                )
            ).scalars()
            waits = sorted(float(w) for w in rows)
    finally:
        await store.close()
    p50 = statistics.median(waits)
    p95 = waits[int(len(waits) * 0.95) - 1]
    print(
        f"{count} jobs of 30 s at once, 2 workers: submitted in {submitted_s:.1f} s, all done in "
        f"{took_s:.1f} s ({count / took_s:.0f} jobs/s); sent upstream other than once: "
        f"{len(twice)}; queue wait p50 {p50:.0f} ms, p95 {p95:.0f} ms"
    )
    return {
        "jobs": count,
        "seconds": round(took_s, 2),
        "not_exactly_once": len(twice),
        "queue_wait_p50_ms": p50,
        "queue_wait_p95_ms": p95,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hours", type=float, default=2.0, help="the long recording's length")
    parser.add_argument("--jobs", type=int, default=200, help="jobs submitted at once")
    parser.add_argument("--upstream-delay-ms", type=float, default=20.0)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "upstream":
        parser = argparse.ArgumentParser()
        parser.add_argument("role")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--upstream-delay-ms", type=float, default=20.0)
        upstream_args = parser.parse_args()
        run_upstream(upstream_args.port, upstream_args.upstream_delay_ms / 1000)
    else:
        main(__doc__, add_arguments, lambda port: run_upstream(port, 0.02), bench)
