"""Who may call, what they may use, and how much: virtual keys, JWTs, limits, budgets, Redis."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.audio.wav_header import wav_header
from tests.helpers.client import URL, ProxyFactory, base_url, form, post
from tests.helpers.errors import assert_error
from tests.helpers.metrics import METERED_AUDIO_SECONDS, by_label, scrape
from tests.helpers.processes import RedisServer, start_proxy_process
from tests.helpers.upstream import UPSTREAM_KEY, FakeUpstream, ReceivedRequest, provider_config

VK = "sk-bf-team-a-0123456789"
SECRET = "jwt-test-secret-with-enough-length-for-hs256"


def governed(upstream: FakeUpstream, **governance: Any) -> dict[str, Any]:
    config = provider_config(upstream)
    config["governance"] = {
        "virtual_keys": [
            {
                "id": "team-a",
                "value": VK,
                "provider_configs": [{"provider": "openai", "allowed_models": ["whisper-1"]}],
            },
            {"id": "retired", "value": "sk-bf-retired-000000", "is_active": False},
            {
                "id": "nothing",
                "value": "sk-bf-nothing-0000000",
                "provider_configs": [{"provider": "openai", "allowed_models": []}],
            },
        ],
        **governance,
    }
    return config


@pytest.fixture
async def strict(make_proxy: ProxyFactory, upstream: FakeUpstream) -> TestServer:
    config = governed(upstream)
    config["client"] = {"enforce_auth_on_inference": True}
    return await make_proxy(config)


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"user:{password}".encode()).decode()


@pytest.mark.parametrize(
    "headers",
    [
        {"x-bf-vk": VK},
        {"Authorization": f"Bearer {VK}"},
        {"x-api-key": VK},
        {"api-key": VK},
        {"Authorization": basic(VK)},
    ],
    ids=["x-bf-vk", "bearer", "x-api-key", "api-key", "basic"],
)
async def test_every_credential_form_is_accepted(
    strict: TestServer, upstream: FakeUpstream, headers: dict[str, str]
) -> None:
    status, body, _ = await post(strict, form(("model", "whisper-1"), ("file", b"RIFF")), headers)
    assert status == 200, body
    # Our key goes upstream, never the client's.
    assert upstream.last.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


async def test_the_sdks_with_a_virtual_key(strict: TestServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{base_url(strict)}/v1", api_key=VK, max_retries=0
    ) as client:
        result = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"R"))
    assert result.text == "heard 1 bytes"
    # The Azure SDK's api-key header is taken too: past the credential check, its
    # deployment route wants the azure provider this config does not have.
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=base_url(strict), api_key=VK, api_version="2024-10-21", max_retries=0
    ) as azure:
        with pytest.raises(openai.NotFoundError) as refused:
            await azure.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"R"))
    assert refused.value.code == "azure_not_configured"


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer sk-not-ours"}, 401, "invalid_api_key"),
        ({"x-bf-vk": "sk-bf-unknown-1234567"}, 401, "invalid_api_key"),
        ({"x-bf-vk": "sk-bf-retired-000000"}, 403, "key_inactive"),
        ({"Authorization": "Basic !!!"}, 401, "invalid_api_key"),
    ],
    ids=["none", "foreign-bearer", "unknown-vk", "inactive", "bad-basic"],
)
async def test_rejections(
    strict: TestServer, upstream: FakeUpstream, headers: dict[str, str], status: int, code: str
) -> None:
    got, body, _ = await post(strict, form(("model", "whisper-1"), ("file", b"RIFF")), headers)
    assert got == status
    error_type = "authentication_error" if status == 401 else "permission_error"
    message = assert_error(body, status=status, code=code, error_type=error_type)
    for secret in headers.values():
        assert secret not in message
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("key", "model", "named"),
    [
        (VK, "gpt-4o-transcribe", "gpt-4o-transcribe"),
        (VK, "backup/whisper-1", "backup"),
        ("sk-bf-nothing-0000000", "whisper-1", "whisper-1"),
    ],
)
async def test_models_and_providers_not_allowed(
    make_proxy: ProxyFactory, upstream: FakeUpstream, key: str, model: str, named: str
) -> None:
    config = governed(upstream)
    config["providers"]["backup"] = {
        **config["providers"]["openai"],
        "custom_provider_config": {"base_provider_type": "openai"},
    }
    server = await make_proxy(config)
    status, body, _ = await post(
        server, form(("model", model), ("file", b"RIFF")), {"x-bf-vk": key}
    )
    assert status == 403
    message = assert_error(
        body, status=403, code="model_not_allowed", param="model", error_type="permission_error"
    )
    assert named in message
    assert upstream.requests == []


async def test_refused_before_the_body_is_sent(strict: TestServer) -> None:
    reader, writer = await asyncio.open_connection(strict.host, strict.port)
    try:
        writer.write(
            f"POST {URL} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 999999\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 401")


async def test_without_auth_configured_any_placeholder_key_is_fine(proxy: TestServer) -> None:
    status, _, _ = await post(
        proxy, form(("model", "whisper-1"), ("file", b"RIFF")), {"Authorization": "Bearer x"}
    )
    assert status == 200


def token(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"exp": now + 60, **claims}, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("make_token", "status", "code"),
    [
        (lambda: token(vk="team-a", aud="proxy"), 200, None),
        (lambda: token(role="admin", aud="proxy"), 200, None),
        (lambda: token(vk="team-a", aud="proxy", exp=int(time.time()) - 5), 401, "token_expired"),
        (
            lambda: token(vk="team-a", aud="proxy", nbf=int(time.time()) + 60),
            401,
            "token_not_yet_valid",
        ),
        (lambda: token(vk="team-a", aud="someone-else"), 401, "invalid_audience"),
        (
            lambda: jwt.encode(
                {"exp": int(time.time()) + 60, "vk": "team-a", "aud": "proxy"},
                "another-secret-of-enough-length-for-hs256",
                algorithm="HS256",
            ),
            401,
            "invalid_token",
        ),
        (lambda: token(aud="proxy"), 403, "permission_denied"),
    ],
    ids=["vk", "admin", "expired", "not-yet", "audience", "signature", "no-claims"],
)
async def test_jwt(
    make_proxy: ProxyFactory, upstream: FakeUpstream, make_token: Any, status: int, code: str | None
) -> None:
    config = governed(upstream, jwt={"hs256_secret": SECRET, "audience": "proxy"})
    config["client"] = {"enforce_auth_on_inference": True}
    server = await make_proxy(config)
    got, body, _ = await post(
        server,
        form(("model", "whisper-1"), ("file", b"RIFF")),
        {"Authorization": f"Bearer {make_token()}"},
    )
    assert got == status, body
    if code is not None:
        error_type = "authentication_error" if status == 401 else "permission_error"
        assert_error(body, status=status, code=code, error_type=error_type)


async def test_rs256_jwt(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    config = governed(upstream, jwt={"rs256_public_key": public.decode()})
    server = await make_proxy(config)
    signed = jwt.encode({"exp": int(time.time()) + 60, "vk": "team-a"}, private, algorithm="RS256")
    status, _, _ = await post(
        server,
        form(("model", "whisper-1"), ("file", b"RIFF")),
        {"Authorization": f"Bearer {signed}"},
    )
    assert status == 200
    hs = token(vk="team-a")  # an algorithm not configured
    status, _, _ = await post(
        server, form(("model", "whisper-1"), ("file", b"RIFF")), {"Authorization": f"Bearer {hs}"}
    )
    assert status == 401


async def test_direct_keys_are_forwarded_when_allowed(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["client"] = {"allow_direct_keys": True}
    server = await make_proxy(config)
    await post(
        server, form(("model", "whisper-1"), ("file", b"RIFF")), {"Authorization": "Bearer sk-mine"}
    )
    assert upstream.last.headers["Authorization"] == "Bearer sk-mine"


async def test_rate_limit(make_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    config = governed(
        upstream,
        rate_limits=[{"id": "rl", "request_max_limit": 2, "request_reset_duration": "1m"}],
    )
    config["governance"]["virtual_keys"][0]["rate_limit_id"] = "rl"
    server = await make_proxy(config)
    statuses = []
    for _ in range(3):
        status, body, headers = await post(
            server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": VK}
        )
        statuses.append(status)
    assert statuses == [200, 200, 429]
    assert_error(body, status=429, code="rate_limit_exceeded", error_type="rate_limit_error")
    assert 0 < int(headers["Retry-After"]) <= 60


async def statuses_in_turn(server: TestServer, count: int, audio: bytes = b"RIFF") -> list[int]:
    """The statuses of ``count`` requests sent one after another on the team's key."""
    statuses = []
    for _ in range(count):
        status, _, _ = await post(
            server, form(("model", "whisper-1"), ("file", audio)), {"x-bf-vk": VK}
        )
        statuses.append(status)
    return statuses


def reports_seconds(seconds: float, delay: float = 0.2) -> Any:
    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        await asyncio.sleep(delay)
        return web.json_response({"text": "x", "usage": {"type": "duration", "seconds": seconds}})

    return respond


@pytest.mark.parametrize(
    ("budget", "prices"),
    [
        ({"id": "b", "max_limit": 100, "reset_duration": "1d", "unit": "audio_seconds"}, {}),
        ({"id": "b", "max_limit": 0.01, "reset_duration": "1M"}, {"whisper-1": 0.006}),
    ],
    ids=["audio-seconds", "usd"],
)
async def test_a_budget_is_not_overshot_by_concurrent_requests(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    budget: dict[str, Any],
    prices: dict[str, float],
) -> None:
    # 100 audio seconds (or 0.01 USD at 0.006 a minute: 100 s), 30 s reserved
    # per request, each really 30 s long.
    upstream.respond = reports_seconds(30)
    config = governed(upstream, budgets=[budget], model_prices=prices, reserve_audio_seconds=30)
    config["governance"]["virtual_keys"][0]["budget_id"] = "b"
    server = await make_proxy(config)
    results = await asyncio.gather(
        *(
            post(server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": VK})
            for _ in range(8)
        )
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 200, 200, 402, 402, 402, 402, 402]
    refused = next(body for status, body, _ in results if status == 402)
    assert_error(refused, status=402, code="budget_exceeded", error_type="insufficient_quota")
    # 90 s used: the next 30 s request would pass the limit.
    status, _, _ = await post(
        server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": VK}
    )
    assert status == 402
    assert len(upstream.requests) == 3


# --- Redis ---------------------------------------------------------------------------------


async def send(url: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}{URL}",
            data=form(("model", "whisper-1"), ("file", b"RIFF")),
            headers={"x-bf-vk": VK},
        ) as response,
    ):
        return response.status


async def test_two_proxy_processes_share_one_limit(
    upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = governed(
        upstream,
        rate_limits=[{"id": "rl", "request_max_limit": 5, "request_reset_duration": "1h"}],
    )
    config["governance"]["virtual_keys"][0]["rate_limit_id"] = "rl"
    config["proxy"] = {"redis_url": redis_server.url}
    first, first_url = await start_proxy_process(config, tmp_path, name="one")
    second, second_url = await start_proxy_process(config, tmp_path, name="two")
    try:
        statuses = [await send(url) for url in [first_url, second_url] * 4]
    finally:
        for process in (first, second):
            process.terminate()
            await process.wait()
    assert statuses.count(200) == 5
    assert statuses[5:] == [429, 429, 429]


@pytest.mark.parametrize("fail_open", [False, True])
async def test_redis_stopped_and_restarted(
    make_proxy: ProxyFactory, upstream: FakeUpstream, redis_server: RedisServer, fail_open: bool
) -> None:
    config = governed(
        upstream,
        rate_limits=[{"id": "rl", "request_max_limit": 100, "request_reset_duration": "1h"}],
    )
    config["governance"]["virtual_keys"][0]["rate_limit_id"] = "rl"
    config["proxy"] = {"redis_url": redis_server.url, "redis_fail_open": fail_open}
    server = await make_proxy(config)
    url = base_url(server)
    assert await send(url) == 200
    await redis_server.stop()
    down, body, _ = await post(
        server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": VK}
    )
    if fail_open:
        assert down == 200
    else:
        assert down == 503
        assert_error(
            body, status=503, code="governance_unavailable", error_type="api_error", bifrost=True
        )
    await redis_server.start()  # the same port: the proxy reconnects by itself
    assert await send(url) == 200


async def test_models_lists_only_what_the_key_may_use(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = governed(upstream)
    config["providers"]["openai"]["keys"][0]["models"] = ["whisper-1", "gpt-4o-transcribe"]
    server = await make_proxy(config)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(server)}/v1/models", headers={"x-bf-vk": VK}) as response,
    ):
        ids = [m["id"] for m in (await response.json())["data"]]
    assert ids == ["openai/whisper-1"]


async def test_audio_is_metered_from_a_wav_header_when_the_answer_says_nothing(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def no_usage(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        return web.json_response({"text": "no usage reported"})

    upstream.respond = no_usage
    config = governed(
        upstream,
        budgets=[{"id": "b", "max_limit": 20, "reset_duration": "1d", "unit": "audio_seconds"}],
        reserve_audio_seconds=1,
    )
    config["governance"]["virtual_keys"][0]["budget_id"] = "b"
    server = await make_proxy(config)
    sample = (Path(__file__).parent / "data" / "sample.wav").read_bytes()
    statuses = await statuses_in_turn(server, 4, sample)
    # 9.08 s each, reserved whole before it is sent (its header says how long it
    # is): the third would take the total to 27.2 s, past 20, and is refused.
    assert statuses == [200, 200, 402, 402]


async def test_a_request_that_fails_after_admission_gives_its_reservation_back(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    upstream.respond = reports_seconds(30, delay=0)
    config = governed(
        upstream,
        budgets=[{"id": "b", "max_limit": 60, "reset_duration": "1d", "unit": "audio_seconds"}],
        reserve_audio_seconds=30,
    )
    config["governance"]["virtual_keys"][0]["budget_id"] = "b"
    config["providers"]["backup"] = {
        **config["providers"]["openai"],
        "custom_provider_config": {"base_provider_type": "openai"},
    }
    config["governance"]["virtual_keys"][0]["provider_configs"].append(
        {"provider": "backup", "allowed_models": ["*"]}
    )
    config["proxy"] = {"spool_dir": str(spool_dir)}
    server = await make_proxy(config)
    spool_dir.rmdir()
    for _ in range(3):
        status, _, _ = await post(
            server,
            form(
                ("model", "whisper-1"),
                ("fallbacks[]", "backup/whisper-1"),
                ("file", b"RIFF" * 400_000),
            ),
            {"x-bf-vk": VK},
        )
        assert status == 503
    spool_dir.mkdir()
    statuses = await statuses_in_turn(server, 3)
    assert statuses == [200, 200, 402]  # the failed ones cost nothing


def reports_tokens(audio: int, text: int, output: int) -> Any:
    """gpt-4o-transcribe's ``json`` answer: token usage, no seconds, no duration."""

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        usage = {
            "type": "tokens",
            "input_tokens": audio + text,
            "input_token_details": {"audio_tokens": audio, "text_tokens": text},
            "output_tokens": output,
            "total_tokens": audio + text + output,
        }
        return web.json_response({"text": "x", "usage": usage})

    return respond


async def test_a_budget_priced_by_the_token_settles_on_the_answers_tokens(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    # USD per million tokens; each answer: 1000 audio tokens ($0.006), 50 prompt
    # tokens ($0.000125), 100 output tokens ($0.001): $0.007125. Reserved before
    # it: 30 s at 10 audio and 3 text tokens a second, $0.0027.
    upstream.respond = reports_tokens(1000, 50, 100)
    prices = {
        "openai/whisper-1": {
            "input_audio_tokens": 6.0,
            "input_text_tokens": 2.5,
            "output_text_tokens": 10.0,
        }
    }
    budget = {"id": "b", "max_limit": 0.01, "reset_duration": "1d"}
    config = governed(upstream, budgets=[budget], model_prices=prices, reserve_audio_seconds=30)
    config["governance"]["virtual_keys"][0]["budget_id"] = "b"
    server = await make_proxy(config)
    statuses = await statuses_in_turn(server, 3)
    # $0.007125 spent after one; the second is admitted at $0.009825 and
    # settles to $0.01425; the third is refused.
    assert statuses == [200, 200, 402]


async def test_an_answer_without_seconds_settles_on_the_containers_length(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.respond = reports_tokens(1000, 0, 10)
    budget = {"id": "b", "max_limit": 20, "reset_duration": "1d", "unit": "audio_seconds"}
    config = governed(upstream, budgets=[budget], reserve_audio_seconds=1)
    config["governance"]["virtual_keys"][0]["budget_id"] = "b"
    server = await make_proxy(config)
    sample = (Path(__file__).parent / "data" / "sample.wav").read_bytes()  # 9.08 s
    statuses = await statuses_in_turn(server, 4, sample)
    assert statuses == [200, 200, 402, 402]
    seconds = by_label(await scrape(server), METERED_AUDIO_SECONDS, "source")
    assert abs(seconds["container"] - 2 * 9.08) < 0.05
    assert "answer" not in seconds


async def test_a_wav_header_that_lies_settles_on_what_was_sent(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.respond = reports_tokens(1000, 0, 10)
    server = await make_proxy(governed(upstream))
    two_seconds = bytes(2 * 16000 * 2)
    claims_an_hour = wav_header(3600 * 16000 * 2) + two_seconds
    status, _, _ = await post(
        server, form(("model", "whisper-1"), ("file", claims_an_hour)), {"x-bf-vk": VK}
    )
    assert status == 200
    metered = by_label(await scrape(server), METERED_AUDIO_SECONDS, "source")
    assert abs(metered["container"] - 2.0) < 0.05


async def test_an_unknown_container_settles_on_the_reservation(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.respond = reports_tokens(1000, 0, 10)
    server = await make_proxy(governed(upstream, reserve_audio_seconds=7))
    status, _, _ = await post(
        server, form(("model", "whisper-1"), ("file", b"not audio at all")), {"x-bf-vk": VK}
    )
    assert status == 200
    assert by_label(await scrape(server), METERED_AUDIO_SECONDS, "source") == {"reservation": 7.0}


@pytest.mark.parametrize("fmt", ["wav", "mp3", "ogg", "flac", "m4a"])
async def test_every_container_settles_on_its_own_length(
    make_proxy: ProxyFactory, upstream: FakeUpstream, fmt: str
) -> None:
    spoken = pytest.importorskip("tests.helpers.spoken", reason="PyAV is not installed")
    upstream.respond = reports_tokens(1000, 0, 10)
    server = await make_proxy(governed(upstream))
    data = spoken.encode(7, fmt)
    status, _, _ = await post(
        server,
        form(("model", "whisper-1"), ("file", data), filename=f"talk.{fmt}"),
        {"x-bf-vk": VK},
    )
    assert status == 200
    metered = by_label(await scrape(server), METERED_AUDIO_SECONDS, "source")
    assert abs(metered["container"] - 7.0) < 0.05
