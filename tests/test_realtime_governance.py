"""Realtime sessions are governed from their first byte: credentials at the upgrade, model
permissions on every update, limits and budgets as the audio is appended."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.helpers.client import ProxyFactory
from tests.helpers.errors import assert_error
from tests.helpers.realtime import (
    PATH,
    TRANSCRIPTION,
    refused_upgrade,
    session,
    tone,
    transcription,
)
from tests.helpers.upstream import FakeUpstream, provider_config

VK = "sk-bf-realtime-0123456789"
AZURE_PATH = "/openai/realtime?api-version=2025-04-01-preview&intent=transcription"


def governed(
    upstream: FakeUpstream, *, key: dict[str, Any] | None = None, **more: Any
) -> dict[str, Any]:
    config = provider_config(upstream)
    config["client"] = {"enforce_auth_on_inference": True}
    config["governance"] = {
        "virtual_keys": [
            {
                "id": "team",
                "value": VK,
                "provider_configs": [{"provider": "openai", "allowed_models": ["whisper-1"]}],
                **(key or {}),
            },
            {"id": "retired", "value": "sk-bf-retired-000000", "is_active": False},
        ],
        **more,
    }
    config["proxy"] = {"realtime": {"vad": "loudness", "reserve_step_s": 1}}
    return config


@pytest.fixture
async def strict(make_proxy: ProxyFactory, upstream: FakeUpstream) -> TestServer:
    return await make_proxy(governed(upstream))


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_credentials"),
        ({"Authorization": "Bearer sk-bf-unknown-0000000"}, 401, None),
        ({"x-bf-vk": "sk-bf-retired-000000"}, 403, None),
    ],
)
async def test_a_refused_credential_is_an_http_error_never_a_session(
    strict: TestServer, headers: dict[str, str], status: int, code: str | None
) -> None:
    got, body, _ = await refused_upgrade(strict, headers=headers)
    assert got == status
    assert body["error"]["type"] == {401: "authentication_error", 403: "permission_error"}[status]
    assert "sk-bf" not in body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "headers", "protocols"),
    [
        (PATH, {"Authorization": f"Bearer {VK}"}, ("realtime",)),
        (PATH, {}, ("realtime", f"openai-insecure-api-key.{VK}", "openai-beta.realtime-v1")),
        (f"{PATH}&api-key={VK}", {}, ("realtime",)),
        (
            f"/openai/realtime?api-version=2025-04-01-preview&intent=transcription&api-key={VK}",
            {},
            (),
        ),
    ],
    ids=["bearer", "subprotocol", "query", "azure-path"],
)
async def test_credentials_a_browser_can_send_open_a_session(
    strict: TestServer, path: str, headers: dict[str, str], protocols: tuple[str, ...]
) -> None:
    async with session(strict, path=path, headers=headers, protocols=protocols) as client:
        if protocols:
            assert client.ws.protocol == "realtime"  # never the key


async def test_a_model_the_key_may_not_use_is_refused_at_the_upgrade_and_on_update(
    strict: TestServer, upstream: FakeUpstream
) -> None:
    status, body, _ = await refused_upgrade(
        strict, path=f"{PATH}&model=gpt-4o-transcribe", headers={"x-bf-vk": VK}
    )
    assert status == 403
    assert_error(
        body,
        status=403,
        code="model_not_allowed",
        error_type="permission_error",
        param="model",
        request_type="realtime",
    )
    async with session(strict, headers={"x-bf-vk": VK}) as client:
        await client.send(
            {
                "type": "session.update",
                "event_id": "evt_upd",
                "session": transcription("gpt-4o-transcribe", turn_detection=None),
            }
        )
        (error,) = await client.wait_for("error")
        assert error["error"]["code"] == "model_not_allowed"
        assert error["error"]["event_id"] == "evt_upd"
        assert not client.of("session.updated")  # nothing applied, not even the detection
        await client.stream(tone(0.3) + bytes(48000) * 2)
        await client.wait_for(f"{TRANSCRIPTION}.completed")  # server_vad still on: a turn
    assert [r.field("model") for r in upstream.requests] == ["whisper-1"]


async def test_a_session_is_one_request_for_request_limits(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(
        governed(
            upstream,
            key={"rate_limit_id": "rl"},
            rate_limits=[{"id": "rl", "request_max_limit": 1, "request_reset_duration": "1h"}],
        )
    )
    async with session(server, headers={"x-bf-vk": VK}) as client:
        await client.stream(tone(0.5))
        status, body, headers = await refused_upgrade(server, headers={"x-bf-vk": VK})
    assert status == 429
    assert_error(
        body,
        status=429,
        code="rate_limit_exceeded",
        error_type="rate_limit_error",
        request_type="realtime",
    )
    assert int(headers["Retry-After"]) > 0


@pytest.mark.parametrize("spent", ["audio_limit", "budget"])
async def test_spent_audio_seconds_end_the_session_with_1008(
    make_proxy: ProxyFactory, upstream: FakeUpstream, spent: str
) -> None:
    if spent == "audio_limit":
        more: dict[str, Any] = {
            "rate_limits": [
                {"id": "rl", "audio_seconds_max_limit": 3, "audio_seconds_reset_duration": "1h"}
            ]
        }
        key = {"rate_limit_id": "rl"}
        code = "rate_limit_exceeded"
    else:
        more = {
            "budgets": [
                {"id": "b", "max_limit": 3, "reset_duration": "1d", "unit": "audio_seconds"}
            ]
        }
        key = {"budget_id": "b"}
        code = "budget_exceeded"
    server = await make_proxy(governed(upstream, key=key, reserve_audio_seconds=1, **more))
    async with session(server, headers={"x-bf-vk": VK}) as client:
        await client.stream(tone(6.0))
        (error,) = await client.wait_for("error")
        await client.closed.wait()
        assert client.ws.close_code == 1008
    assert error["error"]["code"] == code
