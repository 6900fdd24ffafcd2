"""Retries, fallbacks and replayable uploads, against real failing upstreams."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.helpers.client import URL, ProxyFactory, base_url, form, json_of, post
from tests.helpers.errors import assert_error
from tests.helpers.processes import open_files_under
from tests.helpers.upstream import (
    FakeUpstream,
    ReceivedRequest,
    failing,
    resetting,
    transcript_json,
    two_providers,
)

MIB = 1024 * 1024
BOUNDARY = "fallback-test-boundary"


def streamed_body(
    audio: bytes, *, model_first: bool, fallbacks: str, after_file: Sequence[tuple[str, str]] = ()
) -> AsyncIterator[bytes]:
    """The form, dribbled out in pieces, so that the proxy streams it through; with
    ``after_file``, fields that follow the file."""

    def part(name: str, value: str) -> bytes:
        return (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()

    file_head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="long.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    head = part("model", "whisper-1") + part("fallbacks[]", fallbacks)

    async def generate() -> AsyncIterator[bytes]:
        yield (head + file_head) if model_first else file_head
        for start in range(0, len(audio), 256 * 1024):
            yield audio[start : start + 256 * 1024]
            await asyncio.sleep(0)
        rest = b"".join(part(name, value) for name, value in after_file)
        yield b"\r\n" + (b"" if model_first else head) + rest + f"--{BOUNDARY}--\r\n".encode()

    return generate()


async def send(server: TestServer, body: AsyncIterator[bytes]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(server)}{URL}",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        ) as response,
    ):
        return response.status, json_of(await response.read())


PRIMARY_FAILURES = {
    "500": lambda upstream: setattr(upstream, "respond", failing(500)),
    "429": lambda upstream: setattr(upstream, "respond", failing(429, {"Retry-After": "0"})),
    "drop-mid-body": lambda upstream: setattr(upstream, "drop_after", MIB),
}


@pytest.mark.parametrize("model_first", [True, False], ids=["streamed", "spooled"])
@pytest.mark.parametrize("failure", list(PRIMARY_FAILURES))
async def test_fallback_serves_a_byte_exact_copy(
    make_proxy: ProxyFactory,
    aiohttp_server: Any,
    backup: FakeUpstream,
    failure: str,
    model_first: bool,
    no_leaks: Any,
) -> None:
    primary = FakeUpstream()
    PRIMARY_FAILURES[failure](primary)
    primary.server = await aiohttp_server(primary.app)
    server = await make_proxy(two_providers(primary, backup))
    audio = hashlib.sha256(b"x").digest() * (6 * MIB // 32)
    status, document = await send(
        server, streamed_body(audio, model_first=model_first, fallbacks="backup/whisper-1")
    )
    assert status == 200, document
    received = backup.last
    assert received.file.sha256 == hashlib.sha256(audio).hexdigest()
    assert received.names == ["model", "file"] if model_first else ["model", "file"]
    assert received.headers["Authorization"] == "Bearer sk-backup"
    extra = document["extra_fields"]
    assert extra["provider"] == "backup"
    assert extra["model_deployment"] == "whisper-1"
    assert [a["provider"] for a in extra["attempts"]] == ["openai", "backup"]
    assert extra["attempts"][-1]["status"] == 200
    assert no_leaks() == []


async def test_fields_after_a_streamed_file_reach_the_fallback_in_a_whole_body(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    """curl's order with a field after the file: the replay to the fallback declares a
    Content-Length, which must count that field as well as the file."""
    upstream.respond = failing(500)
    server = await make_proxy(two_providers(upstream, backup))
    audio = hashlib.sha256(b"y").digest() * (2 * MIB // 32)
    body = streamed_body(
        audio, model_first=True, fallbacks="backup/whisper-1", after_file=[("language", "de")]
    )
    status, document = await send(server, body)
    assert status == 200, document
    received = backup.last
    assert received.complete
    assert received.names == ["model", "file", "language"]
    assert received.field("language") == "de"
    assert received.file.sha256 == hashlib.sha256(audio).hexdigest()
    assert int(received.headers["Content-Length"]) > len(audio)


async def test_retries_are_counted_at_the_upstream(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    answers = [500, 503]

    async def flaky(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        if answers:
            return await failing(answers.pop(0))(request, received)
        return await transcript_json(request, received)

    upstream.respond = flaky
    server = await make_proxy(two_providers(upstream, backup, max_retries=2))
    audio = bytes(range(256)) * (3 * MIB // 256)
    status, document = await send(
        server, streamed_body(audio, model_first=True, fallbacks="backup/whisper-1")
    )
    assert status == 200, document
    assert len(upstream.requests) == 3
    assert all(r.file.sha256 == hashlib.sha256(audio).hexdigest() for r in upstream.requests)
    assert backup.requests == []
    assert document["extra_fields"]["provider"] == "openai"
    assert [a["status"] for a in document["extra_fields"]["attempts"]] == [500, 503, 200]


async def test_long_retry_after_moves_on_to_the_fallback(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    upstream.respond = failing(429, {"Retry-After": "3600"})
    server = await make_proxy(two_providers(upstream, backup, max_retries=3))
    started = time.monotonic()
    status, document, _ = await post(
        server,
        form(("model", "whisper-1"), ("fallbacks", '["backup/whisper-1"]'), ("file", b"RIFF")),
    )
    assert status == 200
    assert time.monotonic() - started < 5
    assert len(upstream.requests) == 1
    assert document["extra_fields"]["provider"] == "backup"


async def test_all_failing_answers_with_the_primary_error_and_the_attempts(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    upstream.respond = failing(503)
    backup.respond = failing(500)
    server = await make_proxy(two_providers(upstream, backup, max_retries=1))
    status, body, _ = await post(
        server,
        form(("model", "whisper-1"), ("fallbacks[]", "backup/whisper-1"), ("file", b"RIFF")),
    )
    assert status == 503
    message = assert_error(body, status=503, code="upstream_error", error_type="server_error")
    assert message == "primary says 503"
    assert [(a["provider"], a["status"]) for a in body["extra_fields"]["attempts"]] == [
        ("openai", 503),
        ("openai", 503),
        ("backup", 500),
    ]


async def test_a_bad_request_is_not_retried_or_passed_on(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    server = await make_proxy(two_providers(upstream, backup, max_retries=2))
    status, body, _ = await post(
        server,
        form(
            ("model", "whisper-1"),
            ("fallbacks[]", "backup/whisper-1"),
            ("file", b"RIFF" * 300_000),
            ("temperature", "9"),
        ),
    )
    assert status == 400
    assert_error(body, status=400, code="invalid_value", param="temperature")
    assert backup.requests == []


async def test_streaming_falls_back_only_before_its_first_event(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    upstream.respond = resetting(
        b'data: {"type":"transcript.text.delta","delta":"Hel"}\n\n',
        content_type="text/event-stream",
        # Long enough for the delta to reach the client before the drop
        # (a drop in the same instant discards it unread).
        linger_s=0.2,
    )
    server = await make_proxy(two_providers(upstream, backup, max_retries=2))
    async with openai.AsyncOpenAI(
        base_url=f"{base_url(server)}/v1", api_key="x", max_retries=0
    ) as client:
        stream = await client.audio.transcriptions.create(
            model="gpt-4o-transcribe",
            file=("a.wav", b"RIFF"),
            stream=True,
            extra_body={"fallbacks": ["backup/gpt-4o-transcribe"]},
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    assert len(upstream.requests) == 1
    assert backup.requests == []


async def test_a_request_that_cannot_be_retried_touches_no_disk(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream, tmp_path: Path
) -> None:
    seen: list[list[str]] = []

    async def look(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        seen.append(open_files_under(str(tmp_path)))
        return await transcript_json(request, received)

    upstream.respond = look
    server = await make_proxy(two_providers(upstream, backup, spool_dir=tmp_path))
    audio = b"\1" * (4 * MIB)
    status, _ = await send(server, streamed_body(audio, model_first=True, fallbacks=""))
    assert status == 200
    # With a fallback, the same upload is recorded while it streams.
    status, _ = await send(
        server, streamed_body(audio, model_first=True, fallbacks="backup/whisper-1")
    )
    assert status == 200
    assert seen[0] == []
    assert len(seen[1]) == 1
    assert open_files_under(str(tmp_path)) == []
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240


async def test_past_the_spool_cap_the_error_says_it_could_not_be_replayed(
    make_proxy: ProxyFactory, aiohttp_server: Any, backup: FakeUpstream, tmp_path: Path
) -> None:
    primary = FakeUpstream()
    primary.respond = failing(502)
    primary.server = await aiohttp_server(primary.app)
    config = two_providers(primary, backup)
    config["proxy"] = {"max_spool_mb": 1}
    server = await make_proxy(config)
    status, body = await send(
        server, streamed_body(b"\0" * (3 * MIB), model_first=True, fallbacks="backup/whisper-1")
    )
    # The primary's own error, saying why no fallback was tried.
    assert status == 502
    message = assert_error(body, status=502, code="upstream_error", error_type="server_error")
    assert message.startswith("primary says 502")
    assert "spool limit" in message
    assert backup.requests == []
    assert primary.last.complete  # the upload still streamed through in full


async def test_gigabyte_upload_with_a_failing_primary_keeps_memory_flat(
    make_proxy: ProxyFactory, aiohttp_server: Any, backup: FakeUpstream, no_leaks: Any
) -> None:
    primary = FakeUpstream()
    primary.drop_after = 700 * MIB
    primary.server = await aiohttp_server(primary.app)
    config = two_providers(primary, backup)
    config["client"] = {"max_request_body_size_mb": 2048}
    config["proxy"] = {"max_spool_mb": 2048}
    server = await make_proxy(config)
    size = 1024 * MIB
    digest = hashlib.sha256()
    block = hashlib.sha256(b"gig").digest() * (MIB // 32)

    def part(name: str, value: str) -> bytes:
        return (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()

    async def body() -> AsyncIterator[bytes]:
        yield part("model", "whisper-1") + part("fallbacks[]", "backup/whisper-1")
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        ).encode()
        for index in range(size // MIB):
            piece = index.to_bytes(8, "big") + block[8:]
            digest.update(piece)
            yield piece
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    Path("/proc/self/clear_refs").write_text("5")  # noqa: ASYNC240 (resets the peak RSS)
    before = _rss_mib("VmRSS")
    status, document = await send(server, body())
    peak = _rss_mib("VmHWM")
    assert status == 200, document
    assert backup.last.file.size == size
    assert backup.last.file.sha256 == digest.hexdigest()
    # The client, the proxy and both upstreams share this process: a gigabyte
    # held anywhere would show. What flat looks like is measured in
    # scripts/bench_upload.py; this only proves nothing buffers the upload.
    assert peak - before < 128, f"peak RSS grew by {peak - before:.0f} MiB"
    assert no_leaks() == []


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


async def test_fallbacks_must_name_configured_providers(proxy: TestServer) -> None:
    status, body, _ = await post(
        proxy, form(("model", "whisper-1"), ("fallbacks", '["nowhere/x", 3]'), ("file", b"RIFF"))
    )
    assert status == 400
    assert_error(body, status=400, code="invalid_value", param="fallbacks")


async def test_fallback_never_reaches_the_upstream_as_a_field(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    server = await make_proxy(two_providers(upstream, backup))
    status, _, _ = await post(
        server,
        form(("model", "whisper-1"), ("fallbacks", '["backup/whisper-1"]'), ("file", b"RIFF")),
    )
    assert status == 200
    assert "fallbacks" not in upstream.last.names
