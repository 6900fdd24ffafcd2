"""The transcript cache: repeated uploads answered without paying the provider again."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from proxy.cache.stores import MemoryStore
from tests.helpers.client import URL, ProxyFactory, audio_bytes, base_url, form, json_of, payloads
from tests.helpers.errors import assert_error
from tests.helpers.metrics import scrape, value
from tests.helpers.processes import RedisServer, start_proxy_process
from tests.helpers.upstream import (
    FakeUpstream,
    failing,
    openai_events,
    provider_config,
    streaming,
    transcript_json,
)

CACHED = {"x-bf-cache-key": "voicemail"}
#: Larger than the bodies the proxy takes whole from its buffer, so a
#: model-first upload streams upstream while it is read.
STREAMED = 3 * 1024 * 1024


def cached_config(upstream: FakeUpstream, **cache: Any) -> dict[str, Any]:
    config = provider_config(upstream)
    config["proxy"] = {"cache": cache}
    return config


@pytest.fixture
async def cached(make_proxy: ProxyFactory, upstream: FakeUpstream) -> TestServer:
    return await make_proxy(cached_config(upstream))


async def send(
    target: TestServer | str,
    *parts: tuple[str, str | bytes],
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    url = target if isinstance(target, str) else base_url(target)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}{URL}", data=form(*parts), headers=headers) as response,
    ):
        return response.status, await response.read(), dict(response.headers)


async def debug_of(
    target: TestServer | str,
    *parts: tuple[str, str | bytes],
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The answer's ``cache_debug`` (the request must succeed with a JSON answer)."""
    status, body, _ = await send(target, *parts, headers={**CACHED, **(headers or {})})
    assert status == 200, body
    debug: dict[str, Any] = json_of(body)["extra_fields"]["cache_debug"]
    return debug


def model_first(audio: bytes, *fields: tuple[str, str]) -> list[tuple[str, str | bytes]]:
    return [("model", "whisper-1"), *fields, ("file", audio)]


def file_first(audio: bytes, *fields: tuple[str, str]) -> list[tuple[str, str | bytes]]:
    return [("file", audio), ("model", "whisper-1"), *fields]


def repr_digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


async def test_streamed_upload_hit_abandons_the_upstream_request_before_it_is_complete(
    cached: TestServer, upstream: FakeUpstream
) -> None:
    audio = audio_bytes(STREAMED)
    first = await debug_of(cached, *model_first(audio))
    assert first["cache_hit"] is False
    tasks_before = len(asyncio.all_tasks())
    second = await debug_of(cached, *model_first(audio))
    assert second == {
        "cache_hit": True,
        "cache_id": first["cache_id"],
        "hit_type": "direct",
        "requested_provider": "openai",
        "requested_model": "whisper-1",
        "provider_used": "openai",
        "model_used": "whisper-1",
    }
    await asyncio.wait_for(upstream.aborted.wait(), 5)
    # One complete request: the second got the audio but never its end. The delimiter
    # after the file is held back until the lookup misses, so on a hit the upstream's
    # file part never ends: it is never hashed, however much of the audio reached it.
    assert [r.complete for r in upstream.requests] == [True, False]
    assert upstream.requests[1].file.sha256 == ""
    for _ in range(100):  # nothing of the abandoned request is left running
        if len(asyncio.all_tasks()) <= tasks_before:
            break
        await asyncio.sleep(0.02)
    assert len(asyncio.all_tasks()) <= tasks_before
    assert value(await scrape(cached), "proxy_cache_hits_total") == 1
    assert value(await scrape(cached), "proxy_cache_upstream_cancelled_total") == 1
    assert value(await scrape(cached), "proxy_cache_stores_total") == 1


async def test_spooled_upload_hit_sends_nothing_upstream(
    cached: TestServer, upstream: FakeUpstream
) -> None:
    audio = audio_bytes(STREAMED)
    assert (await debug_of(cached, *file_first(audio)))["cache_hit"] is False
    assert (await debug_of(cached, *file_first(audio)))["cache_hit"] is True
    assert len(upstream.requests) == 1
    # A hit is keyed on the audio, not on the part order it came in.
    assert (await debug_of(cached, *model_first(audio)))["cache_hit"] is True
    assert len(upstream.requests) == 2


async def test_openai_sdk_hit(cached: TestServer, upstream: FakeUpstream) -> None:
    client = openai.AsyncOpenAI(
        base_url=f"{base_url(cached)}/v1", api_key="sk-client", max_retries=0
    )
    async with client:
        results = [
            await client.audio.transcriptions.create(
                model="whisper-1", file=("a.wav", audio_bytes(50_000)), extra_headers=CACHED
            )
            for _ in range(2)
        ]
    debug = [(r.model_extra or {})["extra_fields"]["cache_debug"]["cache_hit"] for r in results]
    assert debug == [False, True]
    assert results[0].text == results[1].text == "heard 50000 bytes"
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("change", "variant"),
    [
        ("one changed byte", {"flip": True}),
        ("another model", {"model": "whisper-2"}),
        ("another language", {"language": "fr"}),
        ("another prompt", {"prompt": "names: Ada"}),
        ("another temperature", {"temperature": "0.4"}),
        ("word timestamps", {"timestamp_granularities[]": "word"}),
        ("a pass-through field", {"include[]": "logprobs"}),
        ("another cache key", {"key": "other"}),
    ],
)
async def test_what_changes_the_answer_is_a_miss(
    cached: TestServer, upstream: FakeUpstream, change: str, variant: dict[str, str]
) -> None:
    audio = audio_bytes(STREAMED)
    assert (await debug_of(cached, *model_first(audio)))["cache_hit"] is False
    changed = bytearray(audio)
    if variant.pop("flip", None):
        changed[len(changed) // 2] ^= 1
    model = variant.pop("model", "whisper-1")
    key = variant.pop("key", CACHED["x-bf-cache-key"])
    parts: list[tuple[str, str | bytes]] = [
        ("model", model),
        *variant.items(),
        ("file", bytes(changed)),
    ]
    assert (await debug_of(cached, *parts, headers={"x-bf-cache-key": key}))["cache_hit"] is False
    assert [r.complete for r in upstream.requests] == [True, True], change


async def test_what_does_not_change_the_answer_still_hits(
    cached: TestServer, upstream: FakeUpstream
) -> None:
    audio = audio_bytes(50_000)
    await debug_of(cached, *file_first(audio, ("timestamp_granularities[]", "segment")))
    hit = await debug_of(
        cached,
        ("file", audio),
        ("model", "whisper-1"),
        ("fallbacks", "openai/whisper-2"),
        ("timestamp_granularities", "segment"),
    )
    assert hit["cache_hit"] is True


async def test_another_virtual_key_is_a_miss(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = cached_config(upstream)
    config["governance"] = {
        "virtual_keys": [
            {
                "id": name,
                "value": f"sk-bf-{name}-0123456789",
                "provider_configs": [{"provider": "openai"}],
            }
            for name in ("team-a", "team-b")
        ]
    }
    server = await make_proxy(config)
    audio = audio_bytes(50_000)
    team_a = {"x-bf-vk": "sk-bf-team-a-0123456789"}
    team_b = {"x-bf-vk": "sk-bf-team-b-0123456789"}
    assert (await debug_of(server, *file_first(audio), headers=team_a))["cache_hit"] is False
    assert (await debug_of(server, *file_first(audio), headers=team_b))["cache_hit"] is False
    assert (await debug_of(server, *file_first(audio), headers=team_a))["cache_hit"] is True
    assert len(upstream.requests) == 2


async def test_no_store_reads_without_writing(cached: TestServer, upstream: FakeUpstream) -> None:
    audio = audio_bytes(50_000)
    no_store = {"x-bf-cache-no-store": "true"}
    assert (await debug_of(cached, *file_first(audio), headers=no_store))["cache_hit"] is False
    assert (await debug_of(cached, *file_first(audio)))["cache_hit"] is False  # and stores
    assert (await debug_of(cached, *file_first(audio), headers=no_store))["cache_hit"] is True
    assert len(upstream.requests) == 2


async def test_ttl_expiry(cached: TestServer, upstream: FakeUpstream) -> None:
    audio = audio_bytes(50_000)
    short = {"x-bf-cache-ttl": "1s"}
    assert (await debug_of(cached, *file_first(audio), headers=short))["cache_hit"] is False
    assert (await debug_of(cached, *file_first(audio)))["cache_hit"] is True
    await asyncio.sleep(1.1)
    assert (await debug_of(cached, *file_first(audio)))["cache_hit"] is False
    assert len(upstream.requests) == 2


async def test_bad_ttl_header_is_a_400(cached: TestServer, upstream: FakeUpstream) -> None:
    status, body, _ = await send(
        cached, *file_first(b"RIFF"), headers={**CACHED, "x-bf-cache-ttl": "soon"}
    )
    assert status == 400
    assert_error(json_of(body), status=400, code="invalid_cache_ttl")
    assert not upstream.requests


async def test_default_key_engages_every_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(cached_config(upstream, default_key="everyone"))
    audio = audio_bytes(50_000)
    for _ in range(2):
        status, _, _ = await send(server, *file_first(audio))
        assert status == 200
    assert len(upstream.requests) == 1


async def test_disabled_cache_ignores_the_header(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(cached_config(upstream, enabled=False))
    for _ in range(2):
        status, body, _ = await send(server, *file_first(b"RIFF"), headers=CACHED)
        assert status == 200
        assert "cache_debug" not in json_of(body)["extra_fields"]
    assert len(upstream.requests) == 2


async def test_stream_hit_replays_as_events(cached: TestServer, upstream: FakeUpstream) -> None:
    audio = audio_bytes(50_000)
    await debug_of(cached, *file_first(audio, ("response_format", "verbose_json")))
    status, body, headers = await send(
        cached, *file_first(audio, ("stream", "true")), headers=CACHED
    )
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    frames = body.split(b"\n\n")[:-1]
    assert frames[-1] == b"data: [DONE]"
    events = payloads(frames)
    assert [e["extra_fields"]["chunk_index"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == ["transcript.text.delta", "transcript.text.done"]
    assert events[0]["delta"] == "heard 50000 bytes"
    assert events[-1]["text"] == "heard 50000 bytes"
    assert events[-1]["extra_fields"]["cache_debug"]["cache_hit"] is True
    assert len(upstream.requests) == 1


async def test_stream_miss_is_stored_once_complete(
    cached: TestServer, upstream: FakeUpstream
) -> None:
    upstream.respond = streaming(openai_events(["Hel", "lo"]))
    audio = audio_bytes(50_000)
    _, body, _ = await send(cached, *file_first(audio, ("stream", "true")), headers=CACHED)
    events = payloads(body.split(b"\n\n")[:-1])
    assert events[-1]["extra_fields"]["cache_debug"]["cache_hit"] is False
    hit = await debug_of(cached, *file_first(audio))
    assert hit["cache_hit"] is True
    _, body, _ = await send(cached, *file_first(audio), headers=CACHED)
    assert json_of(body)["text"] == "Hello"
    assert json_of(body)["usage"]["input_tokens"] == 7
    assert len(upstream.requests) == 1


async def test_cancelled_stream_is_never_stored(cached: TestServer, upstream: FakeUpstream) -> None:
    release = asyncio.Event()

    async def hold(index: int) -> None:
        if index == 1:
            await release.wait()

    upstream.respond = streaming(openai_events(["Hel", "lo"]), before=hold)
    audio = audio_bytes(50_000)
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{base_url(cached)}{URL}",
            data=form(*file_first(audio, ("stream", "true"))),
            headers=CACHED,
        )
        assert (await response.content.readuntil(b"\n\n")).startswith(b"data: ")
        response.close()
    await asyncio.sleep(0.2)  # the proxy notices the client is gone
    release.set()
    upstream.respond = streaming(openai_events(["Hel", "lo"]))
    assert (await debug_of(cached, *file_first(audio)))["cache_hit"] is False
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ("text", "heard 50000 bytes\n"),
        ("srt", "1\n00:00:00,000 --> 00:00:02,000\nheard 50000 bytes\n\n"),
        ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nheard 50000 bytes\n\n"),
    ],
)
async def test_verbose_json_entry_answers_text_formats(
    cached: TestServer, upstream: FakeUpstream, wanted: str, expected: str
) -> None:
    audio = audio_bytes(50_000)
    await debug_of(cached, *file_first(audio, ("response_format", "verbose_json")))
    status, body, headers = await send(
        cached, *file_first(audio, ("response_format", wanted)), headers=CACHED
    )
    assert status == 200
    assert body.decode() == expected
    assert headers["x-bf-cache-hit"] == "true"
    assert headers["Content-Type"].startswith("text/vtt" if wanted == "vtt" else "text/plain")
    assert len(upstream.requests) == 1


async def test_verbose_json_entry_answers_json(cached: TestServer, upstream: FakeUpstream) -> None:
    audio = audio_bytes(50_000)
    await debug_of(cached, *file_first(audio, ("response_format", "verbose_json")))
    _, body, _ = await send(cached, *file_first(audio), headers=CACHED)
    document = json_of(body)
    assert document["text"] == "heard 50000 bytes"
    assert "segments" not in document
    assert document["usage"] == {"type": "duration", "seconds": 2}
    assert len(upstream.requests) == 1


async def test_json_entry_answers_text_but_not_srt(
    cached: TestServer, upstream: FakeUpstream
) -> None:
    audio = audio_bytes(50_000)
    await debug_of(cached, *file_first(audio))
    status, body, headers = await send(
        cached, *file_first(audio, ("response_format", "text")), headers=CACHED
    )
    assert (status, body, headers["x-bf-cache-hit"]) == (200, b"heard 50000 bytes\n", "true")
    status, body, headers = await send(
        cached, *file_first(audio, ("response_format", "srt")), headers=CACHED
    )
    assert headers["x-bf-cache-hit"] == "false"  # no timings to make captions of
    assert len(upstream.requests) == 2
    # The srt answer was stored in its turn, and serves srt from now on.
    status, body, headers = await send(
        cached, *file_first(audio, ("response_format", "srt")), headers=CACHED
    )
    assert headers["x-bf-cache-hit"] == "true"
    assert len(upstream.requests) == 2


async def test_errors_are_never_stored(cached: TestServer, upstream: FakeUpstream) -> None:
    upstream.respond = failing(500)
    audio = audio_bytes(50_000)
    status, _, _ = await send(cached, *file_first(audio), headers=CACHED)
    assert status == 500
    upstream.respond = transcript_json
    assert (await debug_of(cached, *file_first(audio)))["cache_hit"] is False
    assert len(upstream.requests) == 2


async def test_repr_digest_hit_sends_nothing_upstream(
    cached: TestServer, upstream: FakeUpstream
) -> None:
    audio = audio_bytes(STREAMED)
    digest = {"Repr-Digest": repr_digest(audio)}
    assert (await debug_of(cached, *model_first(audio), headers=digest))["cache_hit"] is False
    assert (await debug_of(cached, *model_first(audio), headers=digest))["cache_hit"] is True
    assert len(upstream.requests) == 1
    assert upstream.requests[0].complete


async def test_repr_digest_miss_is_counted_once(cached: TestServer, upstream: FakeUpstream) -> None:
    audio = audio_bytes(STREAMED)
    digest = {"Repr-Digest": repr_digest(audio)}
    assert (await debug_of(cached, *model_first(audio), headers=digest))["cache_hit"] is False
    assert value(await scrape(cached), "proxy_cache_misses_total") == 1


async def test_repr_digest_hit_with_a_field_after_the_file(
    cached: TestServer, upstream: FakeUpstream
) -> None:
    audio = audio_bytes(STREAMED)
    digest = {"Repr-Digest": repr_digest(audio)}
    await debug_of(cached, *model_first(audio, ("language", "en")))
    # The same request with language after the file: the digest finds the
    # entry without language; the whole form finds the one with it.
    after: list[tuple[str, str | bytes]] = [
        ("model", "whisper-1"),
        ("file", audio),
        ("language", "en"),
    ]
    assert (await debug_of(cached, *after, headers=digest))["cache_hit"] is True
    # A field after the file that names an answer never stored: the file was
    # read without forwarding it, so the client is told how to send it.
    await debug_of(cached, *model_first(audio))
    other: list[tuple[str, str | bytes]] = [
        ("model", "whisper-1"),
        ("file", audio),
        ("language", "de"),
    ]
    status, body, _ = await send(cached, *other, headers={**CACHED, **digest})
    assert status == 400
    assert_error(json_of(body), status=400, code="fields_after_file")
    assert sum(r.complete for r in upstream.requests) == 2


async def test_wrong_repr_digest_is_a_400_and_nothing_is_stored(
    cached: TestServer, upstream: FakeUpstream
) -> None:
    audio = audio_bytes(STREAMED)
    wrong = {**CACHED, "Repr-Digest": repr_digest(audio + b"!")}
    for parts in (model_first(audio), file_first(audio)):
        status, body, _ = await send(cached, *parts, headers=wrong)
        assert status == 400
    assert_error(json_of(body), status=400, code="digest_mismatch", param="file")
    # The streamed one reached the upstream without its end.
    assert not any(r.complete for r in upstream.requests)
    assert (await debug_of(cached, *model_first(audio)))["cache_hit"] is False


async def test_wrong_repr_digest_after_a_stored_answer_is_still_a_400(
    cached: TestServer, upstream: FakeUpstream
) -> None:
    audio = audio_bytes(STREAMED)
    await debug_of(cached, *model_first(audio))
    # The digest names the stored audio, but the bytes sent are other ones.
    other = audio_bytes(STREAMED, seed=2)
    status, body, _ = await send(
        cached, *model_first(other), headers={**CACHED, "Repr-Digest": repr_digest(audio)}
    )
    assert status == 400
    assert_error(json_of(body), status=400, code="digest_mismatch", param="file")
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("value", ["sha-256=abc", "sha-256=:AAAA:", "sha-256=:not base64!:"])
async def test_malformed_repr_digest_is_a_400(
    cached: TestServer, upstream: FakeUpstream, value: str
) -> None:
    status, body, _ = await send(cached, *model_first(b"RIFF"), headers={"Repr-Digest": value})
    assert status == 400
    assert_error(json_of(body), status=400, code="invalid_digest")
    assert not upstream.requests


async def test_hits_cost_the_budget_nothing(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = cached_config(upstream)
    config["governance"] = {
        "reserve_audio_seconds": 1,
        "budgets": [{"id": "b", "max_limit": 3, "unit": "audio_seconds"}],
        "virtual_keys": [
            {
                "id": "team",
                "value": "sk-bf-team-0123456789",
                "budget_id": "b",
                "provider_configs": [{"provider": "openai"}],
            }
        ],
    }
    server = await make_proxy(config)
    team = {"x-bf-vk": "sk-bf-team-0123456789"}
    audio = audio_bytes(50_000)
    # Each upstream answer uses 2 s of the 3 s budget; hits use none.
    assert (await debug_of(server, *file_first(audio), headers=team))["cache_hit"] is False
    for _ in range(3):
        assert (await debug_of(server, *file_first(audio), headers=team))["cache_hit"] is True
    other = audio_bytes(50_000, seed=2)
    assert (await debug_of(server, *file_first(other), headers=team))["cache_hit"] is False
    status, _, _ = await send(server, *file_first(audio_bytes(10, seed=3)), headers=team)
    assert status == 402


async def test_redis_store_is_shared_by_two_proxy_processes(
    upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = cached_config(upstream, store="redis")
    config["proxy"]["redis_url"] = redis_server.url
    one, one_url = await start_proxy_process(config, tmp_path, name="one")
    two, two_url = await start_proxy_process(config, tmp_path, name="two")
    audio = audio_bytes(STREAMED)
    try:
        first = await debug_of(one_url, *model_first(audio))
        second = await debug_of(two_url, *model_first(audio))
    finally:
        for process in (one, two):
            process.terminate()
            await process.wait()
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert [r.complete for r in upstream.requests][:1] == [True]
    assert sum(r.complete for r in upstream.requests) == 1


async def test_redis_down_is_a_miss_and_the_request_succeeds(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    config = cached_config(upstream, store="redis")
    config["proxy"]["redis_url"] = f"redis://127.0.0.1:{port}/0"
    server = await make_proxy(config)
    audio = audio_bytes(50_000)
    for _ in range(2):
        assert (await debug_of(server, *file_first(audio)))["cache_hit"] is False
    assert len(upstream.requests) == 2
    assert value(await scrape(server), "proxy_cache_errors_total") >= 2


async def test_memory_store_evicts_least_recently_used_by_bytes() -> None:
    now = [0.0]
    store = MemoryStore(max_bytes=100, clock=lambda: now[0])
    assert await store.put("a", b"x" * 40, 60) == 0
    assert await store.put("b", b"y" * 40, 60) == 0
    assert await store.get("a") == b"x" * 40  # a is now the most recently used
    assert await store.put("c", b"z" * 40, 60) == 1
    assert await store.get("b") is None
    assert await store.get("a") is not None
    assert store.size_bytes == 80
    assert await store.put("huge", b"h" * 101, 60) == 0  # larger than the whole cap
    assert await store.get("huge") is None
    now[0] = 61.0
    assert await store.get("a") is None  # expired
    assert await store.put("d", b"d" * 90, 60) == 0  # expired entries leave uncounted
    assert store.size_bytes == 90
