"""Processes a test runs: the proxy itself, a Redis server; and what the test process holds open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson


def open_files_under(directory: str) -> list[str]:
    """Files this process holds open below ``directory`` (unnamed spools included)."""
    return [target for target in open_files().values() if target.startswith(directory)]


def free_port() -> int:
    """A port nothing listens on (yet)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_proxy_process(
    config: dict[str, Any],
    directory: Path,
    *extra: str,
    name: str = "proxy",
    env: dict[str, str] | None = None,
    limits: dict[int, int] | None = None,
    port: int | None = None,
) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m proxy`` with ``config`` on ``port`` (a free one by default), once it
    answers ``/health``.

    Its stderr (the JSON log lines) goes to ``<directory>/<name>.log``: a pipe nobody
    reads would fill, block the proxy's next log line, and keep ``wait()`` waiting for
    its end after the proxy has gone. ``limits`` are resource limits
    (``resource.RLIMIT_*``: soft and hard) it starts with.
    """
    path = directory / f"{name}.json"
    await asyncio.to_thread(path.write_bytes, orjson.dumps(config))
    port = port or free_port()
    with (directory / f"{name}.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "--port",
            str(port),
            "--config",
            str(path),
            *extra,
            stderr=log,
            env={**os.environ, **(env or {})},
            preexec_fn=(lambda: _set_limits(limits)) if limits else None,
        )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return process, url
            await asyncio.sleep(0.05)
    process.kill()
    await process.wait()
    told = (directory / f"{name}.log").read_text(errors="replace").splitlines()[-20:]
    raise AssertionError("the proxy did not start; its last log lines:\n" + "\n".join(told))


def without_module(directory: Path, name: str) -> dict[str, str]:
    """The environment of a Python process that cannot import ``name``, as in an install
    without the extra that brings it (a ``sitecustomize`` in ``directory`` hides it)."""
    (directory / "sitecustomize.py").write_text(f"import sys\nsys.modules[{name!r}] = None\n")
    return {"PYTHONPATH": f"{directory}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _set_limits(limits: dict[int, int]) -> None:
    import resource

    for which, value in limits.items():
        resource.setrlimit(which, (value, value))


def open_files() -> dict[str, str]:
    """Every file descriptor this process holds, and what it points at."""
    files = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            files[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return files


class RedisServer:
    """A real redis-server on a free port, stopped and restarted at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError("redis-server did not start")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await self.process.wait()
