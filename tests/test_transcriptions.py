"""Non-streaming transcriptions through the proxy, as SDK and raw HTTP clients send them."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from tests.helpers.client import URL, ProxyFactory, audio_bytes, base_url, form, json_of, post
from tests.helpers.upstream import UPSTREAM_KEY, FakeUpstream, provider_config


async def test_sdk_json_answer_carries_extra_fields(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    audio = audio_bytes(300_000)
    result = await sdk.audio.transcriptions.create(
        model="whisper-1", file=("talk.wav", audio, "audio/wav")
    )
    assert result.text == "heard 300000 bytes"
    extra = result.model_extra["extra_fields"] if result.model_extra else None
    assert extra is not None
    assert extra["request_type"] == "transcription"
    assert extra["provider"] == "openai"
    assert extra["model_requested"] == "whisper-1"
    assert extra["model_deployment"] == "whisper-1"
    assert extra["chunk_index"] == 0
    assert isinstance(extra["latency"], int)
    assert extra["latency"] >= 0
    received = upstream.last
    assert received.names == ["model", "file"]
    assert received.file.filename == "talk.wav"
    assert received.file.content_type == "audio/wav"
    assert received.file.sha256 == hashlib.sha256(audio).hexdigest()
    assert received.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_sdk_verbose_json(sdk: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    result = await sdk.audio.transcriptions.create(
        model="whisper-1",
        file=("a.mp3", b"ID3" + audio_bytes(1000), "audio/mpeg"),
        response_format="verbose_json",
        timestamp_granularities=["segment", "word"],
        language="en",
        temperature=0.2,
        prompt="Names: Anouk, Bjørn.",
    )
    assert result.text == "heard 1003 bytes"
    assert result.duration == 2.0
    assert result.segments is not None
    assert result.segments[0].text == "heard 1003 bytes"
    received = upstream.last
    assert received.names[0] == "model"
    assert received.names[-1] == "file"
    assert received.field("prompt") == "Names: Anouk, Bjørn."
    assert received.field("language") == "en"
    granularities = [p.value for p in received.parts if p.name == "timestamp_granularities[]"]
    assert granularities == ["segment", "word"]


@pytest.mark.parametrize(
    ("response_format", "content_type", "expected"),
    [
        ("text", "text/plain", "heard 10 bytes\n"),
        ("srt", "text/plain", "1\n00:00:00,000 --> 00:00:01,000\nheard 10 bytes\n\n"),
        ("vtt", "text/vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nheard 10 bytes\n\n"),
    ],
)
async def test_sdk_plain_text_formats(
    proxy: TestServer,
    sdk: openai.AsyncOpenAI,
    response_format: str,
    content_type: str,
    expected: str,
) -> None:
    result = await sdk.audio.transcriptions.create(
        model="whisper-1",
        file=("a.wav", audio_bytes(10), "audio/wav"),
        response_format=response_format,  # type: ignore[call-overload]
    )
    assert result == expected
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{URL}",
            data=form(
                ("model", "whisper-1"),
                ("response_format", response_format),
                ("file", audio_bytes(10)),
            ),
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == f"{content_type}; charset=utf-8"
        assert response.headers["x-bf-provider"] == "openai"
        assert response.headers["x-bf-model"] == "whisper-1"
        assert int(response.headers["x-bf-latency-ms"]) >= 0
        assert await response.text() == expected


async def test_file_before_model_is_spooled_and_reordered(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    audio = audio_bytes(2 * 1024 * 1024 + 17)
    body = form(
        ("file", audio),
        ("language", "de"),
        ("model", "openai/whisper-1"),
        ("include[]", "logprobs"),
    )
    status, document, _ = await post(proxy, body)
    assert status == 200, document
    assert document["extra_fields"]["model_requested"] == "openai/whisper-1"
    assert document["extra_fields"]["model_deployment"] == "whisper-1"
    received = upstream.last
    assert received.names == ["model", "language", "include[]", "file"]
    assert received.field("model") == "whisper-1"
    assert received.file.sha256 == hashlib.sha256(audio).hexdigest()
    # A spooled upload has a known size, so it goes upstream with a length.
    assert "Content-Length" in received.headers
    assert "Transfer-Encoding" not in received.headers


async def test_fields_after_a_streaming_file_follow_it(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    audio = audio_bytes(500_000)
    body = form(
        ("model", "whisper-1"),
        ("include[]", "logprobs"),
        ("file", audio),
        ("known_speaker_names[]", "ana"),
        ("known_speaker_names[]", "ben"),
        ("fallbacks[]", "openai/whisper-2"),
        ("response_format", "verbose_json"),
    )
    status, document, _ = await post(proxy, body)
    assert status == 200
    # The late response_format reached the upstream and shaped its answer.
    assert document["task"] == "transcribe"
    received = upstream.last
    assert received.names == [
        "model",
        "include[]",
        "file",
        "known_speaker_names[]",
        "known_speaker_names[]",
        "response_format",
    ]
    assert [p.value for p in received.parts if p.name == "known_speaker_names[]"] == ["ana", "ben"]
    assert received.file.sha256 == hashlib.sha256(audio).hexdigest()
    assert received.headers.get("Transfer-Encoding") == "chunked"


async def test_chunked_client_body(proxy: TestServer, upstream: FakeUpstream) -> None:
    audio = audio_bytes(3 * 1024 * 1024 + 5)
    writer = form(("model", "whisper-1"), ("file", audio))

    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        async def write(self, chunk: bytes) -> None:
            self.data += chunk

    sink = Sink()
    await writer.write(sink)  # type: ignore[arg-type]

    async def dribble() -> AsyncIterator[bytes]:
        for start in range(0, len(sink.data), 100_003):
            yield bytes(sink.data[start : start + 100_003])

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{URL}",
            data=dribble(),
            headers={"Content-Type": writer.headers["Content-Type"]},
        ) as response,
    ):
        assert response.status == 200
        assert json_of(await response.read())["text"] == f"heard {len(audio)} bytes"
    assert upstream.last.file.sha256 == hashlib.sha256(audio).hexdigest()


async def test_expect_100_continue(proxy: TestServer, upstream: FakeUpstream) -> None:
    body = bytearray()

    class Sink:
        async def write(self, chunk: bytes) -> None:
            body.extend(chunk)

    writer = form(("model", "whisper-1"), ("file", audio_bytes(1000)))
    await writer.write(Sink())  # type: ignore[arg-type]
    reader, stream = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        stream.write(
            (
                f"POST {URL} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                f"Content-Type: {writer.headers['Content-Type']}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        await stream.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        stream.write(bytes(body))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        stream.close()
    assert upstream.last.file.size == 1000


async def test_expect_100_continue_refuses_oversized_body_before_it_is_sent(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["client"] = {"max_request_body_size_mb": 1}
    server = await make_proxy(config)
    reader, stream = await asyncio.open_connection(server.host, server.port)
    try:
        stream.write(
            (
                f"POST {URL} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {5 * 1024 * 1024}\r\n\r\n"
            ).encode()
        )
        await stream.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 413")
    finally:
        stream.close()
    assert upstream.requests == []


@pytest.mark.parametrize(
    "path",
    ["/v1/audio/transcriptions", "/openai/v1/audio/transcriptions", "/openai/audio/transcriptions"],
)
async def test_openai_integration_aliases(proxy: TestServer, path: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{path}", data=form(("model", "whisper-1"), ("file", b"RIFF"))
        ) as response,
    ):
        assert response.status == 200
        assert json_of(await response.read())["text"] == "heard 4 bytes"


async def test_sdk_with_openai_integration_base_url(proxy: TestServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{base_url(proxy)}/openai/v1", api_key="x", max_retries=0
    ) as client:
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", b"RIFF1234", "audio/wav")
        )
    assert result.text == "heard 8 bytes"


async def test_raw_request_and_raw_response_on_request(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{URL}",
            data=form(
                ("model", "openai/whisper-1"),
                ("timestamp_granularities[]", "word"),
                ("timestamp_granularities[]", "segment"),
                ("file", b"RIFF0000"),
            ),
            headers={
                "x-bf-send-back-raw-request": "true",
                "x-bf-send-back-raw-response": "TRUE",
                "Authorization": "Bearer sk-client-secret",
            },
        ) as response,
    ):
        assert response.status == 200
        body = await response.read()
    extra = json_of(body)["extra_fields"]
    assert extra["raw_request"] == {
        "model": "whisper-1",
        "timestamp_granularities[]": ["word", "segment"],
        "file": {"filename": "a.wav", "content_type": "audio/wav"},
    }
    assert extra["raw_response"] == {
        "text": "heard 8 bytes",
        "usage": {"type": "duration", "seconds": 2},
    }
    assert UPSTREAM_KEY.encode() not in body
    assert b"sk-client-secret" not in body


async def test_raw_response_from_provider_config(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["providers"]["openai"]["send_back_raw_response"] = True
    server = await make_proxy(config)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(server)}{URL}", data=form(("model", "whisper-1"), ("file", b"RIFF"))
        ) as response,
    ):
        extra = json_of(await response.read())["extra_fields"]
    assert extra["raw_response"]["text"] == "heard 4 bytes"
    assert "raw_request" not in extra


async def test_without_raw_headers_no_raw_fields(proxy: TestServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{URL}", data=form(("model", "whisper-1"), ("file", b"RIFF"))
        ) as response,
    ):
        extra = json_of(await response.read())["extra_fields"]
    assert "raw_request" not in extra
    assert "raw_response" not in extra


@pytest.mark.parametrize("filename", ["réunion Q3.wav", 'take "2".mp3', "a;b=c.m4a"])
async def test_filename_reaches_upstream_as_a_direct_call_would(
    proxy: TestServer, upstream: FakeUpstream, filename: str
) -> None:
    async def send(url: str) -> str | None:
        async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0) as client:
            await client.audio.transcriptions.create(
                model="whisper-1", file=(filename, b"RIFF", "audio/wav")
            )
        return upstream.last.file.filename

    direct = await send(f"{upstream.base_url}/v1")
    proxied = await send(f"{base_url(proxy)}/v1")
    assert proxied == direct


async def test_health(proxy: TestServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(proxy)}/health") as response,
    ):
        assert response.status == 200
        assert json_of(await response.read()) == {"status": "ok"}


async def test_every_async_generator_is_closed_not_left_to_the_collector(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    """A generator the proxy stops early must be closed then, not by the garbage collector:
    until that runs, what it holds (an upstream response, a file) stays open, and asyncio
    then closes it from a task scheduled across threads."""
    left: list[str] = []
    hooks = sys.get_asyncgen_hooks()

    def finalizer(generator: AsyncGenerator[Any, Any]) -> None:
        left.append(getattr(generator, "__qualname__", repr(generator)))
        assert hooks.finalizer is not None
        hooks.finalizer(generator)

    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=finalizer)
    try:
        async with aiohttp.ClientSession() as session:
            for audio in (b"RIFF", audio_bytes(2 * 1024 * 1024)):  # taken whole, then streamed
                for stream in ("false", "true"):
                    body = form(("model", "whisper-1"), ("stream", stream), ("file", audio))
                    async with session.post(f"{base_url(proxy)}{URL}", data=body) as response:
                        assert response.status == 200
                        await response.read()
        gc.collect()
    finally:
        sys.set_asyncgen_hooks(*hooks)
    assert left == []
