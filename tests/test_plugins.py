"""The plugins around dispatch, seen from a plugin: which hooks a request calls, in what order.

A recording plugin is handed to ``create_app`` after the proxy's own; real
requests (a fallback, a cache hit, a refusal, a realtime session with turns)
go through a real proxy in front of the recording fake upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.config import parse_config
from proxy.dispatch import AttemptStarted
from proxy.errors import ProxyError
from proxy.models import RequestFacts
from proxy.plugins.base import Answer, EarlyAnswer, Pipeline, RequestHooks
from tests.helpers.client import form, post
from tests.helpers.realtime import session, tone, transcription
from tests.helpers.upstream import FakeUpstream, ReceivedRequest, failing, two_providers


@dataclass
class Seen:
    """What one request told the recording plugin."""

    kind: str
    request_id: str
    parent: str | None
    hooks: list[str] = field(default_factory=list)
    attempts: list[tuple[str, int, int]] = field(default_factory=list)
    status: int | None = None
    error_code: str | None = None
    cache_hit: bool = False


class Recorder:
    """A plugin that keeps, per request, the hooks called."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    def start(self, facts: RequestFacts, early: EarlyAnswer) -> RequestHooks:
        seen = Seen(facts.kind, facts.request_id, facts.parent_request_id)
        self.seen.append(seen)
        return _Recording(seen)

    def of(self, kind: str) -> list[Seen]:
        return [s for s in self.seen if s.kind == kind]


class _Recording(RequestHooks):
    def __init__(self, seen: Seen) -> None:
        self._seen = seen

    async def before(self, facts: RequestFacts) -> Answer | None:
        self._seen.hooks.append("before")
        return None

    async def on_attempt(self, attempt: AttemptStarted) -> None:
        self._seen.hooks.append("attempt")
        self._seen.attempts.append((attempt.route.provider.name, attempt.fallback, attempt.retry))

    async def on_first_event(self, facts: RequestFacts) -> None:
        self._seen.hooks.append("first_event")

    async def after(self, facts: RequestFacts) -> None:
        self._seen.hooks.append("after")
        self._seen.status = facts.status
        self._seen.error_code = facts.error.code if facts.error is not None else None
        self._seen.cache_hit = facts.cache_hit


Factory = Callable[..., Awaitable[TestServer]]


Recorded = Callable[[dict[str, Any]], Awaitable[tuple[Recorder, TestServer]]]


@pytest.fixture
def recorded(aiohttp_server: Factory) -> Recorded:
    """A proxy with ``raw``'s config and a recording plugin after its own."""

    async def start(raw: dict[str, Any]) -> tuple[Recorder, TestServer]:
        recorder = Recorder()
        app = create_app(parse_config(raw, {}), plugins=[recorder])
        return recorder, await aiohttp_server(app)

    return start


async def test_a_fallback_is_two_attempts_between_before_and_after(
    recorded: Recorded,
    upstream: FakeUpstream,
    backup: FakeUpstream,
    tmp_path: Any,
) -> None:
    upstream.respond = failing(503)
    recorder, server = await recorded(two_providers(upstream, backup, tmp_path))
    status, _, _ = await post(
        server,
        form(("model", "whisper-1"), ("fallbacks[]", "backup/whisper-1"), ("file", b"RIFF")),
    )
    assert status == 200
    (seen,) = recorder.seen
    assert seen.kind == "transcription"
    assert seen.hooks == ["before", "attempt", "attempt", "first_event", "after"]
    assert seen.attempts == [("openai", 0, 0), ("backup", 1, 0)]
    assert (seen.status, seen.error_code) == (200, None)


async def test_a_refusal_still_reaches_after_with_its_error(
    recorded: Recorded, upstream: FakeUpstream
) -> None:
    raw = two_providers(upstream, upstream)
    raw["proxy"] = {"max_audio_seconds": 1}
    recorder, server = await recorded(raw)
    status, _, _ = await post(server, form(("model", "whisper-1"), ("file", b"\0" * 400_000)))
    assert status == 413
    (seen,) = recorder.seen
    # Governance, before it in the list, refused: this plugin's before never ran.
    assert seen.hooks == ["after"]
    assert (seen.status, seen.error_code) == (413, "audio_too_long")
    assert upstream.requests == []


async def test_a_cache_hit_answers_before_any_attempt(
    recorded: Recorded, upstream: FakeUpstream
) -> None:
    recorder, server = await recorded(two_providers(upstream, upstream))
    cached = {"x-bf-cache-key": "k"}
    for _ in range(2):
        status, _, _ = await post(
            server, form(("model", "whisper-1"), ("file", b"RIFF" * 100)), cached
        )
        assert status == 200
    miss, hit = recorder.seen
    assert miss.hooks == ["before", "attempt", "first_event", "after"]
    assert not miss.cache_hit
    # The cache, before this plugin in the list, answered: nothing went upstream.
    assert hit.hooks == ["after"]
    assert hit.cache_hit
    assert len(upstream.requests) == 1


async def test_a_realtime_session_and_each_of_its_turns_are_requests(
    recorded: Recorded, upstream: FakeUpstream
) -> None:
    async def numbered(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        return web.json_response({"text": f"turn {len(upstream.requests)}"})

    upstream.respond = numbered
    recorder, server = await recorded(two_providers(upstream, upstream))
    async with session(server, update=transcription(turn_detection=None)) as client:
        for _ in range(2):
            await client.stream(tone(0.5))
            await client.send({"type": "input_audio_buffer.commit"})
        await client.wait_for("conversation.item.input_audio_transcription.completed", count=2)
    for _ in range(100):  # the session's after runs once the socket has closed
        if recorder.of("realtime.session") and recorder.of("realtime.session")[0].status:
            break
        await asyncio.sleep(0.02)
    (whole,) = recorder.of("realtime.session")
    turns = recorder.of("realtime.turn")
    assert whole.hooks == ["before", "after"]
    assert len(turns) == 2
    for turn in turns:
        assert turn.parent == whole.request_id
        assert turn.request_id.startswith(f"{whole.request_id}.")
        assert turn.hooks == ["before", "attempt", "after"]
        assert turn.status == 200


async def test_every_after_runs_when_one_fails() -> None:
    ran: list[str] = []

    class Failing(RequestHooks):
        async def after(self, facts: RequestFacts) -> None:
            ran.append("failing")
            raise RuntimeError("a plugin's own bug")

    class Counting(RequestHooks):
        async def after(self, facts: RequestFacts) -> None:
            ran.append("counting")

    class Plugin:
        def __init__(self, hooks: RequestHooks) -> None:
            self._hooks = hooks

        def start(self, facts: RequestFacts, early: EarlyAnswer) -> RequestHooks:
            return self._hooks

    pipeline = Pipeline([Plugin(Failing()), Plugin(Counting())])
    facts = RequestFacts(started=0.0)
    with pytest.raises(ProxyError):
        async with pipeline.run(facts):
            raise ProxyError("the request failed")
    assert ran == ["failing", "counting"]  # in order, and the one after the failure ran
    assert facts.status == 500
