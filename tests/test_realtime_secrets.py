"""Client secrets: a browser opens a realtime session with a short-lived ``ek_`` secret
bound to a virtual key, never the key itself."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.helpers.client import ProxyFactory, base_url, form, post
from tests.helpers.errors import assert_error
from tests.helpers.processes import RedisServer, start_proxy_process
from tests.helpers.realtime import session
from tests.helpers.upstream import FakeUpstream, provider_config

VK = "sk-bf-browser-0123456789"
SECRETS = "/v1/realtime/client_secrets"


def governed(upstream: FakeUpstream) -> dict[str, Any]:
    config = provider_config(upstream)
    config["client"] = {"enforce_auth_on_inference": True}
    config["governance"] = {
        "virtual_keys": [
            {
                "id": "browser",
                "value": VK,
                "provider_configs": [
                    {"provider": "openai", "allowed_models": ["whisper-1", "gpt-4o-transcribe"]}
                ],
            }
        ]
    }
    return config


@pytest.fixture
async def strict(make_proxy: ProxyFactory, upstream: FakeUpstream) -> TestServer:
    return await make_proxy(governed(upstream))


async def mint(
    server: TestServer | str, body: Any = None, key: str = VK
) -> tuple[int, dict[str, Any]]:
    url = server if isinstance(server, str) else base_url(server)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}{SECRETS}", json=body, headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        return r.status, await r.json()


def as_subprotocol(secret: str) -> tuple[str, ...]:
    return ("realtime", f"openai-insecure-api-key.{secret}")


async def test_a_secret_opens_a_session_with_the_session_it_was_minted_with(
    strict: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = {
        "expires_after": {"anchor": "created_at", "seconds": 120},
        "session": {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
        },
    }
    status, minted = await mint(strict, body)
    assert status == 200, minted
    secret = minted["value"]
    assert secret.startswith("ek_")
    assert abs(minted["expires_at"] - (time.time() + 120)) < 5
    assert minted["session"]["audio"]["input"]["transcription"]["model"] == "gpt-4o-transcribe"
    async with session(strict, protocols=as_subprotocol(secret)) as client:
        created = client.events[0]["session"]
        assert created["audio"]["input"]["transcription"]["model"] == "gpt-4o-transcribe"
        assert client.ws.protocol == "realtime"
    # As a Bearer token too.
    async with session(strict, headers={"Authorization": f"Bearer {secret}"}):
        pass
    assert secret not in caplog.text  # never logged


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"expires_after": {"anchor": "created_at", "seconds": 5}}, "expires_after.seconds"),
        ({"expires_after": {"anchor": "created_at", "seconds": 7201}}, "expires_after.seconds"),
        ({"expires_after": {"anchor": "now", "seconds": 60}}, "expires_after.anchor"),
        ({"session": {"type": "realtime"}}, "session.type"),
    ],
)
async def test_a_bad_request_for_a_secret_is_a_400(
    strict: TestServer, body: dict[str, Any], param: str
) -> None:
    status, document = await mint(strict, body)
    assert status == 400
    assert document["error"]["param"] == param


async def test_a_secret_can_do_only_what_its_key_may(strict: TestServer) -> None:
    status, document = await mint(
        strict,
        {
            "session": {
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
            }
        },
    )
    assert status == 403
    assert document["error"]["code"] == "model_not_allowed"
    status, _ = await mint(strict, key="sk-bf-nobody-000000000")
    assert status == 401


async def test_a_forged_or_expired_secret_is_a_401_at_the_upgrade(strict: TestServer) -> None:
    for secret in ("ek_forged0123456789", "ek_"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with session(strict, protocols=as_subprotocol(secret)):
                pass
        assert refused.value.status == 401
    status, minted = await mint(strict, {"expires_after": {"anchor": "created_at", "seconds": 10}})
    assert status == 200
    await asyncio.sleep(10.5)
    with pytest.raises(aiohttp.WSServerHandshakeError) as expired:
        async with session(strict, protocols=as_subprotocol(minted["value"])):
            pass
    assert expired.value.status == 401


async def test_a_secret_is_refused_for_an_http_transcription(strict: TestServer) -> None:
    _, minted = await mint(strict)
    status, body, _ = await post(
        strict,
        form(("model", "whisper-1"), ("file", b"RIFF")),
        {"Authorization": f"Bearer {minted['value']}"},
    )
    assert status == 401
    assert_error(
        body, status=401, code="client_secret_not_accepted", error_type="authentication_error"
    )


async def test_any_replica_takes_a_secret_another_minted(
    upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = governed(upstream)
    config["proxy"] = {"redis_url": redis_server.url}
    first, first_url = await start_proxy_process(config, tmp_path, name="a")
    second, second_url = await start_proxy_process(config, tmp_path, name="b")
    try:
        status, minted = await mint(first_url)
        assert status == 200
        async with session(second_url, protocols=as_subprotocol(minted["value"])) as client:
            assert client.events[0]["type"] == "session.created"
    finally:
        for process in (first, second):
            process.terminate()
            await process.wait()
