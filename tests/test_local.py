"""The embedded model transcribes real speech: no key, no network, every format."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

pytest.importorskip("faster_whisper", reason="the local extra is not installed")

from proxy.config import LocalSettings
from proxy.errors import ModelIntegrityError
from proxy.models import FormField
from proxy.providers.local import PACKAGED_MODEL_SHA256, packaged_model_path, verify_model
from proxy.providers.local.passes import DecodeOptions
from tests.helpers.client import URL, ProxyFactory, base_url, form, json_of, post
from tests.helpers.errors import assert_error
from tests.helpers.upstream import FakeUpstream, provider_config

SAMPLE = Path(__file__).parent / "data" / "sample.wav"
KEY_WORDS = ("weather", "sunny", "apples", "friday")


@pytest.fixture
async def local(make_proxy: ProxyFactory) -> TestServer:
    return await make_proxy({"providers": {"local": {}}})


def sample() -> bytes:
    return SAMPLE.read_bytes()


def assert_heard(text: str) -> None:
    lowered = text.lower()
    for word in KEY_WORDS:
        assert word in lowered, f"{word!r} not in {text!r}"


async def test_sdk_gets_a_real_transcript(local: TestServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{base_url(local)}/v1", api_key="none", max_retries=0
    ) as client:
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=("sample.wav", sample(), "audio/wav")
        )
    assert_heard(result.text)
    extra = (result.model_extra or {})["extra_fields"]
    assert extra["provider"] == "local"
    assert extra["model_deployment"] == "tiny.en"
    assert result.usage is not None
    assert result.usage.type == "duration"
    assert result.usage.seconds == 10  # 9.08 s, rounded up as OpenAI does


async def test_verbose_json_with_words(local: TestServer) -> None:
    status, document, _ = await post(
        local,
        form(
            ("model", "local/tiny.en"),
            ("response_format", "verbose_json"),
            ("timestamp_granularities[]", "word"),
            ("timestamp_granularities[]", "segment"),
            ("language", "en"),
            ("file", sample()),
        ),
    )
    assert status == 200, document
    assert document["task"] == "transcribe"
    assert document["language"] == "english"
    assert 9.0 < document["duration"] < 9.2
    assert_heard(document["text"])
    segments = document["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    assert all(s["start"] < s["end"] <= 9.2 for s in segments)
    assert {"tokens", "avg_logprob", "no_speech_prob", "seek"} <= set(segments[0])
    words = document["words"]
    assert "sunny" in [w["word"].lower().strip(".,") for w in words]
    assert all(w["start"] <= w["end"] for w in words)


@pytest.mark.parametrize("response_format", ["text", "srt", "vtt"])
async def test_plain_text_formats(local: TestServer, response_format: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(local)}{URL}",
            data=form(
                ("model", "whisper-1"), ("response_format", response_format), ("file", sample())
            ),
        ) as response,
    ):
        assert response.status == 200
        body = await response.text()
    assert_heard(body)
    if response_format == "srt":
        assert body.startswith("1\n00:00:00,000 --> 00:00:0")
    elif response_format == "vtt":
        assert body.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:0")
        assert response.headers["Content-Type"] == "text/vtt; charset=utf-8"
    else:
        assert body.endswith("\n")
        assert "-->" not in body


async def test_streaming_sends_each_segment_before_the_done_event(local: TestServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{base_url(local)}/v1", api_key="none", max_retries=0
    ) as client:
        stream = await client.audio.transcriptions.create(
            model="whisper-1", file=("sample.wav", sample(), "audio/wav"), stream=True
        )
        events = [event async for event in stream]
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) > 1
    assert events[-1].type == "transcript.text.done"
    assert [e.type for e in events[: len(deltas)]] == ["transcript.text.delta"] * len(deltas)
    assert_heard(events[-1].text)
    assert "".join(d.delta for d in deltas).strip() == events[-1].text


async def test_corrupt_audio_is_a_clear_400(local: TestServer) -> None:
    for garbage in (os.urandom(20_000), b"", b"RIFF\x00\x00\x00\x00WAVEfmt "):
        status, body, _ = await post(local, form(("model", "whisper-1"), ("file", garbage)))
        assert status == 400
        message = assert_error(body, status=400, code="invalid_audio", param="file")
        assert "Traceback" not in message


async def test_diarization_is_refused_clearly(local: TestServer) -> None:
    status, body, _ = await post(
        local,
        form(("model", "whisper-1"), ("response_format", "diarized_json"), ("file", sample())),
    )
    assert status == 400
    assert_error(body, status=400, code="invalid_value", param="response_format")


def test_the_packaged_model_passes_its_check() -> None:
    with (packaged_model_path() / "model.bin").open("rb") as weights:
        assert hashlib.file_digest(weights, "sha256").hexdigest() == PACKAGED_MODEL_SHA256
    verify_model(packaged_model_path(), PACKAGED_MODEL_SHA256)  # raises on a mismatch


async def test_a_tampered_model_is_refused(make_proxy: ProxyFactory, tmp_path: Path) -> None:
    packaged = packaged_model_path()
    for item in packaged.iterdir():
        if item.name != "model.bin":
            (tmp_path / item.name).symlink_to(item)
    weights = bytearray(await asyncio.to_thread((packaged / "model.bin").read_bytes))
    weights[len(weights) // 2] ^= 0xFF  # one flipped byte
    await asyncio.to_thread((tmp_path / "model.bin").write_bytes, bytes(weights))
    with pytest.raises(ModelIntegrityError):
        verify_model(tmp_path, PACKAGED_MODEL_SHA256)
    server = await make_proxy(
        {
            "providers": {"local": {}},
            "proxy": {
                "local": {"model_path": str(tmp_path), "model_sha256": PACKAGED_MODEL_SHA256}
            },
        }
    )
    status, body, _ = await post(server, form(("model", "whisper-1"), ("file", sample())))
    assert status == 503
    message = assert_error(
        body, status=503, code="model_integrity_failed", error_type="api_error", bifrost=True
    )
    assert "integrity" in message


async def test_past_the_decode_queue_requests_are_refused(make_proxy: ProxyFactory) -> None:
    server = await make_proxy(
        {"providers": {"local": {}}, "proxy": {"local": {"max_concurrent": 1, "max_queue": 0}}}
    )
    long_audio = _repeated(sample(), 3)  # ~27 s: long enough to keep the one slot busy
    results = await asyncio.gather(
        *(post(server, form(("model", "whisper-1"), ("file", long_audio))) for _ in range(3))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses[0] == 200
    assert 503 in statuses
    busy = next(body for status, body, _ in results if status == 503)
    assert busy["error"]["code"] == "local_model_busy"
    assert next(h for s, _, h in results if s == 503)["Retry-After"] == "1"


def _repeated(wav: bytes, times: int) -> bytes:
    with wave.open(io.BytesIO(wav)) as source:
        params = source.getparams()
        frames = source.readframes(source.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setparams(params)
        target.writeframes(frames * times)
    return out.getvalue()


def test_form_fields_become_decoder_options() -> None:
    fields = [
        FormField("language", "en-US"),
        FormField("prompt", "Names: Anouk."),
        FormField("temperature", "0.4"),
        FormField("timestamp_granularities[]", "word"),
    ]
    options = DecodeOptions.of(fields, LocalSettings(beam_size=3, vad_filter=True))
    assert options == DecodeOptions(
        beam_size=3,
        language="en",
        prompt="Names: Anouk.",
        temperature=0.4,
        word_timestamps=True,
        vad_filter=True,
    )
    assert options.task == "transcribe"
    assert DecodeOptions.of([], LocalSettings(), translate=True).task == "translate"


async def test_models_lists_the_embedded_model(local: TestServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(local)}/v1/models") as response,
    ):
        document = json_of(await response.read())
    assert [m["id"] for m in document["data"]] == ["local/tiny.en"]


@pytest.mark.parametrize("model_first", [True, False], ids=["streamed", "spooled"])
async def test_every_kind_of_upload_reaches_the_model(
    local: TestServer, model_first: bool, no_leaks: Any
) -> None:
    # Sent in pieces, a model-first body is still arriving when the file
    # starts, so it streams (and the provider spools it); file first, the form
    # reader spools it and the model decodes that spool.
    boundary = "local-kinds"
    model = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    ).encode()
    file_head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    audio = sample()

    async def body() -> AsyncIterator[bytes]:
        yield (model + file_head) if model_first else file_head
        for start in range(0, len(audio), 64 * 1024):
            await asyncio.sleep(0.01)
            yield audio[start : start + 64 * 1024]
        yield b"\r\n" + (b"" if model_first else model) + f"--{boundary}--\r\n".encode()

    status, document, _ = await post(
        local, body(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert status == 200, document
    assert_heard(document["text"])
    assert no_leaks() == []


async def test_the_english_only_model_says_it_cannot_translate(local: TestServer) -> None:
    status, document, _ = await post(
        local,
        form(("model", "local/tiny.en"), ("file", sample())),
        path="/v1/audio/translations",
    )
    message = assert_error(
        document,
        status=400,
        code="model_cannot_translate",
        param="model",
        request_type="translation",
    )
    assert status == 400
    assert "proxy.local.model_path" in message
    assert "multilingual" in message


async def test_a_translation_the_local_model_cannot_do_falls_back(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["providers"]["local"] = {}
    server = await make_proxy(config)
    status, document, _ = await post(
        server,
        form(
            ("model", "local/tiny.en"),
            ("fallbacks", "openai/whisper-1"),
            ("file", sample()),
        ),
        path="/v1/audio/translations",
    )
    assert status == 200, document
    assert document["extra_fields"]["provider"] == "openai"
    assert document["extra_fields"]["request_type"] == "translation"
    assert upstream.last.path == "/v1/audio/translations"
