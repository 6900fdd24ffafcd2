"""Translations: OpenAI's ``/v1/audio/translations`` and Azure's deployment route, with
everything the transcription path has (streaming through, long audio, cache, fallbacks)."""

from __future__ import annotations

import hashlib
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from tests.helpers.client import ProxyFactory, audio_bytes, base_url, form, json_of, payloads, post
from tests.helpers.errors import assert_error
from tests.helpers.spoken import encode, listening
from tests.helpers.upstream import (
    FakeUpstream,
    azure_config,
    failing,
    provider_config,
    two_providers,
)

PATH = "/v1/audio/translations"


async def send(
    server: TestServer,
    *parts: tuple[str, str | bytes],
    path: str = PATH,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url(server)}{path}", data=form(*parts), headers=headers) as r,
    ):
        return r.status, await r.read(), dict(r.headers)


async def test_sdk_json_translation(sdk: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    audio = audio_bytes(200_000)
    result = await sdk.audio.translations.create(
        model="whisper-1",
        file=("rede.wav", audio, "audio/wav"),
        prompt="Ein Vortrag.",
        temperature=0.2,
    )
    assert result.text == "heard 200000 bytes"
    extra = (result.model_extra or {})["extra_fields"]
    assert extra["request_type"] == "translation"
    assert extra["provider"] == "openai"
    received = upstream.last
    assert received.path == "/v1/audio/translations"
    assert received.names == ["model", "prompt", "temperature", "file"]
    assert received.field("model") == "whisper-1"
    assert received.file.sha256 == hashlib.sha256(audio).hexdigest()


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ("text", "heard 10 bytes\n"),
        ("srt", "1\n00:00:00,000 --> 00:00:01,000\nheard 10 bytes\n\n"),
        ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nheard 10 bytes\n\n"),
    ],
)
async def test_sdk_text_formats(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream, response_format: Any, expected: str
) -> None:
    result = await sdk.audio.translations.create(
        model="whisper-1",
        file=("a.wav", audio_bytes(10), "audio/wav"),
        response_format=response_format,
    )
    assert result == expected
    assert upstream.last.path == "/v1/audio/translations"
    assert upstream.last.field("response_format") == response_format


async def test_sdk_verbose_json(sdk: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    result = await sdk.audio.translations.create(
        model="whisper-1",
        file=("a.wav", audio_bytes(10), "audio/wav"),
        response_format="verbose_json",
    )
    assert result.text == "heard 10 bytes"
    assert result.segments is not None
    assert result.segments[0].text == "heard 10 bytes"
    assert (result.model_extra or {})["extra_fields"]["request_type"] == "translation"


@pytest.mark.parametrize("file_first", [False, True], ids=["model-first", "file-first"])
async def test_language_is_refused_naming_it(
    proxy: TestServer, upstream: FakeUpstream, file_first: bool
) -> None:
    fields: list[tuple[str, str | bytes]] = [("model", "whisper-1"), ("language", "de")]
    file: tuple[str, str | bytes] = ("file", audio_bytes(1000))
    parts = [file, *fields] if file_first else [*fields, file]
    status, document, _ = await post(proxy, form(*parts), path=PATH)
    assert status == 400
    message = assert_error(
        document, status=400, code="unsupported_field", param="language", request_type="translation"
    )
    assert "English" in message
    assert upstream.requests == []


async def test_diarized_json_is_refused(proxy: TestServer, upstream: FakeUpstream) -> None:
    status, document, _ = await post(
        proxy,
        form(("model", "whisper-1"), ("response_format", "diarized_json"), ("file", b"RIFF")),
        path=PATH,
    )
    assert_error(
        document,
        status=400,
        code="invalid_value",
        param="response_format",
        request_type="translation",
    )
    assert status == 400
    assert upstream.requests == []


async def test_stream_true_is_answered_by_the_proxy(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    status, body, headers = await send(
        proxy, ("model", "whisper-1"), ("stream", "true"), ("file", audio_bytes(500))
    )
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    frames = body.split(b"\n\n")[:-1]
    assert frames[-1] == b"data: [DONE]"
    events = payloads(frames)
    assert events[-1]["type"] == "transcript.text.done"
    assert events[-1]["text"] == "heard 500 bytes"
    assert [e["extra_fields"]["chunk_index"] for e in events] == list(range(len(events)))
    assert {e["extra_fields"]["request_type"] for e in events} == {"translation_stream"}
    # OpenAI's translations take no ``stream``: the proxy makes the events itself.
    assert upstream.last.path == "/v1/audio/translations"
    assert upstream.last.field("stream") is None


async def test_a_stream_field_after_the_file_is_not_sent_either(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    # Streamed through: the field arrives after the file is already on its way.
    status, body, _ = await send(
        proxy, ("model", "whisper-1"), ("file", audio_bytes(4 * 1024 * 1024)), ("stream", "true")
    )
    assert status == 200
    assert body.endswith(b"data: [DONE]\n\n")
    assert upstream.last.complete
    assert upstream.last.field("stream") is None


async def test_fallback_stays_a_translation(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    server = await make_proxy(two_providers(upstream, backup, max_retries=0))
    upstream.respond = failing(503)
    status, body, _ = await send(
        server,
        ("model", "openai/whisper-1"),
        ("fallbacks", "backup/whisper-large-v3"),
        ("file", audio_bytes(1000)),
    )
    assert status == 200, body
    document = json_of(body)
    assert document["extra_fields"]["provider"] == "backup"
    assert [r.path for r in upstream.requests] == ["/v1/audio/translations"]
    assert backup.last.path == "/v1/audio/translations"
    assert backup.last.field("model") == "whisper-large-v3"


async def test_cache_keeps_translations_apart_from_transcriptions(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["proxy"] = {"cache": {}}
    server = await make_proxy(config)
    cached = {"x-bf-cache-key": "talk"}
    parts: list[tuple[str, str | bytes]] = [("model", "whisper-1"), ("file", audio_bytes(999))]
    for path in ("/v1/audio/transcriptions", PATH, PATH, "/v1/audio/transcriptions"):
        status, body, _ = await send(server, *parts, path=path, headers=cached)
        assert status == 200, body
    # One miss each, then one hit each.
    assert [r.path for r in upstream.requests if r.complete] == [
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    ]
    debug = json_of(body)["extra_fields"]["cache_debug"]
    assert debug["cache_hit"] is True


async def test_long_translation_is_chunked_and_stitched(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.keep_files = True
    upstream.respond = listening
    words = 24
    data = encode(words, "wav")
    limit = len(data) // 3
    upstream.max_file_bytes = limit
    config = provider_config(upstream)
    config["providers"]["openai"]["max_upload_mb"] = limit / 1024 / 1024
    config["proxy"] = {"chunking": {"max_chunk_s": 8, "cut_search_s": 3}}
    server = await make_proxy(config)
    status, body, _ = await send(
        server, ("model", "whisper-1"), ("response_format", "verbose_json"), ("file", data)
    )
    assert status == 200, body
    document = json_of(body)
    assert document["text"] == " ".join(f"w{k}" for k in range(words))
    assert document["extra_fields"]["request_type"] == "translation"
    assert document["extra_fields"]["audio_chunks"] == len(upstream.requests) > 1
    assert {r.path for r in upstream.requests} == {"/v1/audio/translations"}


@pytest.mark.parametrize("endpoint_suffix", ["/openai", ""])
@pytest.mark.parametrize(
    ("model", "deployment"), [("whisper-1", "my-whisper"), ("team-whisper", "team-whisper")]
)
async def test_azure_sdk_translation_reaches_azure(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    endpoint_suffix: str,
    model: str,
    deployment: str,
) -> None:
    server = await make_proxy(azure_config(upstream))
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=f"{base_url(server)}{endpoint_suffix}",
        api_key="client-azure-key",
        api_version="2025-04-01-preview",
        max_retries=0,
    ) as client:
        result = await client.audio.translations.create(
            model=model, file=("a.wav", audio_bytes(64), "audio/wav")
        )
    assert result.text == "heard 64 bytes"
    received = upstream.last
    assert received.path == f"/openai/deployments/{deployment}/audio/translations"
    assert received.query == {"api-version": "2024-10-21"}
    assert received.headers["api-key"] == "azure-secret-key"
    extra = (result.model_extra or {})["extra_fields"]
    assert extra["provider"] == "azure"
    assert extra["request_type"] == "translation"
    assert extra["model_deployment"] == deployment
