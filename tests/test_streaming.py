"""stream=true: transcript chunks relayed as server-sent events the moment they arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.answers import sse
from tests.helpers.client import URL, Frames, ProxyFactory, base_url, form, json_of, payloads
from tests.helpers.errors import assert_error
from tests.helpers.upstream import (
    FakeUpstream,
    ReceivedRequest,
    answering,
    endless_stream,
    openai_events,
    provider_config,
    resetting,
    streaming,
)


async def raw_stream(
    server: TestServer, *parts: tuple[str, str | bytes]
) -> tuple[aiohttp.ClientResponse, Frames]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url(server)}{URL}", data=form(*parts)) as response,
    ):
        body = await response.read()
    frames = body.split(b"\n\n")
    assert frames[-1] == b"", "the stream must end with a complete frame"
    return response, frames[:-1]


async def test_sdk_streams_deltas_then_done(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.respond = streaming(openai_events(["Hel", "lo ", "world"]))
    stream = await sdk.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", b"RIFF", "audio/wav"), stream=True
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "transcript.text.delta",
        "transcript.text.delta",
        "transcript.text.delta",
        "transcript.text.done",
    ]
    assert [getattr(e, "delta", None) for e in events[:3]] == ["Hel", "lo ", "world"]
    assert events[-1].text == "Hello world"  # type: ignore[union-attr]
    extras = [(e.model_extra or {})["extra_fields"] for e in events]
    assert [x["chunk_index"] for x in extras] == [0, 1, 2, 3]
    for extra in extras:
        assert extra["request_type"] == "transcription_stream"
        assert extra["provider"] == "openai"
        assert extra["model_requested"] == "gpt-4o-transcribe"
        assert extra["model_deployment"] == "gpt-4o-transcribe"
        assert isinstance(extra["latency"], int)
    assert upstream.last.field("stream") == "true"


async def test_raw_framing_byte_for_byte(proxy: TestServer, upstream: FakeUpstream) -> None:
    upstream.respond = streaming(openai_events(["a", "b"]))
    response, frames = await raw_stream(
        proxy, ("model", "whisper-1"), ("stream", "true"), ("file", b"RIFF")
    )
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in response.headers
    assert frames[-1] == b"data: [DONE]"
    events = payloads(frames)
    assert len(frames) == len(events) + 1
    for frame, event in zip(frames, events, strict=False):
        # One data line per event, no event: line, compact JSON.
        assert frame == b"data: " + orjson.dumps(event)
    assert [list(e) for e in events] == [
        ["type", "delta", "text", "logprobs", "extra_fields"],
        ["type", "delta", "text", "logprobs", "extra_fields"],
        ["type", "text", "usage", "extra_fields"],
    ]
    assert events[0]["text"] == ""
    assert list(events[0]["extra_fields"]) == [
        "request_type",
        "provider",
        "model_requested",
        "model_deployment",
        "latency",
        "chunk_index",
    ]
    assert events[2]["usage"] == {"type": "tokens", "input_tokens": 7, "output_tokens": 3}


def test_sse_framing_units() -> None:
    assert sse.encode_event({"type": "x", "delta": "é\n"}) == (
        b'data: {"type":"x","delta":"\xc3\xa9\\n"}\n\n'
    )
    assert sse.DONE == b"data: [DONE]\n\n"
    assert sse.KEEPALIVE == b": keepalive\n\n"


async def test_read_events_parses_upstream_framing() -> None:
    async def lines() -> AsyncIterator[bytes]:
        for line in [
            b": comment\n",
            b"event: transcript\r\n",
            b"id: 7\n",
            b'data: {"a":\n',
            b"data:1}\n",
            b"\n",
            b"\n",
            b"data: [DONE]\n",
        ]:
            yield line

    assert [data async for data in sse.read_events(lines())] == [b'{"a":\n1}', b"[DONE]"]


async def test_first_delta_arrives_while_the_upstream_is_still_sending(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    client_saw_first = asyncio.Event()

    async def hold_after_first(index: int) -> None:
        if index == 1:
            # The rest is sent only once the client has the first delta:
            # a proxy that gathered events before sending would never get here.
            await asyncio.wait_for(client_saw_first.wait(), 5)

    upstream.respond = streaming(openai_events(["first ", "second"]), before=hold_after_first)
    async with openai.AsyncOpenAI(
        base_url=f"{base_url(proxy)}/v1", api_key="x", max_retries=0
    ) as client:
        stream = await client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.wav", b"RIFF"), stream=True
        )
        seen = []
        async for event in stream:
            seen.append(event.type)
            if len(seen) == 1:
                assert getattr(event, "delta", None) == "first "
                client_saw_first.set()
    assert seen == ["transcript.text.delta", "transcript.text.delta", "transcript.text.done"]


async def test_json_upstream_becomes_a_stream_one_delta_per_segment(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    async def whisper(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        return web.json_response(
            {
                "text": "One. Two. Three.",
                "segments": [
                    {"id": i, "text": t} for i, t in enumerate(["One.", " Two.", " Three."])
                ],
                "usage": {"type": "duration", "seconds": 3},
            }
        )

    upstream.respond = whisper
    stream = await sdk.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", b"RIFF"), stream=True
    )
    events = [event async for event in stream]
    assert [getattr(e, "delta", None) for e in events] == ["One.", " Two.", " Three.", None]
    assert events[-1].type == "transcript.text.done"
    assert events[-1].text == "One. Two. Three."
    assert [(e.model_extra or {})["extra_fields"]["chunk_index"] for e in events] == [0, 1, 2, 3]


async def test_json_upstream_without_segments_still_streams(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    _, frames = await raw_stream(
        proxy, ("model", "whisper-1"), ("stream", "true"), ("file", b"RIFF")
    )
    events = payloads(frames)
    assert [e["type"] for e in events] == ["transcript.text.delta", "transcript.text.done"]
    assert events[0]["delta"] == "heard 4 bytes"
    assert events[1]["usage"] == {"type": "duration", "seconds": 2}


async def test_vllm_upstream_stream_is_translated(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    def chunk(content: str | None, **extra: Any) -> dict[str, Any]:
        choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
        return {"id": "trsc-1", "object": "transcription.chunk", "choices": choices, **extra}

    upstream.respond = streaming(
        [
            chunk("The "),
            chunk("quick"),
            chunk(None, usage={"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}),
            b"[DONE]",
        ]
    )
    _, frames = await raw_stream(
        proxy, ("model", "openai/whisper-large-v3"), ("stream", "true"), ("file", b"RIFF")
    )
    events = payloads(frames)
    assert [(e["type"], e.get("delta")) for e in events] == [
        ("transcript.text.delta", "The "),
        ("transcript.text.delta", "quick"),
        ("transcript.text.done", None),
    ]
    assert events[-1]["text"] == "The quick"
    assert events[-1]["usage"] == {
        "type": "tokens",
        "input_tokens": 10,
        "output_tokens": 2,
        "total_tokens": 12,
    }
    assert frames[-1] == b"data: [DONE]"


async def test_upstream_dropping_mid_stream_makes_the_sdk_raise(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.respond = resetting(
        b'data: {"type":"transcript.text.delta","delta":"Hel"}\n\n',
        content_type="text/event-stream",
        linger_s=0.05,
    )
    stream = await sdk.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", b"RIFF"), stream=True
    )
    seen: list[Any] = []

    async def consume() -> None:
        async for event in stream:
            seen.append(event)

    with pytest.raises(openai.APIError) as raised:
        await consume()
    assert len(seen) == 1
    assert "broke off" in raised.value.message


async def test_error_after_first_event_is_an_error_event_then_done(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    # The stream just stops: no done event, no [DONE].
    upstream.respond = streaming([{"type": "transcript.text.delta", "delta": "Hel"}])
    response, frames = await raw_stream(
        proxy, ("model", "gpt-4o-transcribe"), ("stream", "true"), ("file", b"RIFF")
    )
    assert response.status == 200
    assert frames[-1] == b"data: [DONE]"
    error = json_of(frames[-2].removeprefix(b"data: "))
    assert_error(
        error,
        status=502,
        code="bad_gateway",
        error_type="api_error",
        bifrost=True,
        request_type="transcription_stream",
    )
    assert error["extra_fields"]["provider"] == "openai"


async def test_upstream_error_event_mid_stream(proxy: TestServer, upstream: FakeUpstream) -> None:
    upstream.respond = streaming(
        [
            {"type": "transcript.text.delta", "delta": "Hel"},
            {"error": {"message": "model overloaded", "type": "server_error"}},
        ]
    )
    _, frames = await raw_stream(
        proxy, ("model", "gpt-4o-transcribe"), ("stream", "true"), ("file", b"RIFF")
    )
    error = json_of(frames[-2].removeprefix(b"data: "))
    assert "model overloaded" in error["error"]["message"]


async def test_error_before_first_event_keeps_its_status(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.respond = answering(
        429,
        {"error": {"message": "slow down", "type": "rate_limit_error"}},
        headers={"Retry-After": "2"},
    )
    with pytest.raises(openai.RateLimitError) as raised:
        await sdk.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.wav", b"RIFF"), stream=True
        )
    assert raised.value.response.headers["Retry-After"] == "2"
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["message"] == "slow down"


async def test_client_disconnect_closes_the_upstream_stream(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    upstream_gone = asyncio.Event()
    upstream.respond = endless_stream(gone=upstream_gone)
    session = aiohttp.ClientSession()
    response = await session.post(
        f"{base_url(proxy)}{URL}",
        data=form(("model", "gpt-4o-transcribe"), ("stream", "true"), ("file", b"RIFF")),
    )
    assert (await response.content.readuntil(b"\n\n")).startswith(b"data: ")
    response.close()
    await session.close()
    await asyncio.wait_for(upstream_gone.wait(), 5)


async def test_keepalive_comments_while_the_upstream_is_silent(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["proxy"] = {"sse_keepalive_s": 0.05}
    server = await make_proxy(config)

    async def pause_before_done(index: int) -> None:
        if index == 1:
            await asyncio.sleep(0.3)

    upstream.respond = streaming(openai_events(["a"]), before=pause_before_done)
    _, frames = await raw_stream(
        server, ("model", "gpt-4o-transcribe"), ("stream", "true"), ("file", b"RIFF")
    )
    kinds = [b":" if f.startswith(b":") else f[:10] for f in frames]
    assert kinds[0].startswith(b"data: {")
    assert kinds.count(b":") >= 2
    assert set(frames) & {b": keepalive"} == {b": keepalive"}
    events = payloads(frames)
    assert [e["extra_fields"]["chunk_index"] for e in events] == [0, 1]
    # A keepalive is not a chunk: the done chunk's latency counts the whole wait.
    assert events[1]["extra_fields"]["latency"] >= 300


async def test_sdk_ignores_keepalives(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    config = provider_config(upstream)
    config["proxy"] = {"sse_keepalive_s": 0.02}
    server = await make_proxy(config)

    async def pause(index: int) -> None:
        await asyncio.sleep(0.1)

    upstream.respond = streaming(openai_events(["a", "b"]), before=pause)
    async with openai.AsyncOpenAI(
        base_url=f"{base_url(server)}/v1", api_key="x", max_retries=0
    ) as client:
        stream = await client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.wav", b"RIFF"), stream=True
        )
        assert [e.type async for e in stream][-1] == "transcript.text.done"


async def test_stream_field_after_the_file_still_streams(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    upstream.respond = streaming(openai_events(["late"]))
    # Larger than a body the proxy would take whole from its buffer, so the
    # file is streaming before the stream field is read.
    response, frames = await raw_stream(
        proxy, ("model", "gpt-4o-transcribe"), ("file", b"RIFF" * 600_000), ("stream", "true")
    )
    assert response.headers["Content-Type"] == "text/event-stream"
    assert [e["type"] for e in payloads(frames)] == [
        "transcript.text.delta",
        "transcript.text.done",
    ]
    assert upstream.last.names == ["model", "file", "stream"]


async def test_streamed_upstream_answers_a_non_streaming_client_with_one_json(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    upstream.respond = streaming(openai_events(["Hel", "lo"]))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{URL}", data=form(("model", "gpt-4o-transcribe"), ("file", b"RIFF"))
        ) as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/json"
        document = json_of(await response.read())
    assert document["text"] == "Hello"
    assert document["usage"] == {"type": "tokens", "input_tokens": 7, "output_tokens": 3}
    assert document["extra_fields"]["request_type"] == "transcription"
    assert document["extra_fields"]["chunk_index"] == 0


async def test_streamed_vllm_upstream_answers_a_non_streaming_client_with_one_json(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    upstream.respond = streaming(
        [
            {"object": "transcription.chunk", "choices": [{"delta": {"content": "a"}}]},
            {"object": "transcription.chunk", "choices": [{"delta": {"content": "b"}}]},
            b"[DONE]",
        ]
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{URL}", data=form(("model", "whisper-1"), ("file", b"RIFF"))
        ) as response,
    ):
        assert json_of(await response.read())["text"] == "ab"


async def test_done_event_carries_the_answers_segments(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    _, frames = await raw_stream(
        proxy,
        ("model", "whisper-1"),
        ("response_format", "verbose_json"),
        ("stream", "true"),
        ("file", b"RIFF"),
    )
    done = payloads(frames)[-1]
    assert done["type"] == "transcript.text.done"
    assert done["segments"] == [{"id": 0, "start": 0.0, "end": 2.0, "text": "heard 4 bytes"}]
