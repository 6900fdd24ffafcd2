"""The request log through the proxy: rows checked against what the clients got, and read
back through ``/api/logs``, ``/api/usage`` and the live tail, as an operator and as a tenant.

A real proxy in front of the recording fake upstream, with its own SQLite store in
the test's directory; clients are raw HTTP and the openai SDK.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from proxy.api.access import reader_of
from proxy.app import create_app
from proxy.config import parse_config
from proxy.errors import AuthenticationError
from tests.helpers.client import ProxyFactory, base_url, form, post
from tests.helpers.errors import assert_error
from tests.helpers.realtime import session, tone, transcription
from tests.helpers.upstream import FakeUpstream, ReceivedRequest, failing, provider_config

ADMIN = "sk-admin-operator-0123456789"
TEAM_A = "sk-bf-team-a-0123456789"
TEAM_B = "sk-bf-team-b-0123456789"


def logged(upstream: FakeUpstream, tmp_path: Path, **logs: Any) -> dict[str, Any]:
    """Two keys on ``openai``, an admin key, whisper-1 priced, the log flushed quickly."""
    config = provider_config(upstream)
    config["governance"] = {
        "virtual_keys": [
            {
                "id": key_id,
                "value": value,
                "provider_configs": [{"provider": "openai", "allowed_models": ["*"]}],
            }
            for key_id, value in (("team-a", TEAM_A), ("team-b", TEAM_B))
        ],
        "admin_keys": [ADMIN],
        "model_prices": {"whisper-1": 0.6},  # $0.01 a second
    }
    config["proxy"] = {"data_dir": str(tmp_path)}
    config["logs"] = {"flush_interval_ms": 20, **logs}
    return config


def request_id_of(headers: dict[str, str]) -> str:
    """The answer's ``x-request-id`` (header names as they came, in any case)."""
    return next(v for k, v in headers.items() if k.lower() == "x-request-id")


async def api(
    server: TestServer, path: str, key: str | None = ADMIN, **params: str
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(server)}{path}", params=params, headers=headers) as response,
    ):
        return response.status, await response.json()


async def rows_of(server: TestServer, count: int, **params: str) -> list[dict[str, Any]]:
    """The newest rows, once ``count`` of them are there (the writer is off the request path)."""
    for _ in range(200):
        status, body = await api(server, "/api/logs", **params)
        assert status == 200, body
        if len(body["logs"]) >= count:
            return list(body["logs"])
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} rows: {body}")


async def test_each_request_is_one_row_with_what_the_client_was_told(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = await make_proxy(logged(upstream, tmp_path))
    status, answer, headers = await post(
        server, form(("model", "whisper-1"), ("file", b"RIFF" * 100)), {"x-bf-vk": TEAM_A}
    )
    assert status == 200
    (row,) = await rows_of(server, 1)
    assert row["id"] == request_id_of(headers)
    assert row["object"] == "transcription"
    assert (row["status"], row["status_code"], row["error_code"]) == ("success", 200, None)
    assert (row["provider"], row["model_requested"], row["model_deployment"]) == (
        "openai",
        "whisper-1",
        "whisper-1",
    )
    assert row["virtual_key_id"] == "team-a"
    assert TEAM_A not in str(row)  # the key's id, never its value
    # The fake upstream says 2 s; whisper-1 at $0.01 a second.
    assert (row["audio_seconds"], row["audio_seconds_source"]) == (2, "answer")
    assert row["cost"] == pytest.approx(0.02)
    assert row["bytes_in"] == 400
    assert row["stream"] is False
    assert row["response_format"] == "json"
    assert row["latency"] >= 0
    assert row["content"] is None  # logs.content is off
    assert answer["extra_fields"]["provider"] == row["provider"]


async def test_a_failed_request_is_an_error_row(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.respond = failing(500)
    server = await make_proxy(logged(upstream, tmp_path))
    status, _, headers = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 500
    (row,) = await rows_of(server, 1)
    assert row["id"] == request_id_of(headers)
    assert (row["status"], row["status_code"]) == ("error", 500)
    assert row["audio_seconds"] is None  # no answer: nothing charged
    assert row["cost"] == 0


async def test_the_sdk_and_content_logging(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = await make_proxy(logged(upstream, tmp_path, content=True))
    async with openai.AsyncOpenAI(
        base_url=f"{base_url(server)}/v1", api_key=TEAM_B, max_retries=0
    ) as client:
        raw = await client.audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=("a.wav", b"RIFF" * 10)
        )
    (row,) = await rows_of(server, 1)
    assert row["id"] == raw.headers["x-request-id"]
    assert row["virtual_key_id"] == "team-b"
    assert row["content"] == raw.parse().text  # the transcript, with logs.content on


async def test_a_tenant_reads_its_own_rows_only(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = await make_proxy(logged(upstream, tmp_path))
    for key in (TEAM_A, TEAM_B, TEAM_B):
        status, _, _ = await post(
            server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": key}
        )
        assert status == 200
    assert len(await rows_of(server, 3)) == 3
    status, body = await api(server, "/api/logs", TEAM_A)
    assert status == 200
    assert [r["virtual_key_id"] for r in body["logs"]] == ["team-a"]
    # Asking for another key's rows changes nothing.
    status, body = await api(server, "/api/logs", TEAM_A, virtual_key_ids="team-b")
    assert [r["virtual_key_id"] for r in body["logs"]] == ["team-a"]
    other = (await rows_of(server, 2, virtual_key_ids="team-b"))[0]["id"]
    status, body = await api(server, f"/api/logs/{other}", TEAM_A)
    assert status == 404
    status, body = await api(server, "/api/usage", TEAM_A, group_by="virtual_key")
    assert status == 200
    assert [g["group"] for g in body["groups"]] == ["team-a"]


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        (None, 401, "invalid_api_key"),
        ("sk-bf-unknown-000000000", 401, "invalid_api_key"),
    ],
)
async def test_without_an_admin_credential_the_api_is_refused(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    tmp_path: Path,
    key: str | None,
    status: int,
    code: str,
) -> None:
    server = await make_proxy(logged(upstream, tmp_path))
    got, body = await api(server, "/api/logs", key)
    assert got == status
    assert_error(body, status=status, code=code, error_type="authentication_error")


async def test_on_the_loopback_default_whoever_reaches_it_is_its_operator(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = provider_config(upstream)
    config["proxy"] = {"data_dir": str(tmp_path)}
    config["logs"] = {"flush_interval_ms": 20}
    server = await make_proxy(config)
    status, _, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 200
    assert len(await rows_of(server, 1, key="")) == 1


@pytest.mark.parametrize(
    ("peer", "operator"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("192.168.1.20", False),
        ("2001:db8::1", False),
        (None, False),  # a Unix socket's peer: no address to trust
    ],
)
def test_on_the_default_only_a_caller_on_this_machine_is_the_operator(
    peer: str | None, operator: bool
) -> None:
    # A proxy bound to 0.0.0.0 without admin keys must not hand its keys and logs to
    # its network: the transport's peer address is what decides.
    app = create_app(parse_config({}, {}))
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" and peer is not None else default
    )
    request = make_mocked_request("GET", "/api/logs", app=app, transport=transport)
    if operator:
        assert reader_of(request).is_operator
    else:
        with pytest.raises(AuthenticationError):
            reader_of(request)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "5000"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"sort_by": "password"}, "sort_by"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"min_cost": "cheap"}, "min_cost"),
        ({"status": "maybe"}, "status"),
    ],
)
async def test_filters_that_do_not_parse_are_400_naming_them(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    tmp_path: Path,
    params: dict[str, str],
    param: str,
) -> None:
    server = await make_proxy(logged(upstream, tmp_path))
    status, body = await api(server, "/api/logs", **params)
    assert status == 400
    assert body["error"]["param"] == param


async def test_filters_stats_and_filterdata(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = await make_proxy(logged(upstream, tmp_path))
    for _ in range(3):
        await post(server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": TEAM_A})
    upstream.respond = failing(503)
    await post(server, form(("model", "whisper-1"), ("file", b"RIFF")), {"x-bf-vk": TEAM_A})
    await rows_of(server, 4)
    status, body = await api(server, "/api/logs", status="error")
    assert status == 200
    assert [r["status_code"] for r in body["logs"]] == [503]
    stats = body["stats"]
    assert stats["total_requests"] == 1
    status, body = await api(server, "/api/logs", limit="2", sort_by="latency", order="asc")
    assert body["pagination"] == {
        "limit": 2,
        "offset": 0,
        "sort_by": "latency",
        "order": "asc",
        "total_count": 4,
    }
    assert len(body["logs"]) == 2
    assert body["stats"]["success_rate"] == pytest.approx(75.0)
    assert body["stats"]["total_cost"] == pytest.approx(0.06)
    assert body["stats"]["total_audio_seconds"] == pytest.approx(6.0)
    status, body = await api(server, "/api/logs/filterdata")
    assert status == 200
    assert "openai" in body["providers"]
    assert "team-a" in body["virtual_key_ids"]


async def test_the_live_tail_sends_rows_as_they_are_written(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = await make_proxy(logged(upstream, tmp_path))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{base_url(server)}/api/logs/stream",
            params={"status": "error"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as tail,
    ):
        assert tail.headers["Content-Type"].startswith("text/event-stream")
        await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))  # a success
        upstream.respond = failing(502)
        _, _, headers = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
        async with asyncio.timeout(5):
            line = await anext(line async for line in tail.content if line.startswith(b"data:"))
        row = orjson.loads(line.removeprefix(b"data: "))
        assert row["id"] == request_id_of(headers)
        assert row["status_code"] == 502


async def test_a_long_recording_has_a_row_per_chunk(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    spoken = pytest.importorskip("tests.helpers.spoken", reason="PyAV is not installed")
    config = logged(upstream, tmp_path)
    config["providers"]["openai"]["max_upload_mb"] = 0.2
    config["proxy"]["chunking"] = {"max_chunk_s": 4, "cut_search_s": 0.5}

    async def seconds(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        return web.json_response({"text": "x", "usage": {"type": "duration", "seconds": 4}})

    upstream.respond = seconds
    server = await make_proxy(config)
    status, _, headers = await post(
        server, form(("model", "whisper-1"), ("file", spoken.encode(20, "wav")))
    )
    assert status == 200
    request_id = request_id_of(headers)
    await rows_of(server, 1, objects="transcription")
    status, found = await api(server, f"/api/logs/{request_id}")
    assert status == 200
    children = found["children"]
    assert len(children) == len(upstream.requests) >= 5
    assert all(c["object"] == "transcription.chunk" for c in children)
    assert all(c["parent_request_id"] == request_id for c in children)
    assert [c["id"] for c in children] == [f"{request_id}.{i}" for i in range(len(children))]
    assert all(c["status"] == "success" for c in children)


async def test_with_the_log_off_the_api_says_so(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = await make_proxy(logged(upstream, tmp_path, enabled=False))
    status, body = await api(server, "/api/logs")
    assert status == 503
    assert body["error"]["code"] == "request_log_off"
    status, _, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 200


async def test_a_realtime_session_is_a_row_and_each_turn_its_child(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = await make_proxy(logged(upstream, tmp_path))
    async with session(
        server,
        headers={"x-bf-vk": TEAM_A},
        update=transcription(turn_detection=None),
    ) as client:
        for _ in range(2):
            await client.stream(tone(0.5))
            await client.send({"type": "input_audio_buffer.commit"})
        await client.wait_for("conversation.item.input_audio_transcription.completed", count=2)
    (whole,) = await rows_of(server, 1, objects="realtime.session")
    assert whole["virtual_key_id"] == "team-a"
    assert whole["audio_seconds_source"] == "appended"
    assert whole["audio_seconds"] == pytest.approx(1.0, abs=0.05)
    status, found = await api(server, f"/api/logs/{whole['id']}")
    assert status == 200
    turns = found["children"]
    assert [t["object"] for t in turns] == ["realtime.turn", "realtime.turn"]
    assert all(t["parent_request_id"] == whole["id"] for t in turns)
    assert all(t["status"] == "success" for t in turns)
    assert len(upstream.requests) == 2
