"""Transcript cache benchmark: a repeated 20 MiB upload, answered by a slow upstream once.

A fake upstream takes 1 s to answer each complete request and counts the
requests it sees begin and the ones whose body arrives whole. The client
uploads fresh audio (a miss), then the same audio again in three ways: model
before file (the upstream request is in flight and abandoned on the hit),
file before model (spooled: hit before anything goes upstream), and model
first with a ``Repr-Digest`` header (hit before a byte goes upstream). Each
latency is printed as a ratio of the miss in the same round. Everything
runs on 127.0.0.1.

    .venv/bin/python scripts/bench_cache.py
    .venv/bin/python scripts/bench_cache.py --mib 100 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import statistics
import sys
import time

import aiohttp
from aiohttp import web
from benchlib import free_port, main, proxy_in_front_of, running

PATH = "/v1/audio/transcriptions"
BOUNDARY = "bench-cache-boundary"
ANSWER_DELAY_S = 1.0


# --- the fake upstream (a child process) -----------------------------------------------------


def run_upstream(port: int) -> None:
    counts = {"started": 0, "complete": 0}

    async def transcribe(request: web.Request) -> web.Response:
        counts["started"] += 1
        size = 0
        reader = await request.multipart()
        try:
            while (part := await reader.next()) is not None:
                assert isinstance(part, aiohttp.BodyPartReader)
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
        except ConnectionError:  # abandoned by the proxy: the cache had the answer
            return web.Response(status=499)
        counts["complete"] += 1
        await asyncio.sleep(ANSWER_DELAY_S)  # transcribing
        return web.json_response({"text": f"heard {size} bytes"})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    app = web.Application(client_max_size=1 << 40)
    app.router.add_post(PATH, transcribe)
    app.router.add_get("/", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the client ------------------------------------------------------------------------------


def body(audio: bytes, *, file_first: bool) -> bytes:
    model = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    file_head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    )
    file_part = file_head.encode() + audio + b"\r\n"
    parts = [file_part, model.encode()] if file_first else [model.encode(), file_part]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def timed_post(
    session: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str]
) -> tuple[float, bool]:
    """Seconds to the whole answer, and whether it came from the cache."""
    started = time.perf_counter()
    async with session.post(url, data=data, headers=headers) as response:
        document = await response.json()
    assert response.status == 200, document
    hit = bool(document["extra_fields"].get("cache_debug", {}).get("cache_hit"))
    return time.perf_counter() - started, hit


async def upstream_counts(session: aiohttp.ClientSession, port: int) -> dict[str, int]:
    async with session.get(f"http://127.0.0.1:{port}/") as response:
        counts: dict[str, int] = await response.json()
        return counts


async def bench(args: argparse.Namespace) -> None:
    upstream_port = free_port()
    command = (sys.executable, __file__, "upstream", "--port", str(upstream_port))
    async with (
        running(*command, up=f"http://127.0.0.1:{upstream_port}/"),
        proxy_in_front_of(upstream_port) as (proxy_port, _),
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{proxy_port}{PATH}"
        plain = {
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "x-bf-cache-key": "bench",
        }
        kinds = ("miss", "hit, model first", "hit, file first", "hit, Repr-Digest")
        latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
        for round_ in range(args.rounds):
            audio = os.urandom(args.mib * 1024 * 1024)  # fresh audio: the first upload misses
            digest = base64.b64encode(hashlib.sha256(audio).digest()).decode()
            model_first, file_first = body(audio, file_first=False), body(audio, file_first=True)
            with_digest = {**plain, "Repr-Digest": f"sha-256=:{digest}:"}
            sends = (
                ("miss", model_first, plain, False),
                ("hit, model first", model_first, plain, True),
                ("hit, file first", file_first, plain, True),
                ("hit, Repr-Digest", model_first, with_digest, True),
            )
            for kind, data, headers, expect_hit in sends:
                seconds, hit = await timed_post(session, url, data, headers)
                assert hit == expect_hit, f"round {round_}: {kind} hit={hit}"
                latencies[kind].append(seconds)
        await asyncio.sleep(0.2)  # let the upstream count the abandoned requests
        counts = await upstream_counts(session, upstream_port)

    miss = statistics.median(latencies["miss"])
    print(
        f"{args.mib} MiB upload, upstream answers {ANSWER_DELAY_S:g} s after the body, "
        f"{args.rounds} rounds (medians)"
    )
    print(f"{'':22}{'latency':>10}{'vs miss':>10}")
    for kind in kinds:
        median = statistics.median(latencies[kind])
        print(f"{kind:22}{median * 1000:>8.0f}ms{median / miss:>9.2f}x")
    uploads = args.rounds * len(kinds)
    print(
        f"upstream requests: {counts['started']} begun, {counts['complete']} complete, "
        f"for {uploads} uploads ({args.rounds} misses); "
        f"{counts['started'] - counts['complete']} abandoned on a hit before their end"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mib", type=int, default=20, help="upload size (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh recordings (default 3)")


if __name__ == "__main__":
    main(__doc__, add_arguments, run_upstream, bench)
