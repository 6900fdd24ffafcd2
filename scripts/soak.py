"""Soak test: a bounded mixed load, then proof that nothing was left behind.

For ``--minutes`` (and at most ``--max-requests``), ``--clients`` clients send
a mix through the proxy to a fake upstream on 127.0.0.1: uploads of many
sizes in both part orders, streams, clients that abort mid-upload, upstreams
that fail (with and without a fallback) or hang up mid-body. Then it waits for
the proxy to go idle and compares its open files, tasks, spool files and RSS
with the level measured after a warm-up; it prints both and exits non-zero if
anything stayed behind.

    .venv/bin/python scripts/soak.py --minutes 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from benchlib import free_port, main, proxy_with, rss_kib, running

PATH = "/v1/audio/transcriptions"
BOUNDARY = "soak-boundary"
MIB = 1024 * 1024


# --- the fake upstream (a child process) -----------------------------------------------------


async def _upstream(request: web.Request) -> web.StreamResponse:
    reader = await request.multipart()
    fields: dict[str, str] = {}
    size = 0
    while (part := await reader.next()) is not None:
        assert isinstance(part, aiohttp.BodyPartReader)
        if part.name != "file":
            fields[part.name or ""] = (await part.read()).decode()
            continue
        while chunk := await part.read_chunk(MIB):
            size += len(chunk)
            if fields.get("model") == "drop" and size > 64 * 1024:
                assert request.transport is not None
                request.transport.abort()
                return web.Response()
    model = fields.get("model", "")
    if model == "fail":
        return web.json_response({"error": {"message": "failing on purpose"}}, status=500)
    if fields.get("stream") == "true":
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ("soak ", "test ", "stream"):
            await response.write(
                b"data: " + orjson.dumps({"type": "transcript.text.delta", "delta": word}) + b"\n\n"
            )
            await asyncio.sleep(0.01)
        await response.write(b'data: {"type":"transcript.text.done","text":"soak test stream"}\n\n')
        return response
    return web.json_response({"text": f"heard {size} bytes"})


def run_upstream(port: int) -> None:
    # The proxy hangs up on it on purpose (client aborts); that is not news.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    app = web.Application()
    app.router.add_post(PATH, _upstream)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the load --------------------------------------------------------------------------------


def part(name: str, value: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    )


FILE_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    "Content-Type: audio/wav\r\n\r\n"
).encode()
END = f"--{BOUNDARY}--\r\n".encode()
HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def upload(
    session: aiohttp.ClientSession, url: str, size: int, fields: bytes, model_first: bool
) -> int:
    block = os.urandom(min(size, MIB)) or b"x"

    async def body() -> object:
        yield fields + FILE_HEAD if model_first else FILE_HEAD
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            yield piece
        yield b"\r\n" + (b"" if model_first else fields) + END

    async with session.post(url, data=body(), headers=HEADERS) as response:
        await response.read()
        return response.status


async def abort_mid_upload(host: str, port: int) -> int:
    _, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: {HEADERS['Content-Type']}\r\n"
        f"Content-Length: {64 * MIB}\r\n\r\n".encode()
        + part("model", "whisper-1")
        + FILE_HEAD
        + os.urandom(random.randint(1, 2 * MIB))
    )
    await writer.drain()
    writer.transport.abort()
    return 0


async def one(session: aiohttp.ClientSession, url: str, port: int) -> str:
    kind = random.choice(
        ["upload", "upload", "upload", "stream", "abort", "fail", "fallback", "drop"]
    )
    size = random.choice([1000, 64 * 1024, MIB, 8 * MIB, 32 * MIB])
    model_first = random.random() < 0.5
    if kind == "upload":
        status = await upload(session, url, size, part("model", "whisper-1"), model_first)
    elif kind == "stream":
        fields = part("model", "whisper-1") + part("stream", "true")
        status = await upload(session, url, 1000, fields, True)
    elif kind == "abort":
        status = await abort_mid_upload("127.0.0.1", port)
    elif kind == "fail":
        status = await upload(session, url, size, part("model", "fail"), model_first)
    elif kind == "fallback":
        fields = part("model", "fail") + part("fallbacks[]", "backup/whisper-1")
        status = await upload(session, url, size, fields, model_first)
    else:
        fields = part("model", "drop") + part("fallbacks[]", "backup/whisper-1")
        status = await upload(session, url, 4 * MIB, fields, True)
    return f"{kind} {status}"


# --- measuring the proxy ---------------------------------------------------------------------


async def proxy_level(metrics_url: str, pid: int, spool_dir: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
        text = await response.text()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    spools = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed while we looked
            spools += os.readlink(f"/proc/{pid}/fd/{fd}").startswith(spool_dir)
    return {
        "open fds": values["process_open_fds"],
        "tasks": values["proxy_asyncio_tasks"],
        "spool files": float(spools),
        "RSS MiB": rss_kib(pid) / 1024,
        "requests in flight": values["proxy_requests_in_flight"],
    }


#: Long enough for aiohttp's pool to close idle keep-alive connections: it
#: sweeps every 15 s for those idle 15 s or more, so one may last nearly 30 s.
SETTLE_SECONDS = 32


async def settle(metrics_url: str, pid: int, spool_dir: str) -> dict[str, float]:
    """The proxy's level once requests in flight are done and idle connections closed."""
    deadline = time.monotonic() + 30
    level = await proxy_level(metrics_url, pid, spool_dir)
    while level["requests in flight"] and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        level = await proxy_level(metrics_url, pid, spool_dir)
    await asyncio.sleep(SETTLE_SECONDS)
    return await proxy_level(metrics_url, pid, spool_dir)


async def soak(args: argparse.Namespace) -> None:
    upstream_port = free_port()
    upstream = (sys.executable, __file__, "upstream", "--port", str(upstream_port))
    base = f"http://127.0.0.1:{upstream_port}"
    with tempfile.TemporaryDirectory() as spool_dir:
        config = {
            "client": {"max_request_body_size_mb": 1024},
            "providers": {
                "openai": {
                    "keys": [{"value": "sk-soak"}],
                    "network_config": {
                        "base_url": base,
                        "max_retries": 1,
                        "retry_backoff_initial": 10,
                    },
                },
                "backup": {
                    "keys": [{"value": "sk-soak"}],
                    "custom_provider_config": {"base_provider_type": "openai"},
                    "network_config": {"base_url": base},
                },
            },
            "proxy": {"spool_dir": spool_dir},
        }
        async with (
            running(*upstream, up=f"{base}/"),
            proxy_with(config) as (port, proxy),
        ):
            url = f"http://127.0.0.1:{port}{PATH}"
            metrics_url = f"http://127.0.0.1:{port}/metrics"
            outcomes: Counter[str] = Counter()
            sent = 0

            async def load(seconds: float, limit: int) -> None:
                nonlocal sent
                stop = time.monotonic() + seconds

                async def client() -> None:
                    nonlocal sent
                    async with aiohttp.ClientSession() as session:
                        while time.monotonic() < stop and sent < limit:
                            sent += 1
                            try:
                                outcomes[await one(session, url, port)] += 1
                            except aiohttp.ClientError as exc:
                                outcomes[f"client error {type(exc).__name__}"] += 1

                await asyncio.gather(*(client() for _ in range(args.clients)))

            # Warm-up at the same concurrency: the allocator's high-water mark
            # and the pools reach their working size before the baseline.
            await load(15, 10_000)
            before = await settle(metrics_url, proxy.pid, spool_dir)
            outcomes.clear()
            sent = 0
            await load(args.minutes * 60, args.max_requests)
            after = await settle(metrics_url, proxy.pid, spool_dir)
            leftovers = await asyncio.to_thread(lambda: sorted(Path(spool_dir).iterdir()))

    print(f"{sent} requests in {args.minutes:g} min from {args.clients} clients:")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome}: {count}")
    print()
    print("| | after warm-up | after the soak |")
    print("|---|---|---|")
    for key in before:
        print(f"| {key} | {before[key]:g} | {after[key]:g} |")
    print(f"| named files left in the spool dir | | {len(leftovers)} |")
    problems = []
    if after["open fds"] > before["open fds"] + 2:
        problems.append("open fds grew")
    if after["tasks"] > before["tasks"]:
        problems.append("tasks grew")
    if after["spool files"] or leftovers:
        problems.append("spool files left")
    if after["RSS MiB"] > before["RSS MiB"] + args.rss_slack_mib:
        problems.append(f"RSS grew by more than {args.rss_slack_mib} MiB")
    print()
    print("FAILED: " + "; ".join(problems) if problems else "OK: back to the starting level")
    if problems:
        sys.exit(1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to load (1)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--max-requests", type=int, default=5000, help="at most (5000)")
    parser.add_argument("--rss-slack-mib", type=float, default=16.0, help="allowed growth (16)")


if __name__ == "__main__":
    main(__doc__, add_arguments, run_upstream, soak)
