"""Every error path: its status and its body, in the one documented shape."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from proxy.form import BUFFERED_BODY_BYTES
from tests.helpers.client import URL, ProxyFactory, audio_bytes, base_url, form, json_of, post
from tests.helpers.errors import assert_error
from tests.helpers.processes import free_port
from tests.helpers.upstream import (
    UPSTREAM_KEY,
    FakeUpstream,
    Responder,
    answering,
    hanging,
    provider_config,
    resetting,
)


async def test_missing_file(proxy: TestServer, upstream: FakeUpstream) -> None:
    status, body, _ = await post(proxy, form(("model", "whisper-1")))
    assert status == 400
    message = assert_error(body, status=400, code="missing_required_field", param="file")
    assert message == "file is required"
    assert upstream.requests == []


async def test_missing_model(proxy: TestServer, upstream: FakeUpstream, no_leaks: Any) -> None:
    status, body, _ = await post(proxy, form(("file", b"RIFF"), ("language", "en")))
    assert status == 400
    assert_error(body, status=400, code="missing_required_field", param="model")
    assert upstream.requests == []
    assert no_leaks() == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", "1.5"),
        ("temperature", "-0.1"),
        ("temperature", "warm"),
        ("temperature", "nan"),
        ("response_format", "mp3"),
        ("stream", "yes"),
        ("language", "english please"),
        ("timestamp_granularities[]", "sentence"),
        ("model", " "),
    ],
)
async def test_invalid_field_before_file(
    proxy: TestServer, upstream: FakeUpstream, name: str, value: str
) -> None:
    fields = [("model", "whisper-1")] if name != "model" else []
    status, body, _ = await post(proxy, form(*fields, (name, value), ("file", b"RIFF")))
    assert status == 400
    message = assert_error(body, status=400, code="invalid_value", param=name)
    assert name.rstrip("[]") in message
    assert upstream.requests == []


async def test_invalid_field_after_streaming_file_aborts_upstream(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    # Large enough that the upstream has begun receiving it before the bad
    # field arrives (a small body would be refused before any byte went out).
    status, body, _ = await post(
        proxy, form(("model", "whisper-1"), ("file", b"RIFF" * 100_000), ("temperature", "7"))
    )
    assert status == 400
    assert_error(body, status=400, code="invalid_value", param="temperature")
    # The upstream had the request open; it never saw it completed.
    await asyncio.wait_for(upstream.aborted.wait(), 5)
    assert not upstream.last.complete


@pytest.mark.parametrize(
    ("value", "content_type"),
    [
        ("true", "text/event-stream"),
        ("True", "text/event-stream"),
        ("FALSE", "application/json"),
        ("false", "application/json"),
    ],
)
async def test_stream_accepts_true_false_in_any_case(
    proxy: TestServer, value: str, content_type: str
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{URL}",
            data=form(("model", "whisper-1"), ("stream", value), ("file", b"RIFF")),
        ) as response,
    ):
        assert response.status == 200
        assert response.content_type == content_type


async def test_duplicate_singular_field(proxy: TestServer) -> None:
    status, body, _ = await post(
        proxy, form(("model", "whisper-1"), ("model", "whisper-2"), ("file", b"RIFF"))
    )
    assert status == 400
    assert_error(body, status=400, code="invalid_value", param="model")


@pytest.mark.parametrize("model_first", [True, False])
async def test_two_files(proxy: TestServer, model_first: bool, no_leaks: Any) -> None:
    parts: list[tuple[str, str | bytes]] = [("file", b"RIFF"), ("file", b"RIFF")]
    parts.insert(0 if model_first else 2, ("model", "whisper-1"))
    status, body, _ = await post(proxy, form(*parts))
    assert status == 400
    assert_error(body, status=400, code="invalid_value", param="file")
    assert no_leaks() == []


async def test_not_multipart(proxy: TestServer, upstream: FakeUpstream) -> None:
    status, body, _ = await post(
        proxy, b'{"model": "whisper-1"}', {"Content-Type": "application/json"}
    )
    assert status == 415
    message = assert_error(body, status=415, code="unsupported_media_type")
    assert "application/json" in message


async def test_urlencoded_form_is_not_multipart(proxy: TestServer) -> None:
    status, body, _ = await post(proxy, {"model": "whisper-1"})
    assert status == 415
    assert_error(body, status=415, code="unsupported_media_type")


@pytest.mark.parametrize(
    ("content_type", "payload"),
    [
        ("multipart/form-data", b"--x\r\n\r\n"),  # no boundary parameter
        ("multipart/form-data; boundary=abc", b"this is not multipart at all"),
        (
            "multipart/form-data; boundary=abc",
            b'--abc\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            b"RIFF but the closing boundary never comes",
        ),
        (
            "multipart/form-data; boundary=abc",
            b"--abc\r\nContent-Disposition: form-data\r\n\r\nnameless\r\n--abc--\r\n",
        ),
    ],
    ids=["no-boundary", "garbage", "truncated", "nameless-part"],
)
async def test_malformed_multipart(
    proxy: TestServer, upstream: FakeUpstream, content_type: str, payload: bytes
) -> None:
    status, body, _ = await post(proxy, payload, {"Content-Type": content_type})
    assert status == 400
    assert_error(body, status=400, code="malformed_multipart")
    for request in upstream.requests:
        assert not request.complete


async def test_base64_transfer_encoding_refused(proxy: TestServer) -> None:
    payload = (
        b'--abc\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nUklGRg==\r\n--abc--\r\n"
    )
    status, body, _ = await post(
        proxy, payload, {"Content-Type": "multipart/form-data; boundary=abc"}
    )
    assert status == 400
    assert_error(body, status=400, code="malformed_multipart", param="file")


async def test_too_many_fields(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    config = provider_config(upstream)
    config["proxy"] = {"max_fields": 3}
    server = await make_proxy(config)
    parts = [("model", "whisper-1"), *[("include[]", str(i)) for i in range(3)]]
    status, body, _ = await post(server, form(*parts, ("file", b"RIFF")))
    assert status == 400
    assert_error(body, status=400, code="too_many_fields", param="include[]")


async def test_field_too_large(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    config = provider_config(upstream)
    config["proxy"] = {"max_field_bytes": 1000}
    server = await make_proxy(config)
    status, body, _ = await post(
        server, form(("model", "whisper-1"), ("prompt", "x" * 1001), ("file", b"RIFF"))
    )
    assert status == 400
    assert_error(body, status=400, code="field_too_large", param="prompt")


async def test_field_not_utf8(proxy: TestServer) -> None:
    payload = (
        b'--abc\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n\xff\xfe\r\n--abc--\r\n'
    )
    status, body, _ = await post(
        proxy, payload, {"Content-Type": "multipart/form-data; boundary=abc"}
    )
    assert status == 400
    assert_error(body, status=400, code="invalid_value", param="prompt")


async def test_declared_length_over_limit_refused_unread(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["client"] = {"max_request_body_size_mb": 1}
    server = await make_proxy(config)
    status, body, headers = await post(
        server, form(("model", "whisper-1"), ("file", b"\0" * (2 * 1024 * 1024)))
    )
    assert status == 413
    assert_error(body, status=413, code="request_too_large")
    assert headers.get("Connection") == "close"
    assert upstream.requests == []


@pytest.mark.parametrize("model_first", [True, False])
async def test_chunked_upload_cut_off_as_soon_as_it_crosses_the_limit(
    make_proxy: ProxyFactory, upstream: FakeUpstream, model_first: bool, no_leaks: Any
) -> None:
    config = provider_config(upstream)
    config["client"] = {"max_request_body_size_mb": 1}
    server = await make_proxy(config)
    model = b'--abc\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    file_head = b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    reader, writer = await asyncio.open_connection(server.host, server.port)
    sent = 0
    try:
        writer.write(
            f"POST {URL} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=abc\r\n\r\n".encode()
        )
        head = (model + file_head) if model_first else file_head
        writer.write(b"%x\r\n%s\r\n" % (len(head), head))
        answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        piece = b"\0" * 65536
        # Keep sending, without ever ending the body, until the proxy answers.
        while not answer.done() and sent < 64 * 1024 * 1024:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            sent += len(piece)
            await asyncio.sleep(0)
        status_line = await asyncio.wait_for(answer, 5)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413")
    assert b"Connection: close" in status_line
    # Answered near the limit, not after reading everything the client had.
    assert sent < 8 * 1024 * 1024
    if model_first:
        await asyncio.wait_for(upstream.aborted.wait(), 5)
    assert not any(r.complete for r in upstream.requests)
    await asyncio.sleep(0.05)
    assert no_leaks() == []


async def test_upstream_4xx_passed_through(proxy: TestServer, upstream: FakeUpstream) -> None:
    upstream.respond = answering(
        400,
        {
            "error": {
                "message": "Audio file might be corrupted or unsupported",
                "type": "invalid_request_error",
                "param": "file",
                "code": "invalid_value",
            }
        },
    )
    status, body, _ = await post(proxy, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 400
    message = assert_error(body, status=400, code="invalid_value", param="file")
    assert message == "Audio file might be corrupted or unsupported"
    assert body["extra_fields"]["provider"] == "openai"
    assert body["extra_fields"]["model_requested"] == "whisper-1"


async def test_upstream_error_raises_the_right_sdk_exception(
    sdk: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    upstream.respond = answering(
        401,
        {
            "error": {
                "message": f"Incorrect API key provided: {UPSTREAM_KEY}.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
                "param": None,
            }
        },
    )
    with pytest.raises(openai.AuthenticationError) as raised:
        await sdk.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF"))
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"
    assert UPSTREAM_KEY not in str(raised.value.body)
    assert UPSTREAM_KEY not in raised.value.message


async def test_upstream_429_keeps_retry_after(proxy: TestServer, upstream: FakeUpstream) -> None:
    upstream.respond = answering(
        429,
        {"error": {"message": "Rate limit reached", "type": "requests", "code": None}},
        headers={"Retry-After": "7"},
    )
    status, body, headers = await post(proxy, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 429
    assert_error(body, status=429, code="upstream_error", error_type="requests")
    assert headers["Retry-After"] == "7"


async def test_upstream_5xx_with_plain_text_body(proxy: TestServer, upstream: FakeUpstream) -> None:
    upstream.respond = answering(503, b"upstream overloaded, try later", "text/plain")
    status, body, _ = await post(proxy, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 503
    message = assert_error(body, status=503, code="upstream_error", error_type="api_error")
    assert message == "upstream overloaded, try later"


async def test_upstream_fastapi_detail_message(proxy: TestServer, upstream: FakeUpstream) -> None:
    upstream.respond = answering(404, {"detail": "Model not installed"})
    status, body, _ = await post(proxy, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 404
    assert assert_error(body, status=404, code="upstream_error") == "Model not installed"


async def test_upstream_unreachable(make_proxy: ProxyFactory, no_leaks: Any) -> None:
    server = await make_proxy(
        {
            "providers": {
                "openai": {
                    "keys": [{"value": UPSTREAM_KEY}],
                    "network_config": {"base_url": f"http://127.0.0.1:{free_port()}"},
                }
            }
        }
    )
    orders: list[list[tuple[str, str | bytes]]] = [
        [("model", "whisper-1"), ("file", b"RIFF")],
        [("file", b"RIFF"), ("model", "whisper-1")],
    ]
    for parts in orders:
        status, body, _ = await post(server, form(*parts))
        assert status == 502
        message = assert_error(
            body, status=502, code="bad_gateway", error_type="api_error", bifrost=True
        )
        assert "unreachable" in message
    assert no_leaks() == []


async def test_upstream_timeout(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    upstream.respond = hanging(5)
    server = await make_proxy(provider_config(upstream, default_request_timeout_in_seconds=0.2))
    status, body, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 504
    assert_error(
        body, status=504, code="upstream_timeout", error_type="timeout_error", bifrost=True
    )


@pytest.mark.parametrize(
    "answer",
    [
        answering(200, b"{not json", "application/json"),
        answering(200, b"[1, 2]", "application/json"),
        answering(200, b"\x89PNG", "image/png"),
    ],
    ids=["broken-json", "json-array", "binary"],
)
async def test_upstream_garbage(
    proxy: TestServer, upstream: FakeUpstream, answer: Responder
) -> None:
    upstream.respond = answer
    status, body, _ = await post(proxy, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 502
    assert_error(body, status=502, code="bad_gateway", error_type="api_error", bifrost=True)


async def test_upstream_hangs_up_without_answer(proxy: TestServer, upstream: FakeUpstream) -> None:
    upstream.respond = resetting()  # before any answer
    status, body, _ = await post(proxy, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 502
    assert_error(body, status=502, code="bad_gateway", error_type="api_error", bifrost=True)


async def test_no_provider_configured(make_proxy: ProxyFactory) -> None:
    server = await make_proxy({})
    status, body, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 503
    assert_error(body, status=503, code="no_provider", error_type="api_error", bifrost=True)


async def test_bare_model_with_several_providers_and_no_openai(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    provider = provider_config(upstream)["providers"]["openai"]
    server = await make_proxy(
        {
            "providers": {
                "groq": {**provider, "custom_provider_config": {"base_provider_type": "openai"}},
                "vllm": {**provider, "custom_provider_config": {"base_provider_type": "openai"}},
            }
        }
    )
    status, body, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 400
    message = assert_error(body, status=400, code="model_not_found", param="model")
    assert "groq" in message
    assert "vllm" in message
    status, _, _ = await post(server, form(("model", "vllm/whisper-1"), ("file", b"RIFF")))
    assert status == 200


async def test_unknown_path_and_wrong_method(proxy: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url(proxy)}/v1/nothing-here") as response:
            assert response.status == 404
            assert_error(json_of(await response.read()), status=404, code="not_found")
        async with session.get(f"{base_url(proxy)}{URL}") as response:
            assert response.status == 405
            assert_error(json_of(await response.read()), status=405, code="method_not_allowed")
            assert "POST" in response.headers["Allow"]


async def test_unknown_expectation(proxy: TestServer, upstream: FakeUpstream) -> None:
    status, body, _ = await post(
        proxy, form(("model", "whisper-1"), ("file", b"RIFF")), {"Expect": "something-else"}
    )
    assert status == 417
    assert_error(body, status=417, code="expectation_failed")
    assert upstream.requests == []


async def test_spool_failure_is_a_clear_503(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Any
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    config = provider_config(upstream)
    config["proxy"] = {"spool_dir": str(spool_dir)}
    server = await make_proxy(config)
    spool_dir.rmdir()  # gone after start-up, as when a volume is unmounted
    # Larger than a body taken whole from aiohttp's buffer: it must be spooled.
    audio = audio_bytes(BUFFERED_BODY_BYTES + 1)
    status, body, _ = await post(server, form(("file", audio), ("model", "whisper-1")))
    assert status == 503
    message = assert_error(
        body, status=503, code="spool_unavailable", error_type="api_error", bifrost=True
    )
    assert "model before file" in message
    # Streaming needs no spool and still works.
    status, _, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 200
