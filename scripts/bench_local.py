"""Embedded model benchmark: real-time factor, peak RSS and time to the first caption.

The proxy runs as its own process with only the ``local`` provider; this
process sends it the 9 s test sample and a 58 s spoken meeting summary
(scripts/data/meeting.ogg, spoken by espeak-ng, Opus) over HTTP on
127.0.0.1, as JSON and as a stream.

    .venv/bin/python scripts/bench_local.py
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
import wave

import aiohttp
from benchlib import ROOT, PeakRss, proxy_with, rss_kib

SAMPLE = ROOT / "tests" / "data" / "sample.wav"
MEETING = ROOT / "scripts" / "data" / "meeting.ogg"
MEETING_SECONDS = 58.3
PATH = "/v1/audio/transcriptions"


def seconds_of(wav: bytes) -> float:
    with wave.open(io.BytesIO(wav)) as source:
        return float(source.getnframes() / source.getframerate())


def form(audio: bytes, stream: bool) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("model", "whisper-1")
    data.add_field("stream", "true" if stream else "false")
    data.add_field("file", audio, filename="audio", content_type="application/octet-stream")
    return data


async def transcribe(session: aiohttp.ClientSession, url: str, audio: bytes) -> float:
    started = time.perf_counter()
    async with session.post(url, data=form(audio, stream=False)) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
    return time.perf_counter() - started


async def first_caption(
    session: aiohttp.ClientSession, url: str, audio: bytes
) -> tuple[float, float]:
    """Seconds to the first delta, and to the end of the stream."""
    started = time.perf_counter()
    first = 0.0
    async with session.post(url, data=form(audio, stream=True)) as response:
        async for line in response.content:
            if not first and line.startswith(b'data: {"type":"transcript.text.delta"'):
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


async def bench(args: argparse.Namespace) -> None:
    short = SAMPLE.read_bytes()
    long = MEETING.read_bytes()
    lengths = {"sample": seconds_of(short), "meeting": MEETING_SECONDS}
    async with proxy_with({"providers": {"local": {}}}) as (port, proxy):
        url = f"http://127.0.0.1:{port}{PATH}"
        idle = rss_kib(proxy.pid) / 1024
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            started = time.perf_counter()
            await transcribe(session, url, short)  # loads the model
            first_request = time.perf_counter() - started
            loaded = rss_kib(proxy.pid) / 1024
            print(f"proxy RSS: {idle:.1f} MiB before the model, {loaded:.1f} MiB with it loaded")
            print(f"first request (model load included): {first_request:.2f} s")
            print()
            print("| audio | length | median time | real-time factor | proxy peak RSS |")
            print("|---|---|---|---|---|")
            for name, audio in (("sample", short), ("meeting", long)):
                length = lengths[name]
                async with PeakRss(proxy.pid) as peak:
                    times = [await transcribe(session, url, audio) for _ in range(args.repeat)]
                took = statistics.median(times)
                print(
                    f"| {name} | {length:.1f} s | {took:.2f} s | {took / length:.3f} "
                    f"| {peak.peak_kib / 1024:.1f} MiB |"
                )
            first, total = await first_caption(session, url, long)
            print()
            print(
                f"streaming the {MEETING_SECONDS:.0f} s meeting: first delta after "
                f"{first:.2f} s, done after {total:.2f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="requests per recording (3)")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
