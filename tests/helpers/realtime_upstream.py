"""A fake OpenAI (and Azure) Realtime API: a real aiohttp WebSocket server that records
what reaches it and answers as OpenAI's transcription sessions do.

Its JSON parser keeps the first of duplicate keys (orjson, the proxy's, keeps the last),
as some parsers do: what it acts on is what an upstream with such a parser would.
"""

from __future__ import annotations

import asyncio
import json
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
    #: Binary frames received.
    binary: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def events(self) -> list[dict[str, Any]]:
        return [first_key_wins(f) for f in self.frames]

    async def record(self, text: str) -> None:
        """A text frame has arrived."""
        async with self._arrived:
            self.frames.append(text)
            self._arrived.notify_all()

    async def received(self, count: int) -> None:
        """Wait until ``count`` text frames have arrived."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.frames) >= count)


def first_key_wins(text: str) -> Any:
    """``text`` parsed as a JSON parser that keeps the first of duplicate keys does."""

    def first(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for key, value in pairs:
            kept.setdefault(key, value)
        return kept

    return json.loads(text, object_pairs_hook=first)


class FakeRealtimeUpstream:
    """Answers ``session.update`` with ``session.updated`` and a commit with a transcript."""

    def __init__(self) -> None:
        self.sessions: list[UpstreamSession] = []
        #: Refuse the upgrade with this status (and headers) instead.
        self.refuse: tuple[int, dict[str, str]] | None = None
        #: Close each session with this code after this many client frames.
        self.close_after: tuple[int, int] | None = None
        #: The input format (GA ``type``) each ``session.updated`` says the session takes,
        #: whatever the update asked for (None: the update's session is echoed).
        self.accepted_format: str | None = None
        #: Updates wait for their answer until this is set (frames after them are read
        #: meanwhile).
        self.hold_answers: asyncio.Event | None = None
        self._answering: set[asyncio.Task[None]] = set()
        #: Errors quote the key the session was opened with (as some upstreams do).
        self.quote_key = False
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
                if message.type == WSMsgType.BINARY:
                    seen.binary.append(message.data)
                if message.type != WSMsgType.TEXT:
                    continue
                await seen.record(message.data)
                if self.close_after is not None and len(seen.frames) >= self.close_after[0]:
                    await ws.close(code=self.close_after[1], message=b"upstream gone")
                    break
                try:
                    event = first_key_wins(message.data)
                except ValueError:
                    continue  # not JSON: recorded, not answered
                if not isinstance(event, dict):
                    continue
                kind = event.get("type")
                if kind == "session.update" and self.hold_answers is not None:
                    answer = asyncio.ensure_future(self._answer_update(ws, event))
                    self._answering.add(answer)
                    answer.add_done_callback(self._answering.discard)
                elif kind == "session.update":
                    await self._answer_update(ws, event)
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
                    quoted = f" (key {_key_of(seen.headers)})" if self.quote_key else ""
                    await self._send(
                        ws,
                        "error",
                        error={
                            "type": "invalid_request_error",
                            "code": "x",
                            "message": f"no{quoted}",
                        },
                    )
        finally:
            seen.closed.set()
        return ws

    async def _answer_update(self, ws: web.WebSocketResponse, event: dict[str, Any]) -> None:
        """``session.updated``: the session as updated, in the format this upstream took."""
        if self.hold_answers is not None:
            await self.hold_answers.wait()
        session = event.get("session")
        if self.accepted_format is not None:
            session = {
                **(session if isinstance(session, dict) else {}),
                "audio": {"input": {"format": {"type": self.accepted_format}}},
            }
        await self._send(ws, "session.updated", session=session)

    async def _send(self, ws: web.WebSocketResponse, kind: str, **fields: Any) -> None:
        await ws.send_str(orjson.dumps({"event_id": "event_up", "type": kind, **fields}).decode())


def _key_of(headers: CIMultiDict[str]) -> str:
    """The provider key a session was opened with (OpenAI's header or Azure's)."""
    return headers.get("api-key") or headers.get("Authorization", "").removeprefix("Bearer ")


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
