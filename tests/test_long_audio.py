"""Long audio: uploads past a provider's limit cut at silence, transcribed in chunks, stitched."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.helpers.client import URL, ProxyFactory, base_url, form, json_of, payloads
from tests.helpers.errors import assert_error
from tests.helpers.processes import open_files_under, start_proxy_process, without_module
from tests.helpers.spoken import FORMATS, encode, listening
from tests.helpers.upstream import FakeUpstream, ReceivedRequest, provider_config

WORDS = 40
#: Chunks of at most this long: a 40 s recording makes five or six of them.
CHUNK_S = 8


def long_config(upstream: FakeUpstream, limit_bytes: int, **chunking: Any) -> dict[str, Any]:
    config = provider_config(upstream)
    config["providers"]["openai"]["max_upload_mb"] = limit_bytes / 1024 / 1024
    config["proxy"] = {"chunking": {"max_chunk_s": CHUNK_S, "cut_search_s": 3, **chunking}}
    return config


@pytest.fixture
def listener(upstream: FakeUpstream) -> FakeUpstream:
    upstream.keep_files = True
    upstream.respond = listening
    return upstream


def parts_for(
    data: bytes, fmt: str, *fields: tuple[str, str], file_first: bool = False
) -> list[tuple[str, str | bytes]]:
    file: tuple[str, str | bytes] = ("file", data)
    head: list[tuple[str, str | bytes]] = [("model", "whisper-1"), *fields]
    return [file, *head] if file_first else [*head, file]


def multipart(parts: list[tuple[str, str | bytes]], fmt: str = "wav") -> aiohttp.MultipartWriter:
    return form(*parts, filename=f"meeting.{fmt}")


async def send(
    server: TestServer, parts: list[tuple[str, str | bytes]], fmt: str = "wav", **kwargs: Any
) -> tuple[int, bytes, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url(server)}{URL}", data=multipart(parts, fmt), **kwargs) as r,
    ):
        return r.status, await r.read(), dict(r.headers)


def assert_every_word_once(segments: list[dict[str, Any]], words: int = WORDS) -> None:
    """Each second's word exactly once, in order, at its own time."""
    assert [s["text"].strip() for s in segments] == [f"w{k}" for k in range(words)]
    assert [s["id"] for s in segments] == list(range(words))
    for k, segment in enumerate(segments):
        assert abs(segment["start"] - k) < 0.08, (k, segment)
        assert abs(segment["end"] - (k + 0.6)) < 0.08, (k, segment)


def chunk_requests(upstream: FakeUpstream) -> list[ReceivedRequest]:
    return [r for r in upstream.requests if r.complete and r.file.filename != "meeting.wav"]


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("file_first", [False, True], ids=["model-first", "file-first"])
async def test_every_second_transcribed_once_in_order(
    make_proxy: ProxyFactory, listener: FakeUpstream, fmt: str, file_first: bool
) -> None:
    data = encode(WORDS, fmt)
    limit = len(data) // 3
    listener.max_file_bytes = limit
    server = await make_proxy(long_config(listener, limit))
    parts = parts_for(data, fmt, ("response_format", "verbose_json"), file_first=file_first)
    status, body, _ = await send(server, parts, fmt)
    assert status == 200, body
    document = json_of(body)
    assert_every_word_once(document["segments"])
    assert document["text"] == " ".join(f"w{k}" for k in range(WORDS))
    assert abs(document["duration"] - WORDS) < 0.1
    requests = listener.requests
    assert all(r.complete and r.file.size <= limit for r in requests)
    assert [r.file.content_type for r in requests] == ["audio/webm"] * len(requests)
    assert document["extra_fields"]["audio_chunks"] == len(requests) >= WORDS // CHUNK_S
    assert document["usage"]["seconds"] == sum(round(len(_samples(r)) / 16000) for r in requests)


def _samples(request: ReceivedRequest) -> Any:
    from tests.helpers.spoken import decode

    assert request.file.data is not None
    return decode(request.file.data)


async def test_chunks_are_cut_in_silence_and_no_longer_than_allowed(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3))
    status, _, _ = await send(server, parts_for(data, "wav"))
    assert status == 200
    edge = 320  # 20 ms
    chunks = [_samples(request) for request in listener.requests]
    assert len(chunks) > 1
    for samples in chunks:
        assert len(samples) <= CHUNK_S * 16000
    # Cut where it was quiet: no word runs across a cut.
    for before, after in itertools.pairwise(chunks):
        assert abs(before[-edge:]).max() < 0.01
        assert abs(after[:edge]).max() < 0.01


@pytest.mark.parametrize(
    ("response_format", "expected_start"),
    [
        ("srt", "1\n00:00:00,000 --> 00:00:00,600\nw0\n\n2\n00:00:01,000 --> 00:00:01,600\nw1\n"),
        ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:00.600\nw0\n\n00:00:01.000 --> 00:00:01.600\n"),
        ("text", "w0 w1 w2"),
    ],
)
async def test_text_formats_are_stitched(
    make_proxy: ProxyFactory, listener: FakeUpstream, response_format: str, expected_start: str
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3))
    status, body, headers = await send(
        server, parts_for(data, "wav", ("response_format", response_format))
    )
    assert status == 200
    text = body.decode()
    assert text.startswith(expected_start)
    assert int(headers["x-bf-audio-chunks"]) == len(listener.requests)
    if response_format == "srt":
        # Renumbered and retimed across chunks: the last cue is the 40th, at 39 s.
        assert text.endswith(f"{WORDS}\n00:00:39,000 --> 00:00:39,600\nw{WORDS - 1}\n\n")
    if response_format == "text":
        assert text == " ".join(f"w{k}" for k in range(WORDS)) + "\n"


async def test_json_and_word_timestamps(make_proxy: ProxyFactory, listener: FakeUpstream) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3))
    _, body, _ = await send(
        server,
        parts_for(
            data,
            "wav",
            ("response_format", "verbose_json"),
            ("timestamp_granularities[]", "word"),
        ),
    )
    words = json_of(body)["words"]
    assert [w["word"] for w in words] == [f"w{k}" for k in range(WORDS)]
    assert all(abs(w["start"] - k) < 0.08 for k, w in enumerate(words))
    _, body, _ = await send(server, parts_for(data, "wav"))
    document = json_of(body)
    assert set(document) == {"text", "usage", "extra_fields"}
    assert document["text"] == " ".join(f"w{k}" for k in range(WORDS))


async def chunked_body(data: bytes, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
        await asyncio.sleep(0)


def raw_form(parts: list[tuple[str, str | bytes]], boundary: str = "long-audio-test") -> bytes:
    out = bytearray()
    for name, value in parts:
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, bytes):
            out += (
                f'Content-Disposition: form-data; name="{name}"; filename="meeting.wav"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode() + value
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()
        out += b"\r\n"
    return bytes(out + f"--{boundary}--\r\n".encode())


RAW_HEADERS = {"Content-Type": "multipart/form-data; boundary=long-audio-test"}


async def test_chunked_body_crossing_the_limit_is_cut_after_all(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    data = encode(WORDS, "wav")
    limit = len(data) // 3
    server = await make_proxy(long_config(listener, limit))
    body = raw_form(parts_for(data, "wav", ("response_format", "verbose_json")))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(server)}{URL}", data=chunked_body(body), headers=RAW_HEADERS
        ) as response,
    ):
        document = json_of(await response.read())
    assert response.status == 200, document
    assert_every_word_once(document["segments"])
    await asyncio.wait_for(listener.aborted.wait(), 5)
    first, *chunks = listener.requests
    # The upload went upstream whole until it crossed the limit, then was abandoned.
    assert not first.complete
    assert first.file.filename == "meeting.wav"
    assert all(r.complete and (r.file.filename or "").endswith(".webm") for r in chunks)


async def test_under_the_limit_takes_the_plain_path_byte_for_byte(
    make_proxy: ProxyFactory, upstream: FakeUpstream, no_leaks: Callable[[], list[str]]
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(upstream, len(data) + 4096))
    for body in (raw_form(parts_for(data, "wav")), chunked_body(raw_form(parts_for(data, "wav")))):
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base_url(server)}{URL}", data=body, headers=RAW_HEADERS) as response,
        ):
            assert response.status == 200
        received = upstream.last.file
        assert received.filename == "meeting.wav"
        assert received.sha256 == hashlib.sha256(data).hexdigest()
    assert no_leaks() == []


async def test_stream_gives_each_chunk_in_order_as_it_is_done(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3))
    # Later chunks answer first (chunk 0 waits for chunk 1's answer, and so on up
    # to the four sent at once): the stream must still give them in order.
    answered: list[int] = []
    answered_now = [asyncio.Event() for _ in range(4)]

    async def backwards(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        index = int((received.file.filename or "chunk-0").split("-")[1].split(".")[0])
        if index < 3:
            await answered_now[index + 1].wait()
        answered.append(index)
        if index < 4:
            answered_now[index].set()
        return await listening(request, received)

    listener.respond = backwards
    status, body, headers = await send(server, parts_for(data, "wav", ("stream", "true")))
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    frames = body.split(b"\n\n")[:-1]
    assert frames[-1] == b"data: [DONE]"
    events = payloads(frames)
    assert answered != sorted(answered)
    assert [e["extra_fields"]["chunk_index"] for e in events] == list(range(len(events)))
    *deltas, done = events
    assert {e["type"] for e in deltas} == {"transcript.text.delta"}
    assert "".join(e["delta"] for e in deltas) == " ".join(f"w{k}" for k in range(WORDS))
    assert done["type"] == "transcript.text.done"
    assert done["text"] == " ".join(f"w{k}" for k in range(WORDS))
    assert done["extra_fields"]["audio_chunks"] == len(listener.requests)


async def test_first_caption_arrives_before_the_upload_ends(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3))
    body = raw_form(parts_for(data, "wav", ("stream", "true")))
    captioned = asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        half = len(body) // 2
        yield body[:half]
        # The rest is sent only once the client has seen a caption: the
        # first chunk must be transcribed and relayed while uploading.
        await asyncio.wait_for(captioned.wait(), 10)
        yield body[half:]

    headers = {**RAW_HEADERS, "Content-Length": str(len(body))}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url(server)}{URL}", data=upload(), headers=headers) as response,
    ):
        first = await response.content.readuntil(b"\n\n")
        assert b'"transcript.text.delta"' in first
        assert b'"w0' in first
        captioned.set()
        rest = await response.read()
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_a_chunk_failing_is_served_by_the_fallback(
    make_proxy: ProxyFactory, listener: FakeUpstream, backup: FakeUpstream
) -> None:
    backup.keep_files = True
    backup.respond = listening
    data = encode(WORDS, "wav")
    config = long_config(listener, len(data) // 3)
    config["providers"]["backup"] = {
        "keys": [{"value": "sk-backup"}],
        "custom_provider_config": {"base_provider_type": "openai"},
        "network_config": {"base_url": backup.base_url},
    }
    server = await make_proxy(config)

    async def third_fails(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        if received.file.filename == "chunk-0002.webm":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        return await listening(request, received)

    listener.respond = third_fails
    status, body, _ = await send(
        server,
        parts_for(
            data, "wav", ("response_format", "verbose_json"), ("fallbacks", "backup/whisper-1")
        ),
    )
    assert status == 200, body
    document = json_of(body)
    assert_every_word_once(document["segments"])
    assert [r.file.filename for r in backup.requests] == ["chunk-0002.webm"]
    attempts = document["extra_fields"]["attempts"]
    assert [(a["chunk"], a["provider"], a["status"]) for a in attempts] == [
        (2, "openai", 503),
        (2, "backup", 200),
    ]


async def test_a_chunk_failing_everywhere_names_its_time_range(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3))

    async def third_fails(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        if received.file.filename == "chunk-0002.webm":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        return await listening(request, received)

    listener.respond = third_fails
    status, body, _ = await send(server, parts_for(data, "wav"))
    assert status == 503
    message = assert_error(json_of(body), status=503, code="upstream_error", error_type="api_error")
    assert "chunk 2" in message
    assert " s to " in message
    assert "overloaded" in message
    # In a stream, the chunks before it are out already: an error event ends it.
    status, body, _ = await send(server, parts_for(data, "wav", ("stream", "true")))
    assert status == 200
    events = payloads(body.split(b"\n\n")[:-1])
    assert events[0]["type"] == "transcript.text.delta"
    assert events[-1]["error"]["message"].count("chunk 2") == 1
    assert body.endswith(b"data: [DONE]\n\n")


async def test_undecodable_audio_is_a_400(make_proxy: ProxyFactory, listener: FakeUpstream) -> None:
    server = await make_proxy(long_config(listener, 10_000))
    junk = os.urandom(50_000)
    for file_first in (False, True):
        status, body, _ = await send(server, parts_for(junk, "wav", file_first=file_first))
        assert status == 400
        assert_error(json_of(body), status=400, code="invalid_audio", param="file")
    assert not listener.requests


async def test_fields_after_the_file_are_refused_with_a_way_out(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3))
    parts: list[tuple[str, str | bytes]] = [
        ("model", "whisper-1"),
        ("file", data),
        ("language", "en"),
    ]
    status, body, _ = await send(server, parts)
    assert status == 400
    assert_error(json_of(body), status=400, code="fields_after_file", param="language")


async def test_carried_prompt_runs_chunks_in_order_with_the_previous_text(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3, carry_prompt=True))
    status, body, _ = await send(
        server,
        parts_for(data, "wav", ("prompt", "Names: Ada."), ("response_format", "verbose_json")),
    )
    assert status == 200
    assert_every_word_once(json_of(body)["segments"])
    prompts = [r.field("prompt") for r in listener.requests]
    assert prompts[0] == "Names: Ada."
    for previous, prompt in zip(listener.requests, prompts[1:], strict=False):
        heard_before = " ".join(p.strip() for p in _words_of(previous))
        assert prompt == f"Names: Ada. {heard_before}"


def _words_of(request: ReceivedRequest) -> list[str]:
    from tests.helpers.spoken import heard

    return [f"w{k}" for k, _, _ in heard(_samples(request))]


async def test_parallel_chunks_are_bounded(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3, max_parallel=2, max_chunk_s=5))
    running = 0
    most = 0

    async def slow(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
        return await listening(request, received)

    listener.respond = slow
    status, _, _ = await send(server, parts_for(data, "wav"))
    assert status == 200
    assert most == 2
    assert len(listener.requests) >= 8


async def test_client_leaving_mid_upload_leaves_nothing(
    make_proxy: ProxyFactory, listener: FakeUpstream, no_leaks: Callable[[], list[str]]
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3))
    body = raw_form(parts_for(data, "wav"))
    # Once, whole: the connections the proxy keeps to the upstream are open.
    assert (await send(server, parts_for(data, "wav")))[0] == 200
    tasks_before = len(asyncio.all_tasks())
    sent_enough = asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        yield body[: len(body) * 2 // 3]
        sent_enough.set()
        await asyncio.sleep(30)
        yield body[len(body) * 2 // 3 :]

    headers = {**RAW_HEADERS, "Content-Length": str(len(body))}
    async with aiohttp.ClientSession() as session:
        posting = asyncio.ensure_future(
            session.post(f"{base_url(server)}{URL}", data=upload(), headers=headers)
        )
        await sent_enough.wait()
        for _ in range(200):  # chunks are being transcribed
            if listener.requests:
                break
            await asyncio.sleep(0.01)
        posting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await posting
    await _settles(tasks_before, no_leaks)


async def _settles(tasks_before: int, no_leaks: Callable[[], list[str]]) -> None:
    for _ in range(200):
        if len(asyncio.all_tasks()) <= tasks_before and not no_leaks():
            break
        await asyncio.sleep(0.02)
    assert no_leaks() == []
    assert len(asyncio.all_tasks()) <= tasks_before


async def test_client_leaving_mid_stream_cancels_every_chunk(
    make_proxy: ProxyFactory, listener: FakeUpstream, no_leaks: Callable[[], list[str]]
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3))
    release = asyncio.Event()
    four_in_flight = asyncio.Event()
    cancelled = 0
    arrived = 0

    async def held(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        nonlocal cancelled, arrived
        arrived += 1
        if arrived == 4:
            four_in_flight.set()
        if received.file.filename == "chunk-0000.webm":
            await four_in_flight.wait()  # chunk 0 is answered once 4 chunks are in flight
        else:
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancelled += 1  # the proxy hung up: the chunk was dropped
                raise
        return await listening(request, received)

    # Once, whole: the connections the proxy keeps to the upstream are open.
    assert (await send(server, parts_for(data, "wav")))[0] == 200
    listener.respond = held
    tasks_before = len(asyncio.all_tasks())
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{base_url(server)}{URL}", data=multipart(parts_for(data, "wav", ("stream", "true")))
        )
        assert b"w0" in await response.content.readuntil(b"\n\n")
        response.close()
    for _ in range(200):
        if cancelled >= 3:
            break
        await asyncio.sleep(0.02)
    assert cancelled >= 3  # the chunk requests in flight were dropped, not waited for
    release.set()
    await _settles(tasks_before, no_leaks)


async def test_default_limits_by_provider() -> None:
    from proxy.config import parse_config

    config = parse_config(
        {
            "providers": {
                "openai": {"keys": [{"value": "k"}]},
                "selfhosted": {
                    "keys": [{"value": "k"}],
                    "custom_provider_config": {"base_provider_type": "openai"},
                    "network_config": {"base_url": "http://127.0.0.1:9"},
                },
                "groq": {
                    "keys": [{"value": "k"}],
                    "custom_provider_config": {"base_provider_type": "openai"},
                    "network_config": {"base_url": "http://127.0.0.1:9"},
                    "max_upload_mb": 40,
                },
                "azure": {"keys": [{"value": "k", "azure_key_config": {"endpoint": "http://x"}}]},
            }
        },
        {},
    )
    limits = {name: p.max_upload_mb for name, p in config.providers.items()}
    assert limits == {"openai": 25, "selfhosted": None, "groq": 40, "azure": 25}


async def test_lean_install_answers_413_naming_the_extra(
    listener: FakeUpstream, tmp_path: Path
) -> None:
    data = encode(WORDS, "wav")
    config = long_config(listener, len(data) // 3)
    process, url = await start_proxy_process(config, tmp_path, env=without_module(tmp_path, "av"))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}{URL}", data=multipart(parts_for(data, "wav"))) as response,
        ):
            document = json_of(await response.read())
    finally:
        process.terminate()
        await process.wait()
    assert response.status == 413
    message = assert_error(document, status=413, code="upload_over_provider_limit", param="file")
    assert "long-audio" in message
    assert not listener.requests
    assert sys.executable  # the same interpreter, with the extra hidden


async def test_spool_holds_at_most_the_chunks_in_flight(
    make_proxy: ProxyFactory, listener: FakeUpstream, tmp_path: Path
) -> None:
    data = encode(WORDS, "wav")
    config = long_config(listener, len(data) // 3, max_parallel=2, max_chunk_s=4)
    config["proxy"]["spool_dir"] = str(tmp_path)
    server = await make_proxy(config)
    most = 0

    async def watching(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        nonlocal most
        most = max(most, len(open_files_under(str(tmp_path))))
        await asyncio.sleep(0.02)
        return await listening(request, received)

    listener.respond = watching
    status, _, _ = await send(server, parts_for(data, "wav"))
    assert status == 200
    assert 1 <= most <= 3  # max_parallel + 1
    assert open_files_under(str(tmp_path)) == []


@pytest.mark.parametrize(
    ("chunk_format", "content_type"),
    [("mp3", "audio/mpeg"), ("flac", "audio/flac"), ("wav", "audio/wav")],
)
async def test_other_chunk_formats(
    make_proxy: ProxyFactory, listener: FakeUpstream, chunk_format: str, content_type: str
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3, format=chunk_format))
    status, body, _ = await send(
        server, parts_for(data, "wav", ("response_format", "verbose_json"))
    )
    assert status == 200
    assert_every_word_once(json_of(body)["segments"])
    assert {r.file.content_type for r in listener.requests} == {content_type}
    assert {r.file.filename for r in listener.requests} >= {f"chunk-0000.{chunk_format}"}


async def test_a_long_answer_is_cached_whole(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3))
    cached = {"x-bf-cache-key": "meeting"}
    fields = ("response_format", "verbose_json")
    status, body, _ = await send(server, parts_for(data, "wav", fields), headers=cached)
    assert json_of(body)["extra_fields"]["cache_debug"]["cache_hit"] is False
    chunks_sent = len(listener.requests)
    # The same recording again (file first: hashed before anything is sent).
    status, body, _ = await send(
        server, parts_for(data, "wav", fields, file_first=True), headers=cached
    )
    assert status == 200
    document = json_of(body)
    assert document["extra_fields"]["cache_debug"]["cache_hit"] is True
    assert_every_word_once(document["segments"])
    assert len(listener.requests) == chunks_sent


async def test_a_wav_shorter_than_its_upload_is_transcribed_as_far_as_it_says(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    data = bytearray(encode(WORDS, "wav"))
    # The header says 5 s: that much is audio, the rest of the body is not.
    at = data.index(b"data") + 4
    data[at : at + 4] = (5 * 16000 * 2).to_bytes(4, "little")
    server = await make_proxy(long_config(listener, len(data) // 3))
    status, body, _ = await send(
        server, parts_for(bytes(data), "wav", ("response_format", "verbose_json"))
    )
    assert status == 200, body
    assert_every_word_once(json_of(body)["segments"], 5)


async def test_decoders_at_once_are_capped(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3, max_decoders=1))
    most = 0
    done = False

    async def count_decoders() -> None:
        nonlocal most
        while not done:
            alive = [t for t in threading.enumerate() if t.name == "audio-decoder"]
            most = max(most, len(alive))
            await asyncio.sleep(0.002)

    counting = asyncio.ensure_future(count_decoders())
    fields = ("response_format", "verbose_json")
    results = await asyncio.gather(
        *(send(server, parts_for(data, "wav", fields)) for _ in range(3))
    )
    done = True
    await counting
    for status, body, _ in results:
        assert status == 200
        assert_every_word_once(json_of(body)["segments"])
    assert most == 1


async def test_a_long_stream_sent_again_is_answered_again_whole(
    make_proxy: ProxyFactory, listener: FakeUpstream
) -> None:
    """A cut upload's chunks go upstream as it arrives: the cache's check at its end must
    not end a stream whose answers have begun (it is asked, and the answer stored, as ever)."""
    data = encode(WORDS, "wav")
    server = await make_proxy(long_config(listener, len(data) // 3))
    cached = {"x-bf-cache-key": "meeting"}
    fields = ("stream", "true")
    for _ in range(2):
        status, body, _ = await send(server, parts_for(data, "wav", fields), headers=cached)
        assert status == 200
        events = payloads(body.split(b"\n\n")[:-1])
        assert all("error" not in event for event in events), events
        assert events[-1]["type"] == "transcript.text.done"
        assert events[-1]["extra_fields"]["cache_debug"]["cache_hit"] is False
