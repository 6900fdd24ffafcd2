"""Large uploads arrive byte for byte; a client that goes away leaves nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.helpers.client import URL, base_url, eventually, json_of
from tests.helpers.upstream import FakeUpstream

BOUNDARY = "test-boundary-7f3a"
MODEL_PART = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
).encode()
FILE_HEAD = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="file"; filename="long.flac"\r\n'
    "Content-Type: audio/flac\r\n\r\n"
).encode()
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
MIB = 1024 * 1024


class GeneratedAudio:
    """``size`` bytes produced piece by piece, hashed as they are produced."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.digest = hashlib.sha256()
        self._block = hashlib.sha256(b"seed").digest() * (MIB // 32)

    async def pieces(self) -> AsyncIterator[bytes]:
        sent, index = 0, 0
        while sent < self.size:
            # Every piece differs, so a reordering would change the hash.
            piece = (index.to_bytes(8, "big") + self._block[8:])[: self.size - sent]
            self.digest.update(piece)
            sent += len(piece)
            index += 1
            yield piece


def body(audio: GeneratedAudio, *, model_first: bool) -> AsyncIterator[bytes]:
    async def generate() -> AsyncIterator[bytes]:
        yield (MODEL_PART + FILE_HEAD) if model_first else FILE_HEAD
        async for piece in audio.pieces():
            yield piece
        # The file part ends with CRLF; a model part may follow it.
        yield b"\r\n" + (b"" if model_first else MODEL_PART) + f"--{BOUNDARY}--\r\n".encode()

    return generate()


@pytest.mark.parametrize(
    ("size", "model_first"),
    [(384 * MIB + 7, True), (96 * MIB + 3, False)],
    ids=["streamed-through-384MiB", "spooled-96MiB"],
)
async def test_large_generated_upload_arrives_byte_exact(
    proxy: TestServer, upstream: FakeUpstream, size: int, model_first: bool, no_leaks: Any
) -> None:
    audio = GeneratedAudio(size)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{URL}",
            data=body(audio, model_first=model_first),
            headers={"Content-Type": CONTENT_TYPE},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        assert json_of(await response.read())["text"] == f"heard {size} bytes"
    received = upstream.last
    assert received.names == ["model", "file"]
    assert received.file.size == size
    assert received.file.sha256 == audio.digest.hexdigest()
    assert received.file.filename == "long.flac"
    assert received.file.content_type == "audio/flac"
    assert no_leaks() == []


def upstream_connections(upstream: FakeUpstream) -> int:
    assert upstream.server is not None
    runner_server = upstream.server.runner.server  # type: ignore[union-attr]
    assert runner_server is not None
    return len(runner_server.connections)


@pytest.mark.parametrize("model_first", [True, False], ids=["streaming", "spooling"])
async def test_client_disconnect_mid_upload_leaves_nothing_behind(
    proxy: TestServer, upstream: FakeUpstream, model_first: bool, no_leaks: Any
) -> None:
    tasks_before = len(asyncio.all_tasks())
    _, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(
        f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {1024 * MIB}\r\n\r\n".encode()
    )
    writer.write((MODEL_PART + FILE_HEAD) if model_first else FILE_HEAD)
    for _ in range(8):
        writer.write(b"\0" * MIB)
        await writer.drain()
    if model_first:
        await asyncio.wait_for(upstream.body_started.wait(), 5)
    else:
        await asyncio.sleep(0.2)
    # Gone without a word: a reset, as when a phone loses its network.
    writer.transport.abort()

    if model_first:
        # The upstream request was cut off too, not left waiting for the rest.
        await asyncio.wait_for(upstream.aborted.wait(), 5)
        assert not upstream.last.complete
    else:
        assert upstream.requests == []
    await eventually(lambda: upstream_connections(upstream) == 0)
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before)
    assert no_leaks() == []
    # Nothing broken was left in the pool: the next request goes through.
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{URL}",
            data=MODEL_PART + FILE_HEAD + b"RIFF\r\n" + f"--{BOUNDARY}--\r\n".encode(),
            headers={"Content-Type": CONTENT_TYPE},
        ) as response,
    ):
        assert response.status == 200
    assert upstream.last.complete
