"""Talking to a proxy under test: building forms, posting them, reading answers."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

URL = "/v1/audio/transcriptions"


ProxyFactory = Callable[[dict[str, Any]], Awaitable[TestServer]]


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


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


Frames = list[bytes]


def payloads(frames: Frames) -> list[dict[str, Any]]:
    """The JSON of every data frame but [DONE] (keepalive comments skipped)."""
    out = []
    for frame in frames:
        if frame.startswith(b":") or frame == b"data: [DONE]":
            continue
        out.append(json_of(frame.removeprefix(b"data: ")))
    return out


async def eventually(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Poll ``condition`` until it holds: what it watches (closing sockets, ending tasks,
    a log line written after the answer) has no event to await."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
