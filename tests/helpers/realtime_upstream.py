"""A fake OpenAI (and Azure) Realtime API: a real aiohttp WebSocket server that records
what reaches it and answers as OpenAI's transcription sessions do."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from tests.helpers.upstream import UPSTREAM_KEY


@dataclass
class UpstreamSession:
    """One session as the fake upstream saw it."""

    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    #: Text frames received, exactly as sent.
    frames: list[str] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(f) for f in self.frames]


class FakeRealtimeUpstream:
    """Answers ``session.update`` with ``session.updated`` and a commit with a transcript."""

    def __init__(self) -> None:
        self.sessions: list[UpstreamSession] = []
        #: Refuse the upgrade with this status (and headers) instead.
        self.refuse: tuple[int, dict[str, str]] | None = None
        #: Close each session with this code after this many client frames.
        self.close_after: tuple[int, int] | None = None
        self.app = web.Application()
        for path in ("/v1/realtime", "/openai/v1/realtime", "/openai/realtime"):
            self.app.router.add_get(path, self._session)
        self.server: TestServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    @property
    def last(self) -> UpstreamSession:
        return self.sessions[-1]

    async def _session(self, request: web.Request) -> web.StreamResponse:
        seen = UpstreamSession(request.path, dict(request.query), CIMultiDict(request.headers))
        self.sessions.append(seen)
        if self.refuse is not None:
            status, headers = self.refuse
            return web.json_response(
                {"error": {"message": "refused", "type": "invalid_request_error"}},
                status=status,
                headers=headers,
            )
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self._send(ws, "session.created", session={"type": "transcription", "id": "sess_up"})
        committed = 0
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                seen.frames.append(message.data)
                if self.close_after is not None and len(seen.frames) >= self.close_after[0]:
                    await ws.close(code=self.close_after[1], message=b"upstream gone")
                    break
                event = orjson.loads(message.data)
                kind = event.get("type")
                if kind == "session.update":
                    await self._send(ws, "session.updated", session=event.get("session"))
                elif kind == "input_audio_buffer.commit":
                    committed += 1
                    item = f"item_up{committed}"
                    await self._send(ws, "input_audio_buffer.committed", item_id=item)
                    await self._send(
                        ws,
                        "conversation.item.input_audio_transcription.delta",
                        item_id=item,
                        content_index=0,
                        delta="relayed",
                    )
                    await self._send(
                        ws,
                        "conversation.item.input_audio_transcription.completed",
                        item_id=item,
                        content_index=0,
                        transcript="relayed",
                        usage={
                            "type": "tokens",
                            "input_tokens": 12,
                            "output_tokens": 3,
                            "total_tokens": 15,
                        },
                    )
                elif kind == "bad":
                    await self._send(
                        ws,
                        "error",
                        error={"type": "invalid_request_error", "code": "x", "message": "no"},
                    )
        finally:
            seen.closed.set()
        return ws

    async def _send(self, ws: web.WebSocketResponse, kind: str, **fields: Any) -> None:
        await ws.send_str(orjson.dumps({"event_id": "event_up", "type": kind, **fields}).decode())


def relay_config(upstream: FakeRealtimeUpstream, **provider: Any) -> dict[str, Any]:
    """One OpenAI-compatible provider whose upstream has the Realtime API."""
    return {
        "providers": {
            "openai": {
                "keys": [{"name": "main", "value": UPSTREAM_KEY, "models": ["*"]}],
                "network_config": {"base_url": upstream.base_url},
                "realtime": True,
                **provider,
            }
        }
    }
