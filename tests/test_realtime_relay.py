"""Realtime sessions relayed to a provider's own Realtime API (a fake one that records)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from openai.types.realtime import ConversationItemInputAudioTranscriptionCompletedEvent

from tests.helpers.client import ProxyFactory, base_url
from tests.helpers.realtime import TRANSCRIPTION, append, session, tone
from tests.helpers.realtime_upstream import FakeRealtimeUpstream, relay_config
from tests.helpers.upstream import UPSTREAM_KEY

VK = "sk-bf-relay-0123456789"


@pytest.fixture
async def relay(make_proxy: ProxyFactory, realtime_upstream: FakeRealtimeUpstream) -> TestServer:
    return await make_proxy(relay_config(realtime_upstream))


def update(model: str) -> dict[str, Any]:
    return {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": model}}},
        },
    }


async def test_frames_are_relayed_both_ways_and_only_the_model_is_rewritten(
    relay: TestServer, realtime_upstream: FakeRealtimeUpstream
) -> None:
    async with session(relay, headers={"Authorization": "Bearer sk-client-own"}) as client:
        assert client.events[0]["event_id"] == "event_up"  # the upstream's own session.created
        await client.send(update("openai/gpt-4o-transcribe"))
        await client.wait_for("session.updated")
        first = append(tone(0.1))
        await client.send(first)
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_c"})
        (completed,) = await client.wait_for(f"{TRANSCRIPTION}.completed")
        assert completed["transcript"] == "relayed"
        await client.send({"type": "bad"})
        (error,) = await client.wait_for("error")
        assert error["error"]["message"] == "no"  # the upstream's error, unchanged
    seen = realtime_upstream.last
    assert seen.path == "/v1/realtime"
    assert seen.query == {"intent": "transcription"}
    assert seen.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"  # ours, never the client's
    events = seen.events()
    assert events[0]["session"]["audio"]["input"]["transcription"]["model"] == "gpt-4o-transcribe"
    # Everything but the model passes as it was sent, byte for byte.
    assert seen.frames[1] == orjson.dumps(first).decode()
    assert (
        seen.frames[2]
        == orjson.dumps({"type": "input_audio_buffer.commit", "event_id": "evt_c"}).decode()
    )
    await asyncio.wait_for(seen.closed.wait(), 5)  # the client left: the upstream is closed


async def test_a_model_the_key_may_not_use_is_refused_and_not_forwarded(
    make_proxy: ProxyFactory, realtime_upstream: FakeRealtimeUpstream
) -> None:
    config = relay_config(realtime_upstream)
    config["governance"] = {
        "virtual_keys": [
            {
                "id": "k",
                "value": VK,
                "provider_configs": [
                    {"provider": "openai", "allowed_models": ["whisper-1", "gpt-4o-transcribe"]}
                ],
            }
        ]
    }
    server = await make_proxy(config)
    async with session(server, headers={"x-bf-vk": VK}) as client:
        await client.send({**update("gpt-4o-mini-transcribe"), "event_id": "evt_u"})
        (error,) = await client.wait_for("error")
        assert error["error"]["code"] == "model_not_allowed"
        assert error["error"]["event_id"] == "evt_u"
        await client.send(update("gpt-4o-transcribe"))
        await client.wait_for("session.updated")
    models = [
        e["session"]["audio"]["input"]["transcription"]["model"]
        for e in realtime_upstream.last.events()
        if e["type"] == "session.update"
    ]
    assert models == ["gpt-4o-transcribe"]


@pytest.mark.parametrize(
    ("status", "headers"), [(401, {}), (403, {}), (404, {}), (429, {"Retry-After": "7"})]
)
async def test_an_upstream_refusal_is_the_clients_http_error_before_its_upgrade(
    relay: TestServer,
    realtime_upstream: FakeRealtimeUpstream,
    status: int,
    headers: dict[str, str],
) -> None:
    realtime_upstream.refuse = (status, headers)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with session(relay):
            pass
    assert refused.value.status == status
    if headers:
        assert refused.value.headers is not None
        assert refused.value.headers["Retry-After"] == "7"


async def test_an_upstream_that_cannot_be_reached_is_a_502(
    make_proxy: ProxyFactory, realtime_upstream: FakeRealtimeUpstream
) -> None:
    config = relay_config(realtime_upstream)
    config["providers"]["openai"]["network_config"]["base_url"] = "http://127.0.0.1:9"
    server = await make_proxy(config)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with session(server):
            pass
    assert refused.value.status == 502


async def test_an_upstream_closing_mid_session_ends_it_with_the_same_code(
    relay: TestServer, realtime_upstream: FakeRealtimeUpstream
) -> None:
    realtime_upstream.close_after = (2, 1011)
    async with session(relay) as client:
        await client.send(append(tone(0.1)))
        await client.send(append(tone(0.1)))
        (error,) = await client.wait_for("error")
        await client.closed.wait()
    assert error["error"]["code"] == "upstream_closed"
    assert client.ws.close_code == 1011


@pytest.mark.parametrize(
    ("api_version", "path", "query"),
    [
        ("2024-10-21", "/openai/v1/realtime", {"intent": "transcription"}),
        (
            "2025-04-01-preview",
            "/openai/realtime",
            {
                "api-version": "2025-04-01-preview",
                "intent": "transcription",
                "deployment": "my-transcribe",
            },
        ),
    ],
    ids=["ga", "preview"],
)
async def test_azure_sessions_go_to_azures_own_url_forms(
    make_proxy: ProxyFactory,
    realtime_upstream: FakeRealtimeUpstream,
    api_version: str,
    path: str,
    query: dict[str, str],
) -> None:
    key = {
        "value": "azure-secret-key",
        "azure_key_config": {
            "endpoint": realtime_upstream.base_url,
            "deployments": {"gpt-4o-transcribe": "my-transcribe"},
            "api_version": api_version,
        },
    }
    server = await make_proxy({"providers": {"azure": {"keys": [key]}}})
    async with session(
        server,
        path="/openai/realtime?api-version=2099-01-01&intent=transcription&deployment=gpt-4o-transcribe",
    ) as client:
        await client.send(update("gpt-4o-transcribe"))
        await client.wait_for("session.updated")
    seen = realtime_upstream.last
    assert seen.path == path
    assert seen.query == query
    assert seen.headers["api-key"] == "azure-secret-key"
    assert "Authorization" not in seen.headers
    sent = seen.events()[0]["session"]["audio"]["input"]["transcription"]["model"]
    assert sent == "my-transcribe"  # the deployment


async def test_relayed_audio_is_metered_as_it_passes(
    make_proxy: ProxyFactory, realtime_upstream: FakeRealtimeUpstream
) -> None:
    config = relay_config(realtime_upstream)
    config["governance"] = {
        "virtual_keys": [
            {
                "id": "k",
                "value": VK,
                "rate_limit_id": "rl",
                "provider_configs": [{"provider": "openai", "allowed_models": ["*"]}],
            }
        ],
        "rate_limits": [
            {"id": "rl", "audio_seconds_max_limit": 2, "audio_seconds_reset_duration": "1h"}
        ],
        "reserve_audio_seconds": 1,
    }
    config["proxy"] = {"realtime": {"reserve_step_s": 1}}
    server = await make_proxy(config)
    async with session(server, headers={"x-bf-vk": VK}) as client:
        for _ in range(5):
            await client.send(append(tone(1.0)))
        (error,) = await client.wait_for("error")
        await client.closed.wait()
    assert error["error"]["code"] == "rate_limit_exceeded"
    assert client.ws.close_code == 1008
    await asyncio.wait_for(realtime_upstream.last.closed.wait(), 5)
    assert len(realtime_upstream.last.frames) <= 3  # what came after the limit never went up


async def test_the_openai_sdk_realtime_client_through_the_relay(
    relay: TestServer, realtime_upstream: FakeRealtimeUpstream
) -> None:
    async with (
        openai.AsyncOpenAI(base_url=f"{base_url(relay)}/v1", api_key="sk-x", max_retries=0) as sdk,
        sdk.realtime.connect(extra_query={"intent": "transcription"}) as connection,
    ):
        await connection.input_audio_buffer.append(audio=base64.b64encode(tone(0.2)).decode())
        await connection.input_audio_buffer.commit()
        async for event in connection:
            if isinstance(event, ConversationItemInputAudioTranscriptionCompletedEvent):
                assert event.transcript == "relayed"
                break
    assert [e["type"] for e in realtime_upstream.last.events()] == [
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
    ]
