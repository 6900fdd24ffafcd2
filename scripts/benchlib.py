"""What the benchmarks share: ports, measuring a process from outside, starting the proxy."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def system_binary(name: str, package: str) -> str:
    """A Debian package's program, installed with apt-get the first time (as scripts/test
    installs redis-server)."""
    found = shutil.which(name) or next(
        (path for path in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(path).exists()), None
    )
    if found is None:
        print(f"bench: installing {package}", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)
        found = shutil.which(name) or f"/usr/sbin/{name}"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_write_bytes(pid: int) -> int:
    """Bytes the process dirtied in files (counted when written, not at writeback)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """Samples a process's RSS every ``interval`` seconds (a few milliseconds) while in use."""

    def __init__(self, pid: int, interval: float = 0.002) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            await asyncio.sleep(self._interval)

    async def __aenter__(self) -> PeakRss:
        self.peak_kib = rss_kib(self.pid)
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak_kib = max(self.peak_kib, rss_kib(self.pid))


async def wait_until_up(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@asynccontextmanager
async def running(
    *command: str, up: str, cwd: Path = ROOT
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process, once ``up`` answers; terminated on the way out."""
    process = await asyncio.create_subprocess_exec(*command, cwd=cwd)
    try:
        await wait_until_up(up)
        yield process
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


def one_provider(upstream_port: int) -> dict[str, Any]:
    """A proxy config: one OpenAI-compatible provider at ``upstream_port``, no body or
    audio length limit a benchmark would meet, no caption page."""
    return {
        "client": {"max_request_body_size_mb": 1 << 20},
        "providers": {
            "openai": {
                "keys": [{"value": "sk-bench"}],
                "network_config": {"base_url": f"http://127.0.0.1:{upstream_port}"},
            }
        },
        "proxy": {"web_ui": False, "max_audio_seconds": UNLIMITED_AUDIO_S},
    }


#: ``proxy.max_audio_seconds`` for benchmarks: a year, past any recording they send.
UNLIMITED_AUDIO_S = 365 * 24 * 3600


@asynccontextmanager
async def proxy_with(
    config: dict[str, Any], *arguments: str, cwd: Path = ROOT
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """``python -m proxy`` on a free port with ``config`` (and more ``arguments``).

    ``cwd`` is the checkout whose ``proxy`` package runs (this one by default).
    """
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "proxy.json"
        path.write_text(json.dumps(config))
        command = (sys.executable, "-m", "proxy", "--port", str(port), "--config", str(path))
        async with running(
            *command,
            *("--log-level", "WARNING", *arguments),
            up=f"http://127.0.0.1:{port}/health",
            cwd=cwd,
        ) as process:
            yield port, process


@asynccontextmanager
async def upstream_and_proxy(
    script: str,
) -> AsyncIterator[tuple[int, int, asyncio.subprocess.Process]]:
    """``script upstream`` as the fake upstream, and the proxy in front of it.

    Yields the upstream's port, the proxy's port and the proxy's process.
    """
    upstream_port = free_port()
    upstream = (sys.executable, script, "upstream", "--port", str(upstream_port))
    async with (
        running(*upstream, up=f"http://127.0.0.1:{upstream_port}/"),
        proxy_in_front_of(upstream_port) as (proxy_port, proxy),
    ):
        yield upstream_port, proxy_port, proxy


@asynccontextmanager
async def proxy_in_front_of(
    upstream_port: int, **settings: Any
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """The proxy with one OpenAI-compatible provider at ``upstream_port`` (and a ``backup``)."""
    base_url = f"http://127.0.0.1:{upstream_port}"
    config = {
        "client": {"max_request_body_size_mb": 1 << 20},
        "providers": {
            "openai": {"keys": [{"value": "sk-bench"}], "network_config": {"base_url": base_url}},
            # The same upstream under another name, for fallbacks.
            "backup": {
                "keys": [{"value": "sk-bench"}],
                "custom_provider_config": {"base_provider_type": "openai"},
                "network_config": {"base_url": base_url},
            },
        },
        "proxy": settings,
    }
    async with proxy_with(config) as started:
        yield started


def percentile(values: list[float], q: int) -> float:
    """The ``q``-th percentile of ``values``."""
    return statistics.quantiles(values, n=100)[q - 1]


def main(
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run_upstream: Callable[[int], None],
    bench: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
) -> None:
    """A benchmark's command line: ``upstream --port N`` runs its fake upstream only."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="role")
    upstream = sub.add_parser("upstream", help="run only the fake upstream (used by the benchmark)")
    upstream.add_argument("--port", type=int, required=True)
    add_arguments(parser)
    args = parser.parse_args()
    if args.role == "upstream":
        run_upstream(args.port)
    else:
        asyncio.run(bench(args))
