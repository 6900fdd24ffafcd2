"""What an operator relies on: metrics, request ids, logs, drain, overload and slow clients."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.form import BUFFERED_BODY_BYTES
from tests.helpers.client import URL, ProxyFactory, base_url, form, post
from tests.helpers.errors import assert_error
from tests.helpers.metrics import scrape, value
from tests.helpers.processes import start_proxy_process
from tests.helpers.upstream import UPSTREAM_KEY, FakeUpstream, ReceivedRequest, provider_config


async def test_metrics_move_as_requests_are_made(proxy: TestServer, upstream: FakeUpstream) -> None:
    before = await scrape(proxy)
    # Larger than a body taken whole from aiohttp's buffer: streamed, then spooled.
    audio = b"\1" * (BUFFERED_BODY_BYTES + 1)
    await post(proxy, form(("model", "whisper-1"), ("file", audio)))
    await post(proxy, form(("file", audio), ("model", "whisper-1")))  # spooled
    await post(proxy, form(("model", "whisper-1"), ("temperature", "9"), ("file", b"x")))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{URL}",
            data=form(("model", "whisper-1"), ("stream", "true"), ("file", b"RIFF")),
        ) as response,
    ):
        await response.read()
    after = await scrape(proxy)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"route": "/v1/audio/transcriptions"}
    # A model the config does not name is counted as "other", never as sent.
    assert (
        grew("proxy_requests_total", **route, provider="openai", model="other", status="200") == 3
    )
    assert grew("proxy_requests_total", **route, provider="other", model="other", status="400") == 1
    assert grew("proxy_request_duration_seconds_count", **route) == 4
    assert grew("proxy_audio_bytes_in_total") == 2 * len(audio) + 4
    assert grew("proxy_audio_bytes_out_total", provider="openai") == 2 * len(audio) + 4
    assert grew("proxy_spool_bytes_total") == len(audio)
    assert grew("proxy_sse_events_total") == 2  # one delta, one done
    assert grew("proxy_upstream_ttfb_seconds_count", provider="openai") == 3
    assert value(after, "proxy_active_uploads") == 0
    assert value(after, "proxy_open_streams") == 0
    assert value(after, "proxy_requests_in_flight") == 0
    assert value(after, "process_open_fds") > 0
    assert value(after, "proxy_asyncio_tasks") > 0


async def test_metrics_count_retries_and_fallbacks(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    from tests.helpers.upstream import failing, two_providers

    upstream.respond = failing(503)
    server = await make_proxy(two_providers(upstream, backup, max_retries=1))
    status, _, _ = await post(
        server, form(("model", "whisper-1"), ("fallbacks[]", "backup/whisper-1"), ("file", b"RIFF"))
    )
    assert status == 200
    samples = await scrape(server)
    assert value(samples, "proxy_retries_total", provider="openai") == 1
    assert value(samples, "proxy_fallbacks_total", provider="openai") == 1


async def test_no_credential_in_metrics_or_logs(
    proxy: TestServer, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    status, document, _ = await post(
        proxy,
        form(("model", "sk-bf-looks-like-a-key"), ("file", b"RIFF")),
        {"Authorization": "Bearer sk-client-secret"},
    )
    assert status == 400
    assert_error(document, status=400, code="credential_in_model", param="model")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(proxy)}/metrics") as response,
    ):
        text = await response.text()
    # The request was logged, so what is checked below is what a log reader sees.
    (access,) = [
        r for r in caplog.records if r.name == "proxy.access" and r.__dict__["route"] == URL
    ]
    assert access.__dict__["status"] == 400
    logged = "\n".join(str(r.__dict__) for r in caplog.records)
    for secret in (UPSTREAM_KEY, "sk-client-secret", "sk-bf-looks-like-a-key"):
        assert secret not in text
        assert secret not in logged


REQUEST_ID = re.compile(r"[0-9a-f]{32}")


async def test_request_id_round_trip(proxy: TestServer, upstream: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"x-request-id": "client-id-42"}
        async with session.post(
            f"{base_url(proxy)}{URL}",
            data=form(("model", "whisper-1"), ("file", b"RIFF")),
            headers=headers,
        ) as response:
            assert response.headers["x-request-id"] == "client-id-42"
        assert upstream.last.headers["x-request-id"] == "client-id-42"
        async with session.post(
            f"{base_url(proxy)}{URL}", data=form(("file", b"RIFF")), headers=headers
        ) as response:
            assert response.status == 400
            assert response.headers["x-request-id"] == "client-id-42"
        async with session.post(
            f"{base_url(proxy)}{URL}",
            data=form(("model", "whisper-1"), ("stream", "true"), ("file", b"RIFF")),
            headers={"x-request-id": "stream-id"},
        ) as response:
            assert response.content_type == "text/event-stream"
            assert response.headers["x-request-id"] == "stream-id"
        for sent in (None, "has spaces in it", "x" * 200):
            async with session.get(
                f"{base_url(proxy)}/health", headers={"x-request-id": sent} if sent else {}
            ) as response:
                assert REQUEST_ID.fullmatch(response.headers["x-request-id"])


async def test_access_log_line(
    proxy: TestServer, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    await post(
        proxy,
        form(("model", "whisper-1"), ("file", b"RIFF" * 100)),
        {"x-request-id": "log-me"},
    )
    (record,) = [r for r in caplog.records if r.name == "proxy.access"]
    assert record.route == "/v1/audio/transcriptions"  # type: ignore[attr-defined]
    assert record.status == 200  # type: ignore[attr-defined]
    assert record.provider == "openai"  # type: ignore[attr-defined]
    assert record.bytes_in == 400  # type: ignore[attr-defined]
    assert record.bytes_out > 0  # type: ignore[attr-defined]
    assert record.latency_ms >= 0  # type: ignore[attr-defined]
    from proxy.logs import JsonFormatter, RequestIdFilter

    record.request_id = "log-me"
    line = orjson.loads(JsonFormatter().format(record))
    assert line["request_id"] == "log-me"
    assert line["logger"] == "proxy.access"
    assert line["status"] == 200
    assert "heard" not in str(line)  # no transcript text
    assert RequestIdFilter().filter(record)


def slow_upload_config(upstream: FakeUpstream, **proxy: Any) -> dict[str, Any]:
    config = provider_config(upstream)
    config["proxy"] = proxy
    return config


async def open_upload(server: TestServer) -> asyncio.StreamWriter:
    """A request whose body has begun and then stalls."""
    _, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 100000\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        '--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'.encode()
    )
    await writer.drain()
    return writer


async def test_in_flight_cap_refuses_before_reading(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(slow_upload_config(upstream, max_in_flight=2))
    holders = [await open_upload(server) for _ in range(2)]
    await asyncio.sleep(0.1)
    status, body, headers = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 503
    assert_error(body, status=503, code="overloaded", error_type="api_error", bifrost=True)
    assert headers["Retry-After"] == "1"
    for writer in holders:
        writer.transport.abort()
    await asyncio.sleep(0.1)
    status, _, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 200


async def test_a_slow_drip_client_is_cut_and_its_slot_freed(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(
        slow_upload_config(upstream, max_in_flight=1, body_idle_timeout_s=0.3)
    )
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 100000\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'.encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 408")
    writer.close()
    status, _, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 200


def slow_stream(deltas: int, interval: float) -> Any:
    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(deltas):
            await response.write(b'data: {"type":"transcript.text.delta","delta":"w "}\n\n')
            await asyncio.sleep(interval)
        await response.write(b'data: {"type":"transcript.text.done","text":"done"}\n\n')
        return response

    return respond


async def read_stream(url: str, started: asyncio.Event) -> list[bytes]:
    frames = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}{URL}",
            data=form(("model", "gpt-4o-transcribe"), ("stream", "true"), ("file", b"RIFF")),
        ) as response,
    ):
        async for line in response.content:
            if line.startswith(b"data: "):
                frames.append(line.strip())
                started.set()
    return frames


@pytest.mark.parametrize(
    ("deltas", "drain", "finishes"), [(6, 5.0, True), (100, 0.5, False)], ids=["within", "cut"]
)
async def test_sigterm_drains_open_streams(
    upstream: FakeUpstream, tmp_path: Path, deltas: int, drain: float, finishes: bool
) -> None:
    upstream.respond = slow_stream(deltas, 0.1)
    config = provider_config(upstream)
    config["proxy"] = {"drain_timeout_s": drain}
    process, url = await start_proxy_process(config, tmp_path)
    started = asyncio.Event()
    reading = asyncio.create_task(read_stream(url, started))
    await asyncio.wait_for(started.wait(), 10)
    process.send_signal(signal.SIGTERM)
    frames = await asyncio.wait_for(reading, drain + 10)
    assert await asyncio.wait_for(process.wait(), drain + 10) == 0
    assert frames[-1] == b"data: [DONE]"
    last = orjson.loads(frames[-2][6:])
    if finishes:
        assert last["type"] == "transcript.text.done"
        assert len(frames) == deltas + 2
    else:
        assert last["error"]["code"] == "shutting_down"
        assert len(frames) < deltas
    log_lines = (tmp_path / "proxy.log").read_text().splitlines()
    access = [orjson.loads(line) for line in log_lines if '"proxy.access"' in line]
    assert access
    assert access[-1]["route"] == "/v1/audio/transcriptions"


async def test_workers_share_the_port(upstream: FakeUpstream, tmp_path: Path) -> None:
    process, url = await start_proxy_process(provider_config(upstream), tmp_path, "--workers", "2")
    async with aiohttp.ClientSession() as session:
        for _ in range(6):
            async with session.post(
                f"{url}{URL}", data=form(("model", "whisper-1"), ("file", b"RIFF"))
            ) as response:
                assert response.status == 200
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_a_stop_signal_while_workers_start_stops_them_cleanly(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    # The first worker answers while the other may still be starting: the signal the
    # supervisor passes on must stop that one too, not kill it.
    for _ in range(3):
        process, _ = await start_proxy_process(
            provider_config(upstream), tmp_path, "--workers", "2"
        )
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_a_request_leaves_no_reference_cycle_behind(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    """What a request holds (its body among it) goes when the request ends, not whenever
    the garbage collector next walks the oldest generation: under load, that is memory."""

    big = form(("model", "whisper-1"), ("file", b"A" * 3_000_000))
    raw = await big.as_bytes()

    async def streamed() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 64 * 1024):
            yield raw[start : start + 64 * 1024]
            await asyncio.sleep(0)

    async def requests() -> None:
        small = form(("model", "whisper-1"), ("file", b"RIFF" * 100))
        status, _, _ = await post(proxy, small)  # whole: parsed in one pass, file in memory
        assert status == 200
        headers = {"Content-Type": f"multipart/form-data; boundary={big.boundary}"}
        status, _, _ = await post(proxy, streamed(), headers)  # a live upload, read as it came
        assert status == 200

    await requests()  # warm: what is made once is made
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            await requests()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        ours = sorted({type(o).__qualname__ for o in gc.garbage if _of_the_proxy(o)})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert ours == []


def _of_the_proxy(thing: object) -> bool:
    module = getattr(type(thing), "__module__", "") or ""
    if module.startswith("proxy."):
        return True
    code = getattr(thing, "gi_code", None) or getattr(thing, "ag_code", None)
    return code is not None and "/proxy/" in code.co_filename


async def test_sigterm_keeps_reading_a_body_still_arriving(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """An upload begun before SIGTERM completes; new connections are refused, a request
    on a kept-alive connection is answered ``Connection: close``, readiness is 503,
    and the process exits as soon as the upload is answered."""
    config = provider_config(upstream)
    config["proxy"] = {"drain_timeout_s": 20}
    process, url = await start_proxy_process(config, tmp_path)
    audio = bytes(range(256)) * 4096  # 1 MiB
    sent_half = asyncio.Event()

    async def paced() -> AsyncIterator[bytes]:
        boundary = "drain-test"
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        for k in range(16):
            if k == 8:
                sent_half.set()
            yield audio[k * 65536 : (k + 1) * 65536]
            await asyncio.sleep(0.1)
        yield f"\r\n--{boundary}--\r\n".encode()

    async def upload() -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "multipart/form-data; boundary=drain-test"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}{URL}", data=paced(), headers=headers) as response,
        ):
            return response.status, await response.json()

    async with aiohttp.ClientSession() as kept_alive:
        async with kept_alive.get(f"{url}/health/ready") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ready"
        uploading = asyncio.create_task(upload())
        await asyncio.wait_for(sent_half.wait(), 10)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        # The same kept-alive connection: told it is not ready, and to go away.
        async with kept_alive.get(f"{url}/health/ready") as response:
            assert response.status == 503
            assert (await response.json())["status"] == "draining"
            assert response.headers["Connection"] == "close"
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as fresh, fresh.get(f"{url}/health") as response:
            pass
    status, document = await asyncio.wait_for(uploading, 15)
    answered = time.monotonic()
    assert status == 200, document
    assert document["text"] == f"heard {len(audio)} bytes"
    assert upstream.last.complete
    assert await asyncio.wait_for(process.wait(), 10) == 0
    assert time.monotonic() - answered < 3  # not the drain timeout's 20 s


@pytest.mark.parametrize(("fail_open", "status"), [(False, 503), (True, 200)])
async def test_readiness_needs_the_redis_limits_depend_on(
    make_proxy: ProxyFactory, upstream: FakeUpstream, fail_open: bool, status: int
) -> None:
    pytest.importorskip("redis", reason="the redis extra is not installed")
    config = provider_config(upstream)
    # A port nothing listens on: Redis is down.
    config["proxy"] = {"redis_url": "redis://127.0.0.1:9/0", "redis_fail_open": fail_open}
    config["governance"] = {
        "virtual_keys": [{"id": "team", "value": "sk-bf-team-000000001", "rate_limit_id": "r"}],
        "rate_limits": [{"id": "r", "request_max_limit": 10, "request_reset_duration": "1m"}],
    }
    server = await make_proxy(config)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url(server)}/health/ready") as response:
            assert response.status == status
            expected = "ready" if status == 200 else "redis_unreachable"
            assert (await response.json())["status"] == expected
        async with session.get(f"{base_url(server)}/health/live") as response:
            assert response.status == 200


async def test_readiness_without_limits_does_not_hang_on_redis(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    pytest.importorskip("redis", reason="the redis extra is not installed")
    config = provider_config(upstream)
    config["proxy"] = {"redis_url": "redis://127.0.0.1:9/0", "cache": {"store": "redis"}}
    server = await make_proxy(config)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(server)}/health/ready") as response,
    ):
        # Nothing is limited: a cache without its store is only a miss.
        assert response.status == 200
