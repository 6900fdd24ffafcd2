"""Slow and greedy clients cannot starve the others (README, "Security").

A body dripped just inside the idle timeout is cut at the whole-body deadline;
only transcription work holds one of ``proxy.max_in_flight``'s slots; one
virtual key cannot hold them all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from tests.helpers.client import URL, ProxyFactory, base_url, form, json_of, post
from tests.helpers.errors import assert_error
from tests.helpers.upstream import FakeUpstream, provider_config

BOUNDARY = "slow-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
KEY_A = "sk-bf-team-a-0123456789"
KEY_B = "sk-bf-team-b-0123456789"


def dripped(every_s: float, pieces: int) -> AsyncIterator[bytes]:
    """A form whose file arrives a byte every ``every_s`` seconds: inside any idle timeout."""

    async def generate() -> AsyncIterator[bytes]:
        yield (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        for _ in range(pieces):
            await asyncio.sleep(every_s)
            yield b"x"
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    return generate()


async def send_dripped(
    server: TestServer, body: AsyncIterator[bytes], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(server)}{URL}",
            data=body,
            headers={"Content-Type": MULTIPART, **(headers or {})},
        ) as response,
    ):
        return response.status, json_of(await response.read())


def two_keys(upstream: FakeUpstream, **proxy: Any) -> dict[str, Any]:
    config = provider_config(upstream)
    config["governance"] = {
        "virtual_keys": [
            {
                "id": key_id,
                "value": value,
                "provider_configs": [{"provider": "openai", "allowed_models": ["*"]}],
            }
            for key_id, value in (("team-a", KEY_A), ("team-b", KEY_B))
        ]
    }
    config["proxy"] = proxy
    return config


async def test_a_body_dripped_inside_the_idle_timeout_is_cut_at_the_deadline(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["proxy"] = {
        "body_idle_timeout_s": 5,
        "body_deadline_s": 0.6,
        "body_min_bytes_per_s": 500,
    }
    server = await make_proxy(config)
    started = time.monotonic()
    status, body = await send_dripped(server, dripped(0.1, 100))
    took = time.monotonic() - started
    assert status == 408
    assert_error(body, status=408, code="request_body_too_slow")
    assert took < 3  # never the 10 s the drip would take, nor the 5 s idle timeout
    assert not any(r.complete for r in upstream.requests)


async def test_a_client_secret_mint_holds_no_transcription_slot(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["proxy"] = {"max_in_flight": 1, "body_idle_timeout_s": 5}
    server = await make_proxy(config)
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        # A mint that declares 100 bytes and sends 1, held open.
        writer.write(
            b"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        status, _, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
        assert status == 200
    finally:
        writer.close()


async def test_one_key_cannot_take_every_slot(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(two_keys(upstream, max_in_flight_per_key=2, max_in_flight=10))
    holding = [
        asyncio.ensure_future(send_dripped(server, dripped(0.3, 3), {"x-bf-vk": KEY_A}))
        for _ in range(2)
    ]
    await asyncio.sleep(0.2)
    status, body, headers = await post(
        server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": KEY_A}
    )
    assert status == 429
    assert_error(
        body, status=429, code="too_many_requests_in_flight", error_type="rate_limit_error"
    )
    assert headers["Retry-After"] == "1"
    status, _, _ = await post(
        server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": KEY_B}
    )
    assert status == 200
    assert [status for status, _ in await asyncio.gather(*holding)] == [200, 200]
    # Their slots are given back.
    status, _, _ = await post(
        server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": KEY_A}
    )
    assert status == 200
