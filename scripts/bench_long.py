"""Long audio benchmark: WAV uploads far past OpenAI's 25 MB limit, cut into chunks.

A fake upstream refuses files over 25 MiB, as OpenAI does, and takes a
realistic time per audio second to answer (``--rtf``, the real-time factor:
0.01 is 6 s for a 600 s chunk). The client uploads generated 16 kHz mono WAV
recordings (speech-like: a tone, then a pause, every second), built as they
are sent, so no file is kept anywhere. The proxy runs as its own process,
with its spool in a directory this script watches. Everything runs on
127.0.0.1.

It reports, in one run:
- the proxy's peak RSS against its idle RSS, for a 256 MiB and a 1 GiB upload
  (flat in the audio's length), and the most chunk files (and bytes) on the
  spool at once, and after;
- wall time with 4 chunks in parallel against one chunk at a time;
- with stream=true, time to the first caption against one chunk's transcription.

    .venv/bin/python scripts/bench_long.py
    .venv/bin/python scripts/bench_long.py --sizes 64,256 --rtf 0.002
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from benchlib import UNLIMITED_AUDIO_S, PeakRss, free_port, main, proxy_with, rss_kib, running

from proxy.audio.wav_header import wav_header

MIB = 1024 * 1024
PATH = "/v1/audio/transcriptions"
BOUNDARY = "bench-long-boundary"
RATE = 16_000
OPENAI_LIMIT = 25 * MIB
CHUNK_S = 600


# --- the fake upstream (a child process) -----------------------------------------------------


def _seconds(data: bytes) -> float:
    """A chunk's length from its container's header, without decoding it."""
    import av

    container: Any
    with av.open(io.BytesIO(data)) as container:
        return float(container.duration or 0) / 1_000_000


def run_upstream(port: int) -> None:
    async def transcribe(request: web.Request) -> web.Response:
        reader = await request.multipart()
        audio = b""
        rtf = 0.0
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            data = await part.read()
            if part.name == "file":
                audio = bytes(data)
            elif part.name == "rtf":  # a field the proxy passes through unchanged
                rtf = float(data.decode())
        if len(audio) > OPENAI_LIMIT:
            error = {
                "message": f"Maximum content size limit ({OPENAI_LIMIT}) exceeded",
                "type": "server_error",
            }
            return web.json_response({"error": error}, status=413)
        seconds = _seconds(audio)
        await asyncio.sleep(seconds * rtf)  # transcribing
        return web.json_response(
            {"text": f"{seconds:.0f} s heard.", "usage": {"type": "duration", "seconds": seconds}}
        )

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post(PATH, transcribe)

    async def alive(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", alive)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the client ------------------------------------------------------------------------------


def _speech_second() -> bytes:
    """One second of 16 kHz mono 16-bit PCM: 0.6 s of a tone, then a quiet pause."""
    tone = [int(9000 * math.sin(2 * math.pi * 330 * n / RATE)) for n in range(int(0.6 * RATE))]
    pause = [((n * 7919) % 61) - 30 for n in range(RATE - len(tone))]  # a little noise
    return struct.pack(f"<{RATE}h", *tone, *pause)


def upload(size: int, *, stream: bool, rtf: float) -> tuple[int, AsyncIterator[bytes]]:
    """A multipart body with a WAV of about ``size`` bytes: its length and its pieces."""
    second = _speech_second()
    minute = second * 60
    data_bytes = (size // len(minute)) * len(minute)
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="rtf"\r\n\r\n{rtf}\r\n'
        + (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="stream"\r\n\r\ntrue\r\n'
            if stream
            else ""
        )
        + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        'filename="meeting.wav"\r\nContent-Type: audio/wav\r\n\r\n'
    ).encode() + wav_header(data_bytes, RATE)
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    async def pieces() -> AsyncIterator[bytes]:
        yield head
        block = minute * 16  # 16 minutes, 30 MiB
        sent = 0
        while sent < data_bytes:
            piece = block[: data_bytes - sent]
            sent += len(piece)
            yield piece
        yield tail

    return len(head) + data_bytes + len(tail), pieces()


class SpoolWatch:
    """The proxy's open files in its spool directory: most at once, and their bytes."""

    def __init__(self, pid: int, directory: str) -> None:
        self._pid = pid
        self._directory = directory
        self.most_files = 0
        self.most_bytes = 0
        self._task: asyncio.Task[None] | None = None

    def now(self) -> tuple[int, int]:
        files, size = 0, 0
        fds = Path(f"/proc/{self._pid}/fd")
        for fd in fds.iterdir():
            try:
                if os.readlink(fd).startswith(self._directory):
                    files += 1
                    size += os.stat(fd).st_size
            except OSError:
                continue
        return files, size

    async def _sample(self) -> None:
        while True:
            files, size = self.now()
            self.most_files = max(self.most_files, files)
            self.most_bytes = max(self.most_bytes, size)
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> SpoolWatch:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@asynccontextmanager
async def proxy_for(
    upstream_port: int, spool: str, parallel: int
) -> AsyncIterator[tuple[int, int]]:
    config: dict[str, Any] = {
        "client": {"max_request_body_size_mb": 1 << 20},
        "providers": {
            "openai": {
                "keys": [{"value": "sk-bench"}],
                "network_config": {
                    "base_url": f"http://127.0.0.1:{upstream_port}",
                    "default_request_timeout_in_seconds": 600,
                },
                "max_upload_mb": 25,
            }
        },
        "proxy": {
            "spool_dir": spool,
            "chunking": {"max_parallel": parallel},
            "max_audio_seconds": UNLIMITED_AUDIO_S,
        },
    }
    async with proxy_with(config) as (port, process):
        yield port, process.pid


async def transcribe(port: int, size: int, *, rtf: float, stream: bool = False) -> dict[str, float]:
    """Upload ``size`` bytes of WAV; the times to the first caption and to the end."""
    length, body = upload(size, stream=stream, rtf=rtf)
    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(length),
    }
    timeout = aiohttp.ClientTimeout(total=None)
    started = time.perf_counter()
    first: float | None = None
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"http://127.0.0.1:{port}{PATH}", data=body, headers=headers) as response,
    ):
        if stream:
            async for line in response.content:
                if first is None and line.startswith(b"data: {"):
                    first = time.perf_counter() - started
            document: dict[str, Any] = {}
        else:
            document = await response.json()
        assert response.status == 200, document
    total = time.perf_counter() - started
    chunks = document.get("extra_fields", {}).get("audio_chunks", 0)
    return {"first": first or total, "total": total, "chunks": float(chunks)}


async def bench(args: argparse.Namespace) -> None:
    upstream_port = free_port()
    command = (sys.executable, __file__, "upstream", "--port", str(upstream_port))
    sizes = [int(s) * MIB for s in args.sizes.split(",")]
    chunk_s = CHUNK_S * args.rtf
    print(
        f"16 kHz mono WAV uploads; the upstream refuses over 25 MiB and takes "
        f"{args.memory_rtf} s per audio second for the memory runs, {args.rtf} s for the "
        f"timings ({chunk_s:.1f} s for a {CHUNK_S} s chunk)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-long-spool-") as spool:
        async with running(*command, up=f"http://127.0.0.1:{upstream_port}/"):
            async with proxy_for(upstream_port, spool, 4) as (port, pid):
                idle = rss_kib(pid) / 1024
                print(f"\nproxy idle RSS {idle:.1f} MiB")
                print(
                    f"{'upload':>10}{'audio':>9}{'chunks':>8}{'wall':>8}"
                    f"{'peak RSS':>11}{'over idle':>11}{'spool files':>13}{'spool MiB':>11}"
                )
                for size in sizes:
                    watch = SpoolWatch(pid, spool)
                    async with PeakRss(pid) as peak, watch:
                        result = await transcribe(port, size, rtf=args.memory_rtf)
                    after = watch.now()
                    audio_h = size / (RATE * 2) / 3600
                    print(
                        f"{size // MIB:>6} MiB{audio_h:>7.2f} h{result['chunks']:>8.0f}"
                        f"{result['total']:>7.1f}s{peak.peak_kib / 1024:>8.1f} MiB"
                        f"{peak.peak_kib / 1024 - idle:>+8.1f} MiB"
                        f"{watch.most_files:>8} max{watch.most_bytes / MIB:>8.1f} max"
                        f"   (after: {after[0]} files, {after[1]} bytes)"
                    )
                timed = args.parallel_mib * MIB
                streamed = await transcribe(port, timed, rtf=args.rtf, stream=True)
                four = await transcribe(port, timed, rtf=args.rtf)
            async with proxy_for(upstream_port, spool, 1) as (port, _):
                one_at_a_time = await transcribe(port, timed, rtf=args.rtf)
    ratio = four["total"] / one_at_a_time["total"]
    print(
        f"\n{args.parallel_mib} MiB ({four['chunks']:.0f} chunks): 4 in parallel "
        f"{four['total']:.1f} s, one at a time {one_at_a_time['total']:.1f} s: {ratio:.2f}x"
    )
    print(
        f"stream=true, {args.parallel_mib} MiB: first caption after {streamed['first']:.1f} s "
        f"({streamed['first'] / chunk_s:.2f}x one chunk's {chunk_s:.1f} s), "
        f"done after {streamed['total']:.1f} s"
    )
    print(json.dumps({"ratio_parallel": round(ratio, 3)}))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="256,1024", help="upload sizes in MiB (256,1024)")
    parser.add_argument("--parallel-mib", type=int, default=128, help="for the timings (128)")
    parser.add_argument(
        "--rtf", type=float, default=0.02, help="upstream s per audio s, timings (0.02)"
    )
    parser.add_argument(
        "--memory-rtf", type=float, default=0.001, help="upstream s per audio s, memory (0.001)"
    )


if __name__ == "__main__":
    main(__doc__, add_arguments, run_upstream, bench)
