"""Fixtures: a recording fake upstream and the proxy in front of it, both real servers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import BodyPartReader, web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from proxy.app import create_app
from proxy.config import parse_config

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
URL = "/v1/audio/transcriptions"


@dataclass
class ReceivedPart:
    """One part as the fake upstream received it."""

    name: str
    filename: str | None
    content_type: str | None
    value: str | None = None  # text parts
    size: int = 0  # file parts
    sha256: str = ""  # file parts
    data: bytes | None = None  # file parts, with FakeUpstream.keep_files


@dataclass
class ReceivedRequest:
    """One request as the fake upstream received it."""

    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    parts: list[ReceivedPart] = field(default_factory=list)
    complete: bool = False  # the body was read to its closing boundary
    raw_path: str = ""  # as sent, percent-encoding kept

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parts]

    def field(self, name: str) -> str | None:
        return next((p.value for p in self.parts if p.name == name), None)

    @property
    def file(self) -> ReceivedPart:
        return next(p for p in self.parts if p.name == "file")


Responder = Callable[[web.Request, ReceivedRequest], Awaitable[web.StreamResponse]]


async def transcript_json(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
    """What OpenAI answers, for each response_format."""
    fmt = received.field("response_format") or "json"
    text = f"heard {received.file.size} bytes"
    if fmt == "text":
        return web.Response(text=text + "\n", content_type="text/plain")
    if fmt == "srt":
        return web.Response(
            text=f"1\n00:00:00,000 --> 00:00:01,000\n{text}\n\n", content_type="text/plain"
        )
    if fmt == "vtt":
        return web.Response(
            text=f"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n{text}\n\n", content_type="text/plain"
        )
    document: dict[str, Any] = {"text": text, "usage": {"type": "duration", "seconds": 2}}
    if fmt == "verbose_json":
        document = {
            "task": "transcribe",
            "language": "english",
            "duration": 2.0,
            "text": text,
            "segments": [
                {
                    "id": 0,
                    "seek": 0,
                    "start": 0.0,
                    "end": 2.0,
                    "text": text,
                    "tokens": [1, 2],
                    "temperature": 0.0,
                    "avg_logprob": -0.1,
                    "compression_ratio": 1.0,
                    "no_speech_prob": 0.01,
                }
            ],
            "usage": {"type": "duration", "seconds": 2},
        }
    return web.json_response(document)


class FakeUpstream:
    """An OpenAI-compatible transcription server that records what reaches it.

    It reads the body the way a real server does, part by part, hashing the
    file as it streams, so a test can assert byte-exact arrival without the
    upload being held anywhere.
    """

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.respond: Responder = transcript_json
        #: Hang up after reading this many bytes of a file, as a crashing upstream does.
        self.drop_after: int | None = None
        #: Set once a request's body has begun arriving.
        self.body_started = asyncio.Event()
        #: Set when a request ended without its closing boundary.
        self.aborted = asyncio.Event()
        #: Keep each file's bytes (for an upstream that must hear the audio).
        self.keep_files = False
        #: Refuse files larger than this with OpenAI's own 413 answer.
        self.max_file_bytes: int | None = None
        self.app = web.Application()
        self.app.router.add_post("/v1/audio/transcriptions", self._handle)
        self.app.router.add_post(
            "/openai/deployments/{deployment}/audio/transcriptions", self._handle
        )
        self.server: TestServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    @property
    def last(self) -> ReceivedRequest:
        return self.requests[-1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = ReceivedRequest(
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            raw_path=request.raw_path,
        )
        self.requests.append(received)
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, BodyPartReader)
                self.body_started.set()
                item = ReceivedPart(
                    name=part.name or "",
                    filename=part.filename,
                    content_type=part.headers.get("Content-Type"),
                )
                received.parts.append(item)
                if part.filename is None:
                    item.value = (await part.read()).decode()
                    continue
                digest = hashlib.sha256()
                kept = bytearray()
                while chunk := await part.read_chunk(1024 * 1024):
                    digest.update(chunk)
                    item.size += len(chunk)
                    if self.keep_files:
                        kept += chunk
                    if self.drop_after is not None and item.size >= self.drop_after:
                        assert request.transport is not None
                        request.transport.abort()
                        return web.Response()
                item.sha256 = digest.hexdigest()
                item.data = bytes(kept) if self.keep_files else None
            received.complete = True
        except BaseException:  # a cancelled handler too: the client went away
            self.aborted.set()
            raise
        if self.max_file_bytes is not None and received.file.size > self.max_file_bytes:
            return openai_too_large(received.file.size, self.max_file_bytes)
        return await self.respond(request, received)


def openai_too_large(size: int, limit: int) -> web.Response:
    """OpenAI's answer to an upload over its size limit."""
    return web.json_response(
        {
            "error": {
                "message": f"Maximum content size limit ({limit}) exceeded ({size} bytes read)",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
        status=413,
    )


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeUpstream:
    fake = FakeUpstream()
    fake.server = await aiohttp_server(fake.app)
    return fake


@pytest.fixture
async def backup(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeUpstream:
    """A second upstream, for fallbacks."""
    fake = FakeUpstream()
    fake.server = await aiohttp_server(fake.app)
    return fake


def open_files_under(directory: str) -> list[str]:
    """Files this process holds open below ``directory`` (unnamed spools included)."""
    return [target for target in _open_files().values() if target.startswith(directory)]


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
) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m proxy`` with ``config`` on a free port, once it answers ``/health``.

    Its stderr (the JSON log lines) is a pipe the caller may read. ``limits``
    are resource limits (``resource.RLIMIT_*``: soft and hard) it starts with.
    """
    path = directory / f"{name}.json"
    await asyncio.to_thread(path.write_bytes, orjson.dumps(config))
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "--port",
        str(port),
        "--config",
        str(path),
        *extra,
        stderr=asyncio.subprocess.PIPE,
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
    raise AssertionError("the proxy did not start")


def without_module(directory: Path, name: str) -> dict[str, str]:
    """The environment of a Python process that cannot import ``name``, as in an install
    without the extra that brings it (a ``sitecustomize`` in ``directory`` hides it)."""
    (directory / "sitecustomize.py").write_text(f"import sys\nsys.modules[{name!r}] = None\n")
    return {"PYTHONPATH": f"{directory}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _set_limits(limits: dict[int, int]) -> None:
    import resource

    for which, value in limits.items():
        resource.setrlimit(which, (value, value))


def provider_config(upstream: FakeUpstream, **network: Any) -> dict[str, Any]:
    """A config with one OpenAI-compatible provider in front of ``upstream``."""
    return {
        "providers": {
            "openai": {
                "keys": [{"name": "main", "value": UPSTREAM_KEY, "models": ["*"]}],
                "network_config": {"base_url": upstream.base_url, **network},
            }
        }
    }


ProxyFactory = Callable[[dict[str, Any]], Awaitable[TestServer]]


@pytest.fixture
def make_proxy(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> ProxyFactory:
    async def start(raw_config: dict[str, Any]) -> TestServer:
        return await aiohttp_server(create_app(parse_config(raw_config, {})))

    return start


@pytest.fixture
async def proxy(make_proxy: ProxyFactory, upstream: FakeUpstream) -> TestServer:
    return await make_proxy(provider_config(upstream))


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def sdk(proxy: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=f"{base_url(proxy)}/v1", api_key="sk-client", max_retries=0
    )
    async with client:
        yield client


def audio_bytes(size: int, seed: int = 1) -> bytes:
    """Deterministic non-repeating bytes standing in for audio."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def json_of(body: bytes) -> dict[str, Any]:
    document = orjson.loads(body)
    assert isinstance(document, dict)
    return document


def _open_files() -> dict[str, str]:
    files = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            files[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return files


@pytest.fixture
def no_leaks() -> Callable[[], list[str]]:
    """Files (spools, temp files) this process opened since the test began and still holds.

    Sockets are left out: pooled keep-alive connections are meant to stay.
    """
    before = _open_files()

    def opened_since() -> list[str]:
        gc.collect()
        return sorted(
            target
            for fd, target in _open_files().items()
            if before.get(fd) != target and target.startswith("/")
        )

    return opened_since


def form(*parts: tuple[str, str | bytes], filename: str = "a.wav") -> aiohttp.MultipartWriter:
    """A multipart body with the parts in exactly the order given."""
    writer = aiohttp.MultipartWriter("form-data")
    for name, value in parts:
        if isinstance(value, bytes):
            part = writer.append(value, {"Content-Type": "audio/wav"})
            part.set_content_disposition("form-data", name=name, filename=filename)
        else:
            part = writer.append(value, {"Content-Type": "text/plain"})
            part.set_content_disposition("form-data", name=name)
    return writer


async def post(
    server: TestServer | str, data: Any, headers: dict[str, str] | None = None, path: str = URL
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST to a proxy (a test server, or the URL of one) and read its JSON answer."""
    url = server if isinstance(server, str) else base_url(server)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}{path}", data=data, headers=headers) as response,
    ):
        return response.status, json_of(await response.read()), dict(response.headers)


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


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/test installs it)")
    server = RedisServer()
    await server.start()
    yield server
    await server.stop()
