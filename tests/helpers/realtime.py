"""Talking to a realtime session under test: audio at 24 kHz, events in and out."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiohttp.test_utils import TestServer

from tests.helpers.client import base_url

RATE = 24_000
PATH = "/v1/realtime?intent=transcription"
TRANSCRIPTION = "conversation.item.input_audio_transcription"
#: The longest wait for an event (the embedded model on a slow machine).
WAIT_S = 60.0
#: The headers of a WebSocket upgrade, for a request that expects to be refused one.
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
}


def tone(seconds: float, hz: float = 440.0, amplitude: float = 0.5, *, rate: int = RATE) -> bytes:
    """A loud tone (it is speech to the loudness detector), PCM at ``rate`` (24 kHz)."""
    t = np.arange(int(seconds * rate)) / rate
    return bytes((amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16).tobytes())


def silence(seconds: float, *, rate: int = RATE) -> bytes:
    """Silence, PCM at ``rate`` (24 kHz)."""
    return bytes(int(seconds * rate) * 2)


def to_24k(pcm16k: bytes) -> bytes:
    """16 kHz PCM (espeak's speech, say) as 24 kHz PCM, as a browser's resampler makes it."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(pcm16k, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = 16_000
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(bytes(o.planes[0])[: o.samples * 2] for o in out)


def append(pcm: bytes, **extra: Any) -> dict[str, Any]:
    """An ``input_audio_buffer.append`` event."""
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode(), **extra}


class Client:
    """A session's client side: what it sends, and every event it has received."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read())
        self.closed = asyncio.Event()

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    async with self._arrived:
                        self.events.append(orjson.loads(message.data))
                        self._arrived.notify_all()
        finally:
            self.closed.set()
            async with self._arrived:
                self._arrived.notify_all()

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(event).decode())

    async def stream(self, pcm: bytes, *, chunk_s: float = 0.1, pace: float = 0.0) -> None:
        """Append ``pcm`` in chunks, ``pace`` times real time (0: as fast as it goes)."""
        step = int(chunk_s * RATE) * 2
        for start in range(0, len(pcm), step):
            await self.send(append(pcm[start : start + step]))
            if pace:
                await asyncio.sleep(chunk_s / pace)

    async def wait_for(self, type_: str, *, count: int = 1) -> list[dict[str, Any]]:
        """The first ``count`` events of ``type_`` (waiting up to a minute for them)."""
        async with asyncio.timeout(WAIT_S), self._arrived:
            while True:
                found = [e for e in self.events if e["type"] == type_]
                if len(found) >= count:
                    return found[:count]
                if self.closed.is_set():
                    raise AssertionError(f"closed before {count} {type_}: {self.types()}")
                await self._arrived.wait()

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def aclose(self) -> None:
        await self.ws.close()
        await self._reader


async def refused_upgrade(
    server: TestServer, path: str = PATH, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """An upgrade the proxy refuses: its status, error body and headers (never a 101)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base_url(server)}{path}", headers={**UPGRADE, **(headers or {})}) as response,
    ):
        assert response.status != 101
        return response.status, await response.json(), dict(response.headers)


@asynccontextmanager
async def session(
    server: TestServer | str,
    *,
    path: str = PATH,
    headers: dict[str, str] | None = None,
    protocols: tuple[str, ...] = ("realtime",),
    update: dict[str, Any] | None = None,
) -> AsyncIterator[Client]:
    """A connected session (its ``session.created`` received, ``update`` applied)."""
    url = server if isinstance(server, str) else base_url(server)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{url}{path}", headers=headers, protocols=protocols) as ws,
    ):
        client = Client(ws)
        beta = protocols == ("openai-beta.realtime-v1",)
        await client.wait_for("transcription_session.created" if beta else "session.created")
        if update is not None:
            await client.send({"type": "session.update", "session": update})
            await client.wait_for("session.updated")
        try:
            yield client
        finally:
            await client.aclose()


def transcription(
    model: str = "whisper-1", *, turn_detection: Any = "server_vad", **fields: Any
) -> dict[str, Any]:
    """A GA ``session.update``'s session: the model, and turn detection (None: off)."""
    inputs: dict[str, Any] = {"transcription": {"model": model, **fields}}
    if turn_detection == "server_vad":
        inputs["turn_detection"] = {"type": "server_vad"}
    else:
        inputs["turn_detection"] = turn_detection
    return {"type": "transcription", "audio": {"input": inputs}}
