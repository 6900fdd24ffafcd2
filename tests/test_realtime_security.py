"""The realtime security boundaries of README "Security", each as the attack that once
worked: relayed audio metered at the format the upstream took, client events forwarded
only as checked, provider keys blotted out of upstream frames, client secrets that
cannot flood their store or dodge limits, and sessions that end (at their secret's
expiry, when idle) and that one key cannot hoard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import SECRETS_MEMORY_BYTES
from proxy.app_state import SECRETS_KEY
from tests.helpers.client import ProxyFactory, base_url
from tests.helpers.errors import assert_error
from tests.helpers.metrics import scrape, value
from tests.helpers.realtime import (
    PATH,
    TRANSCRIPTION,
    Client,
    append,
    refused_upgrade,
    session,
)
from tests.helpers.realtime_upstream import FakeRealtimeUpstream, first_key_wins, relay_config
from tests.helpers.upstream import UPSTREAM_KEY, FakeUpstream, provider_config

VK = "sk-bf-tenant-a-0123456789"
OTHER_VK = "sk-bf-tenant-b-0123456789"
#: A model neither key may use.
FORBIDDEN = "gpt-4o-mini-transcribe"
SECRETS = "/v1/realtime/client_secrets"
#: How long a test waits for what must come promptly.
PROMPT_S = 5.0


def with_keys(config: dict[str, Any], **more: Any) -> dict[str, Any]:
    """``config`` with two tenants' virtual keys (whisper-1 and gpt-4o-transcribe only)
    and credentials required; ``more`` goes into ``governance``."""
    key = more.pop("key", {})
    allowed = [{"provider": "openai", "allowed_models": ["whisper-1", "gpt-4o-transcribe"]}]
    config["client"] = {"enforce_auth_on_inference": True}
    config["governance"] = {
        "virtual_keys": [
            {"id": "a", "value": VK, "provider_configs": allowed, **key},
            {"id": "b", "value": OTHER_VK, "provider_configs": allowed},
        ],
        **more,
    }
    return config


def audio_limited(config: dict[str, Any], seconds: int) -> dict[str, Any]:
    """``config`` with tenant a held to ``seconds`` of audio, reserved a second at a time."""
    config = with_keys(
        config,
        key={"rate_limit_id": "rl"},
        rate_limits=[
            {"id": "rl", "audio_seconds_max_limit": seconds, "audio_seconds_reset_duration": "1h"}
        ],
        reserve_audio_seconds=1,
    )
    config.setdefault("proxy", {})["realtime"] = {"reserve_step_s": 1}
    return config


def update(session_: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    event = {"type": "session.update", "session": {"type": "transcription", **session_}}
    return {**event, "event_id": event_id} if event_id else event


def input_format(kind: str, model: str | None = None) -> dict[str, Any]:
    """A GA update's session switching the input format (and the model, if given)."""
    inputs: dict[str, Any] = {"format": {"type": kind}}
    if model is not None:
        inputs["transcription"] = {"model": model}
    return {"audio": {"input": inputs}}


async def ended(client: Client) -> int | None:
    """The session's close code, once the proxy has closed it."""
    await asyncio.wait_for(client.closed.wait(), PROMPT_S)
    return client.ws.close_code


async def errors(client: Client, count: int = 1) -> list[dict[str, Any]]:
    """The first ``count`` errors the client has been sent (waiting a few seconds)."""
    return [e["error"] for e in await asyncio.wait_for(client.wait_for("error", count=count), 5)]


#: The relayed audio seconds the proxy has counted.
RELAYED_SECONDS = "proxy_realtime_audio_seconds_total"


async def relayed(client: Client) -> None:
    """Wait until everything the client sent so far has gone past the proxy: a commit
    the upstream answers comes after it."""
    await client.send({"type": "input_audio_buffer.commit"})
    done = len(client.of(f"{TRANSCRIPTION}.completed"))
    await asyncio.wait_for(client.wait_for(f"{TRANSCRIPTION}.completed", count=done + 1), 5)


# --- 1. relayed audio is metered at the format the upstream took ------------------------------


async def test_a_refused_switch_back_to_pcm_leaves_the_meter_at_the_upstreams_pcmu(
    make_proxy: ProxyFactory, realtime_upstream: FakeRealtimeUpstream
) -> None:
    server = await make_proxy(audio_limited(relay_config(realtime_upstream), seconds=20))
    async with session(server, headers={"x-bf-vk": VK}) as client:
        await client.send(update(input_format("audio/pcmu")))
        await client.wait_for("session.updated")
        # Back to pcm, with a model the key may not use: refused, never forwarded, so the
        # upstream stays at pcmu (8000 bytes a second).
        await client.send(update(input_format("audio/pcm", FORBIDDEN), "evt_back"))
        (refused,) = await errors(client)
        assert refused["code"] == "model_not_allowed"
        assert refused["event_id"] == "evt_back"
        for _ in range(30):
            await client.send(append(bytes(8_000)))  # a second of pcmu each
        spent = (await errors(client, 2))[1]
        assert await ended(client) == 1008
    assert spent["code"] == "rate_limit_exceeded"
    seen = realtime_upstream.last
    await asyncio.wait_for(seen.closed.wait(), PROMPT_S)
    appends = [e for e in seen.events() if e["type"] == "input_audio_buffer.append"]
    assert len(appends) == 20  # the limit's 20 s, at 8000 bytes a second


async def test_the_meter_follows_the_format_the_upstream_says_not_the_one_asked_for(
    make_proxy: ProxyFactory, realtime_upstream: FakeRealtimeUpstream
) -> None:
    realtime_upstream.accepted_format = "audio/pcmu"
    server = await make_proxy(relay_config(realtime_upstream))
    async with session(server) as client:
        await client.send(update(input_format("audio/pcm")))
        (updated,) = await client.wait_for("session.updated")
        assert updated["session"]["audio"]["input"]["format"]["type"] == "audio/pcmu"
        await client.send(append(bytes(24_000)))
        await relayed(client)
    assert value(await scrape(server), RELAYED_SECONDS) == pytest.approx(3.0)  # 24000 bytes of pcmu


@pytest.mark.parametrize(
    ("before", "asked", "after_answer_s"),
    [("audio/pcm", "audio/pcmu", 6.0), ("audio/pcmu", "audio/pcm", 1.0)],
    ids=["to-pcmu", "to-pcm"],
)
async def test_while_a_switch_awaits_its_answer_the_meter_counts_the_more_seconds(
    make_proxy: ProxyFactory,
    realtime_upstream: FakeRealtimeUpstream,
    before: str,
    asked: str,
    after_answer_s: float,
) -> None:
    server = await make_proxy(relay_config(realtime_upstream))
    async with session(server) as client:
        await client.send(update(input_format(before)))
        await client.wait_for("session.updated")
        realtime_upstream.hold_answers = held = asyncio.Event()
        await client.send(update(input_format(asked)))
        await client.send(append(bytes(16_000)))  # 2 s of pcmu, or 1/3 s of pcm
        # Forwarded (so metered) before the upstream may answer.
        await asyncio.wait_for(realtime_upstream.last.received(3), PROMPT_S)
        held.set()
        await client.wait_for("session.updated", count=2)
        await client.send(append(bytes(48_000)))  # now at the format the upstream took
        await relayed(client)
    assert value(await scrape(server), RELAYED_SECONDS) == pytest.approx(2.0 + after_answer_s)


# --- 2. client events are forwarded only as they were checked --------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # orjson keeps the last "session"; a parser that keeps the first would see the model.
        '{"type":"session.update","session":{"type":"transcription","audio":{"input":'
        f'{{"transcription":{{"model":"{FORBIDDEN}"}}}}}}}},'
        '"session":{"type":"transcription"}}',
        '{"type":"session.update","session":{"type":"transcription","audio":{"input":'
        f'{{"transcription":{{"model":"{FORBIDDEN}"}}}}}},'
        '"audio":{"input":{"noise_reduction":null}}}}',
    ],
    ids=["two-sessions", "two-audios"],
)
async def test_an_event_with_duplicate_keys_goes_upstream_as_it_was_checked(
    make_proxy: ProxyFactory, realtime_upstream: FakeRealtimeUpstream, text: str
) -> None:
    server = await make_proxy(with_keys(relay_config(realtime_upstream)))
    async with session(server, headers={"x-bf-vk": VK}) as client:
        await client.ws.send_str(text)
        (updated,) = await asyncio.wait_for(client.wait_for("session.updated"), PROMPT_S)
    (forwarded,) = realtime_upstream.last.frames
    assert forwarded == orjson.dumps(orjson.loads(text)).decode()
    assert first_key_wins(forwarded) == orjson.loads(forwarded)  # no duplicate left
    assert FORBIDDEN not in forwarded
    assert FORBIDDEN not in orjson.dumps(updated).decode()  # what the upstream applied


async def test_frames_that_are_not_json_objects_are_refused_not_forwarded(
    make_proxy: ProxyFactory, realtime_upstream: FakeRealtimeUpstream
) -> None:
    server = await make_proxy(relay_config(realtime_upstream))
    async with session(server) as client:
        for text in ("not json", "[1, 2]", '"input_audio_buffer.commit"'):
            await client.ws.send_str(text)
        await client.ws.send_bytes(b'{"type": "input_audio_buffer.commit"}')
        refused = await errors(client, 4)
        await relayed(client)
    assert [e["code"] for e in refused] == ["invalid_event"] * 4
    assert realtime_upstream.last.frames == ['{"type":"input_audio_buffer.commit"}']
    assert realtime_upstream.last.binary == []


@pytest.mark.parametrize(
    # (The key's refusal of a model names the request's field: "model".)
    ("kind", "session_", "param", "code"),
    [
        (
            "session.update",
            {
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                "input_audio_transcription": {"model": FORBIDDEN},
            },
            "session.input_audio_transcription",
            "invalid_value",
        ),
        (
            "transcription_session.update",
            {
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                "input_audio_transcription": {"model": "whisper-1"},
            },
            "session.input_audio_transcription",
            "invalid_value",
        ),
        (
            "transcription_session.update",
            {"input_audio_transcription": {"model": FORBIDDEN}},
            "model",
            "model_not_allowed",
        ),
        (
            "session.update",
            {"type": "transcription", "model": FORBIDDEN},
            "model",
            "model_not_allowed",
        ),
        ("session.update", {"type": "realtime"}, "session.type", "invalid_value"),
        (
            "session.update",
            {"type": "transcription", "audio": {"input": {"format": {"type": "audio/opus"}}}},
            "session.audio.input.format",
            "invalid_value",
        ),
    ],
    ids=[
        "ga-and-beta-shapes",
        "both-shapes-beta-event",
        "beta-model",
        "session-model",
        "not-transcription",
        "unmetered-format",
    ],
)
async def test_an_update_is_refused_when_any_model_or_shape_in_it_is_not_allowed(
    make_proxy: ProxyFactory,
    realtime_upstream: FakeRealtimeUpstream,
    kind: str,
    session_: dict[str, Any],
    param: str,
    code: str,
) -> None:
    server = await make_proxy(with_keys(relay_config(realtime_upstream)))
    async with session(server, headers={"x-bf-vk": VK}) as client:
        await client.send({"type": kind, "event_id": "evt_upd", "session": session_})
        (refused,) = await errors(client)
        await relayed(client)
    assert refused["event_id"] == "evt_upd"
    assert refused["code"] == code
    assert refused["param"] == param
    assert [e["type"] for e in realtime_upstream.last.events()] == ["input_audio_buffer.commit"]


# --- 3. upstream frames carry none of our keys -------------------------------------------------


async def test_an_upstream_frame_quoting_our_key_reaches_the_client_blotted_out(
    make_proxy: ProxyFactory, realtime_upstream: FakeRealtimeUpstream
) -> None:
    realtime_upstream.quote_key = True
    server = await make_proxy(relay_config(realtime_upstream))
    async with session(server) as client:
        await client.send({"type": "bad"})
        (error,) = await errors(client)
    assert UPSTREAM_KEY not in error["message"]
    assert error["message"] == "no (key ***)"


# --- 4. client secrets -----------------------------------------------------------------------


def secrets_config(upstream: FakeUpstream, **more: Any) -> dict[str, Any]:
    return with_keys(provider_config(upstream), **more)


async def mint(server: TestServer, body: Any = None, key: str = VK) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base_url(server)}{SECRETS}", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        return response.status, await response.json()


async def opens(server: TestServer, secret: str) -> None:
    """The secret still opens a session."""
    protocols = ("realtime", f"openai-insecure-api-key.{secret}")
    async with session(server, protocols=protocols) as client:
        created = client.events[0]["session"]
        assert created["audio"]["input"]["transcription"]["model"] == "gpt-4o-transcribe"


def minted_session(**extra: Any) -> dict[str, Any]:
    return {
        "session": {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
            **extra,
        }
    }


async def test_chunked_mints_over_the_cap_are_refused_and_evict_no_secret(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(secrets_config(upstream))
    status, victim = await mint(server, minted_session())
    assert status == 200
    huge = orjson.dumps(minted_session(padding="x" * 1_000_000))

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the cap is on bytes read
        for start in range(0, len(huge), 64 * 1024):
            yield huge[start : start + 64 * 1024]

    async with aiohttp.ClientSession() as http:
        for _ in range(9):
            async with http.post(
                f"{base_url(server)}{SECRETS}",
                data=chunked(),
                headers={"Authorization": f"Bearer {OTHER_VK}", "Content-Type": "application/json"},
            ) as response:
                assert_error(
                    await response.json(),
                    status=413,
                    code="request_too_large",
                    request_type="realtime_client_secret",
                )
    await opens(server, victim["value"])


async def test_a_secret_keeps_the_validated_session_not_the_clients_object(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(secrets_config(upstream))
    status, victim = await mint(server, minted_session())
    assert status == 200
    padded = minted_session(padding="x" * 60_000)  # under the cap, ignored by the session
    for _ in range(SECRETS_MEMORY_BYTES // 60_000 + 5):  # enough to fill the store, if kept
        status, minted = await mint(server, padded, key=OTHER_VK)
        assert status == 200
        assert "padding" not in minted["session"]
    await opens(server, victim["value"])


async def test_a_store_full_of_live_secrets_refuses_new_mints_and_evicts_none(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(secrets_config(upstream))
    status, victim = await mint(server, minted_session())
    assert status == 200
    # A prompt is kept with the secret: 60 KB each fills 8 MB in about 140 mints.
    long_prompt = {
        "session": {
            "type": "transcription",
            "audio": {
                "input": {"transcription": {"model": "gpt-4o-transcribe", "prompt": "x" * 60_000}}
            },
        }
    }
    statuses = [
        (await mint(server, long_prompt, key=OTHER_VK))[0]
        for _ in range(SECRETS_MEMORY_BYTES // 60_000 + 5)
    ]
    assert 200 in statuses
    status, refused = await mint(server, long_prompt, key=OTHER_VK)
    assert status == 503
    assert_error(
        refused,
        status=503,
        code="too_many_client_secrets",
        error_type="api_error",
        bifrost=True,
        request_type="realtime_client_secret",
    )
    await opens(server, victim["value"])


async def test_a_mint_counts_as_a_request_against_the_keys_limit(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(
        secrets_config(
            upstream,
            key={"rate_limit_id": "rl"},
            rate_limits=[{"id": "rl", "request_max_limit": 2, "request_reset_duration": "1h"}],
        )
    )
    status, _ = await mint(server, {"expires_after": {"anchor": "created_at", "seconds": 5}})
    assert status == 400  # refused before it is counted
    for _ in range(2):
        status, _ = await mint(server)
        assert status == 200
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base_url(server)}{SECRETS}", json={}, headers={"Authorization": f"Bearer {VK}"}
        ) as response,
    ):
        assert_error(
            await response.json(),
            status=429,
            code="rate_limit_exceeded",
            error_type="rate_limit_error",
            request_type="realtime_client_secret",
        )
        assert int(response.headers["Retry-After"]) > 0
    status, _ = await mint(server, key=OTHER_VK)  # another key's limit is its own
    assert status == 200


async def test_a_mint_whose_body_stalls_is_a_408(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = secrets_config(upstream)
    config["proxy"] = {"body_idle_timeout_s": 0.3}

    async def stalling() -> AsyncIterator[bytes]:
        yield b'{"session": '
        await asyncio.sleep(1.0)
        yield b"{}}"

    server = await make_proxy(config)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base_url(server)}{SECRETS}",
            data=stalling(),
            headers={"Authorization": f"Bearer {VK}", "Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 408
        assert (await response.json())["error"]["code"] == "request_timeout"


# --- 5. sessions end, and one key cannot hold them all ----------------------------------------


@pytest.fixture(params=["synthesized", "relayed"])
async def any_kind(
    request: pytest.FixtureRequest,
    upstream: FakeUpstream,
    realtime_upstream: FakeRealtimeUpstream,
) -> dict[str, Any]:
    """A config of either kind of session: synthesized by the proxy, or relayed."""
    if request.param == "relayed":
        return relay_config(realtime_upstream)
    return provider_config(upstream)


async def test_a_session_ends_when_its_client_secret_expires(
    make_proxy: ProxyFactory, any_kind: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_proxy(with_keys(any_kind))
    secrets = server.app[SECRETS_KEY]
    with monkeypatch.context() as minted_earlier:
        # Minted 8.5 s ago (10 s is the shortest a secret lives): about a second is left.
        minted_earlier.setattr(secrets, "_clock", lambda: time.time() - 8.5)
        status, minted = await mint(server, {"expires_after": {"seconds": 10}})
    assert status == 200
    protocols = ("realtime", f"openai-insecure-api-key.{minted['value']}")
    async with session(server, protocols=protocols) as client:
        (expired,) = await errors(client)
        ended_at = time.time()
        assert await ended(client) == 1008
    assert expired["code"] == "session_expired"
    assert expired["type"] == "invalid_request_error"
    assert minted["expires_at"] - 0.1 <= ended_at <= minted["expires_at"] + 2


async def test_a_session_whose_client_goes_quiet_ends(
    make_proxy: ProxyFactory, any_kind: dict[str, Any]
) -> None:
    any_kind["proxy"] = {"realtime": {"idle_timeout_s": 0.4}}
    server = await make_proxy(any_kind)
    async with session(server) as client:
        for _ in range(2):  # events keep it open, binary frames too
            await asyncio.sleep(0.25)
            await client.send({"type": "input_audio_buffer.clear"})
            await asyncio.sleep(0.25)
            await client.ws.send_bytes(b"\0")
        assert not client.closed.is_set()
        went_quiet = time.monotonic()
        idle = [e for e in await errors(client, 3) if e["code"] != "invalid_event"]
        assert await ended(client) == 1000
    assert [e["code"] for e in idle] == ["idle_timeout"]
    assert 0.3 <= time.monotonic() - went_quiet <= 3


def capped(upstream: FakeUpstream) -> dict[str, Any]:
    config = with_keys(provider_config(upstream))
    config["proxy"] = {"realtime": {"max_sessions": 3, "max_sessions_per_key": 2}}
    return config


async def test_a_key_holding_its_cap_of_sessions_is_refused_and_leaves_others_room(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(capped(upstream))
    headers = {"x-bf-vk": VK}
    async with session(server, headers=headers), session(server, headers=headers) as second:
        status, body, refused_headers = await refused_upgrade(server, headers=headers)
        assert_error(
            body,
            status=429,
            code="too_many_sessions",
            error_type="rate_limit_error",
            request_type="realtime",
        )
        assert refused_headers["Retry-After"] == "1"
        async with session(server, headers={"x-bf-vk": OTHER_VK}) as other:
            assert other.events[0]["type"] == "session.created"
        await second.aclose()
        await opens_when_free(server, headers)  # a slot freed is free again
    assert status == 429


async def opens_when_free(server: TestServer, headers: dict[str, str]) -> None:
    """A session opens once the session just closed has let go of its slot (the proxy
    ends it a moment after the client has gone)."""
    refusals: list[int] = []
    async with asyncio.timeout(PROMPT_S):
        while True:
            try:
                async with session(server, headers=headers):
                    break
            except aiohttp.WSServerHandshakeError as refused:
                refusals.append(refused.status)
            await asyncio.sleep(0.05)
    assert set(refusals) <= {429}


async def test_upgrades_racing_for_a_keys_last_slots_get_only_those(
    make_proxy: ProxyFactory, realtime_upstream: FakeRealtimeUpstream
) -> None:
    config = with_keys(relay_config(realtime_upstream))
    config["proxy"] = {"realtime": {"max_sessions_per_key": 2}}
    server = await make_proxy(config)
    async with aiohttp.ClientSession() as http:

        async def attempt() -> aiohttp.ClientWebSocketResponse | int:
            try:
                return await http.ws_connect(f"{base_url(server)}{PATH}", headers={"x-bf-vk": VK})
            except aiohttp.WSServerHandshakeError as refused:
                return refused.status

        outcomes = await asyncio.gather(*(attempt() for _ in range(5)))
        opened = [o for o in outcomes if not isinstance(o, int)]
        for ws in opened:
            await ws.close()
    assert len(opened) == 2
    assert sorted(o for o in outcomes if isinstance(o, int)) == [429, 429, 429]


async def test_anonymous_callers_are_not_held_to_the_per_key_cap(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["proxy"] = {"realtime": {"max_sessions_per_key": 1}}
    server = await make_proxy(config)
    async with session(server) as first, session(server) as second:
        assert first.events[0]["type"] == second.events[0]["type"] == "session.created"
