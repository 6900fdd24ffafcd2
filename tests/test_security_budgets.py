"""Budgets and limits that hold on every path: fallbacks, long files, lying headers, chunked
bodies, long audio and ``proxy.max_audio_seconds`` (README, "Security").

Each attack is a real request to a real proxy in front of the recording fake
upstream, with real audio files made at run time; what reached the upstream
is checked as well as what the client was told.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.audio.wav_header import wav_header
from tests.helpers.client import URL, ProxyFactory, base_url, form, json_of, post
from tests.helpers.declared_audio import silent_flac, with_xing_frames
from tests.helpers.errors import assert_error
from tests.helpers.metrics import METERED_AUDIO_SECONDS, by_label, scrape
from tests.helpers.upstream import FakeUpstream, ReceivedRequest, provider_config

VK = "sk-bf-budget-0123456789"
BOUNDARY = "budget-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
#: 16 kHz mono 16-bit PCM.
PCM_BYTES_PER_S = 32_000


def keyed(upstream: FakeUpstream, **governance: Any) -> dict[str, Any]:
    """One key on ``openai`` (any model), with ``governance`` added; 1 s reserved by default."""
    config = provider_config(upstream)
    config["governance"] = {
        "virtual_keys": [
            {
                "id": "team",
                "value": VK,
                "provider_configs": [{"provider": "openai", "allowed_models": ["*"]}],
                "budget_id": "b",
            }
        ],
        "reserve_audio_seconds": 1,
        **governance,
    }
    return config


def usd_budget(limit: float) -> list[dict[str, Any]]:
    return [{"id": "b", "max_limit": limit, "reset_duration": "1d"}]


def seconds_budget(limit: float) -> list[dict[str, Any]]:
    return [{"id": "b", "max_limit": limit, "reset_duration": "1d", "unit": "audio_seconds"}]


def wav(seconds: float) -> bytes:
    data = bytes(int(seconds * PCM_BYTES_PER_S))
    return wav_header(len(data)) + data


def reports_seconds(seconds: float) -> Any:
    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        return web.json_response({"text": "x", "usage": {"type": "duration", "seconds": seconds}})

    return respond


async def reports_tokens(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
    """gpt-4o-transcribe's answer: tokens, no seconds (the container's length is settled on)."""
    usage = {"type": "tokens", "input_tokens": 100, "output_tokens": 10, "total_tokens": 110}
    return web.json_response({"text": "x", "usage": usage})


def live_body(
    fields: Sequence[tuple[str, str]], pieces: Sequence[bytes], pause: float = 0.01
) -> AsyncIterator[bytes]:
    """A chunked body (no Content-Length): the fields, then the file a piece at a time."""

    async def generate() -> AsyncIterator[bytes]:
        head = b""
        for name, value in fields:
            head += (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            ).encode()
        yield (
            head
            + (
                f"--{BOUNDARY}\r\n"
                'Content-Disposition: form-data; name="file"; filename="a.bin"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
        )
        for piece in pieces:
            await asyncio.sleep(pause)
            yield piece
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    return generate()


async def post_live(server: TestServer, body: AsyncIterator[bytes]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(server)}{URL}",
            data=body,
            headers={"Content-Type": MULTIPART, "x-bf-vk": VK},
        ) as response,
    ):
        return response.status, json_of(await response.read())


async def send(
    server: TestServer, audio: bytes, *fields: tuple[str, str]
) -> tuple[int, dict[str, Any]]:
    status, body, _ = await post(
        server, form(("model", "whisper-1"), *fields, ("file", audio)), {"x-bf-vk": VK}
    )
    return status, body


# --- 1. fallbacks are priced too ---------------------------------------------------------------


async def test_an_unpriced_primary_cannot_carry_a_priced_fallback_for_free(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def free_model_fails(request: web.Request, received: ReceivedRequest) -> Any:
        if received.field("model") == "free-model":
            return web.json_response({"error": {"message": "down"}}, status=503)
        return web.json_response({"text": "x", "usage": {"type": "duration", "seconds": 2}})

    upstream.respond = free_model_fails
    # whisper-1 at $6 a minute ($0.10 a second), $1.05 to spend: five 2 s answers.
    server = await make_proxy(
        keyed(upstream, budgets=usd_budget(1.05), model_prices={"whisper-1": 6.0})
    )
    statuses = []
    for _ in range(7):
        status, _ = await send_routed(server, "openai/free-model", "openai/whisper-1")
        statuses.append(status)
    # Each is reserved at whisper-1's price (the dearest of its routes) and charged
    # at it, since whisper-1 served it.
    assert statuses == [200, 200, 200, 200, 200, 402, 402]


async def test_the_route_that_served_sets_the_price(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def priced_model_fails(request: web.Request, received: ReceivedRequest) -> Any:
        if received.field("model") == "whisper-1":
            return web.json_response({"error": {"message": "down"}}, status=503)
        return web.json_response({"text": "x", "usage": {"type": "duration", "seconds": 2}})

    upstream.respond = priced_model_fails
    server = await make_proxy(
        keyed(upstream, budgets=usd_budget(1.0), model_prices={"whisper-1": 6.0})
    )
    # The free fallback served each: nothing is charged, though $0.20 was reserved each time.
    for _ in range(7):
        status, _ = await send_routed(server, "openai/whisper-1", "openai/free-model")
        assert status == 200


async def send_routed(server: TestServer, model: str, fallback: str) -> tuple[int, dict[str, Any]]:
    status, body, _ = await post(
        server,
        form(("model", model), ("fallbacks[]", fallback), ("file", wav(2))),
        {"x-bf-vk": VK},
    )
    return status, body


# --- 2. a long file is refused before it is sent --------------------------------------------


async def test_a_file_longer_than_the_budget_is_refused_before_it_is_sent(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.respond = reports_seconds(100)
    # $0.50 at $0.60 a minute is 50 s.
    server = await make_proxy(
        keyed(upstream, budgets=usd_budget(0.5), model_prices={"whisper-1": 0.6})
    )
    status, body = await send(server, wav(100))
    assert status == 402
    assert_error(body, status=402, code="budget_exceeded", error_type="insufficient_quota")
    assert upstream.requests == []
    status, _ = await send(server, wav(20))
    assert status == 200


async def test_a_live_upload_is_refused_on_what_its_header_declares(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.respond = reports_seconds(1000)
    server = await make_proxy(
        keyed(upstream, budgets=usd_budget(0.5), model_prices={"whisper-1": 0.6})
    )
    # A WAV that declares 1000 s, sent as it is made (chunked: no length to go by).
    declares = wav_header(1000 * PCM_BYTES_PER_S)
    pieces = [declares, *[bytes(PCM_BYTES_PER_S)] * 3]
    status, body = await post_live(server, live_body([("model", "whisper-1")], pieces))
    assert status == 402
    assert_error(body, status=402, code="budget_exceeded", error_type="insufficient_quota")
    assert upstream.requests == []


async def test_past_max_audio_seconds_nothing_is_sent(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["proxy"] = {"max_audio_seconds": 60}
    server = await make_proxy(config)
    declares = wav_header(7200 * PCM_BYTES_PER_S)
    status, body = await post_live_anonymous(
        server, live_body([("model", "whisper-1")], [declares, bytes(PCM_BYTES_PER_S)])
    )
    assert status == 413
    assert_error(body, status=413, code="audio_too_long", param="file")
    assert upstream.requests == []
    status, body, _ = await post(server, form(("model", "whisper-1"), ("file", wav(61))))
    assert status == 413
    assert_error(body, status=413, code="audio_too_long", param="file")
    assert upstream.requests == []


async def post_live_anonymous(
    server: TestServer, body: AsyncIterator[bytes]
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(server)}{URL}", data=body, headers={"Content-Type": MULTIPART}
        ) as response,
    ):
        return response.status, json_of(await response.read())


async def test_two_hours_of_flac_silence_in_a_megabyte_are_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.respond = reports_seconds(7200)
    config = keyed(upstream, budgets=usd_budget(0.5), model_prices={"whisper-1": 0.6})
    config["proxy"] = {"max_audio_seconds": 3600}
    server = await make_proxy(config)
    silence = silent_flac(16_000, 7200)
    assert len(silence) < 1_500_000  # its bytes promise a few seconds at most
    status, body = await send(server, silence)
    assert status == 413  # past the server's cap, before the budget is even asked
    assert_error(body, status=413, code="audio_too_long", param="file")
    config["proxy"] = {}
    server = await make_proxy(config)
    status, body = await send(server, silence)
    assert status == 402
    assert_error(body, status=402, code="budget_exceeded", error_type="insufficient_quota")
    assert upstream.requests == []


# --- 3. a header that claims too little ----------------------------------------------------


async def test_an_mp3_whose_xing_header_says_one_frame_is_charged_for_its_bytes(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    spoken = pytest.importorskip("tests.helpers.spoken", reason="PyAV makes the MP3")
    upstream.respond = reports_tokens  # no seconds: the container's length is settled on
    # 60 audio seconds; each file really lasts 30 s, and its bytes hold at least 6 s
    # (at 320 kbit/s, the most an MP3 carries), though its header says 26 ms.
    server = await make_proxy(keyed(upstream, budgets=seconds_budget(60)))
    lying = with_xing_frames(spoken.encode(30, "mp3"), 1)
    floor = len(lying) / 40_000
    assert floor > 6
    statuses = [(await send(server, lying))[0] for _ in range(12)]
    # Charged at least the floor each: the budget runs out long before twelve.
    assert statuses.count(200) <= 60 // floor + 1
    assert statuses[-1] == 402
    # (The floor leaves out the ID3 tag before the audio: a little under len / 40,000.)
    charged = (by_label(await scrape(server), METERED_AUDIO_SECONDS, "source"))["container"]
    assert charged >= statuses.count(200) * floor * 0.99


# --- chunked bodies of unknown length ---------------------------------------------------------


async def test_a_chunked_upload_that_says_nothing_is_covered_as_its_bytes_pass(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.respond = reports_tokens
    # 20 audio seconds; bytes that are no known container count at 192,000 a second.
    server = await make_proxy(keyed(upstream, budgets=seconds_budget(20)))
    piece = bytes(range(256)) * 1024  # 256 KiB, no magic number
    status, body = await post_live(server, live_body([("model", "whisper-1")], [piece] * 32))
    # 8 MiB would be at least 43 s: refused once what passed could hold more than 20 s.
    assert status == 402
    assert_error(body, status=402, code="budget_exceeded", error_type="insufficient_quota")
    assert upstream.requests
    assert not upstream.last.complete  # the upstream never got a whole request to bill
    sent = upstream.last.file.size
    assert 0 < sent <= 20 * 192_000 + len(piece)


# --- long audio ---------------------------------------------------------------------------------


async def test_long_audio_stops_at_max_audio_seconds_before_the_chunk_that_crosses_it(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    spoken = pytest.importorskip("tests.helpers.spoken", reason="PyAV is not installed")
    config = provider_config(upstream)
    config["providers"]["openai"]["max_upload_mb"] = 0.2
    config["proxy"] = {
        "max_audio_seconds": 10,
        "chunking": {"max_chunk_s": 4, "cut_search_s": 0.5, "max_parallel": 1},
    }
    server = await make_proxy(config)
    # Ogg Opus declares no length, and its bytes promise little: only decoding tells.
    recording = spoken.encode(60, "ogg")
    pieces = [recording[i : i + 8192] for i in range(0, len(recording), 8192)]
    status, body = await post_live_anonymous(
        server, live_body([("model", "whisper-1")], pieces, pause=0)
    )
    assert status == 413
    assert_error(body, status=413, code="audio_too_long", param="file")
    # Chunks of 3.5 to 4 s: the two that end by 10 s went, none past it. (The
    # first, whole attempt was abandoned, incomplete, when the upload proved too long.)
    assert len([r for r in upstream.requests if r.complete]) == 2
