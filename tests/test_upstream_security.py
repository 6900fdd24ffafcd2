"""The upstream side of README "Security", through the proxy as a real server.

An Azure deployment id that could leave its one path segment (``..``, ``%2F``,
control characters, past 64 characters) is refused with a 400 before anything
is sent upstream, wherever it comes from: an Azure path, a ``/v1`` model or
fallback, the realtime form's query, or the config. And no upstream answer,
error, JSON, text or stream, carries any provider key (or the client's own
direct key) back to the client.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL as Url

from proxy.app import create_app
from proxy.config import ConfigError, parse_config
from proxy.providers.azure import DEPLOYMENT_ID
from tests.helpers.client import URL, ProxyFactory, base_url, form, json_of
from tests.helpers.errors import assert_error
from tests.helpers.upstream import (
    UPSTREAM_KEY,
    FakeUpstream,
    ReceivedRequest,
    answering,
    azure_config,
    dripping,
    echoing_the_key,
    openai_events,
    provider_config,
    streaming,
)

AZURE_KEY = "azure-secret-key"
#: A second provider's key: an upstream may quote one it was never sent.
OTHER_KEY = "sk-other-provider-secret-9876543210"
#: A key the client brings itself (``allow_direct_keys``).
DIRECT_KEY = "sk-client-direct-key-0123456789"

Headers = list[tuple[str, str]]


async def send(
    server: TestServer, path: str, data: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Headers]:
    """POST to ``path`` exactly as written: its percent-escapes, ``.`` and ``..`` kept
    (a client library would tidy them away; an attacker's would not)."""
    url = Url(f"{base_url(server)}{path}", encoded=True)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=headers) as response,
    ):
        return response.status, await response.read(), list(response.headers.items())


def assert_nowhere(secrets: Iterable[str], body: bytes, headers: Headers) -> None:
    """None of ``secrets`` is in the body or in any header the client got."""
    for secret in secrets:
        assert secret.encode() not in body
        assert all(secret not in f"{name}: {value}" for name, value in headers)


def azure_without_a_map(upstream: FakeUpstream) -> dict[str, Any]:
    """The Azure provider with no ``deployments``: every id is its own deployment."""
    config = azure_config(upstream)
    del config["providers"]["azure"]["keys"][0]["azure_key_config"]["deployments"]
    return config


def azure_path(deployment: str, task: str = "transcriptions", prefix: str = "/openai") -> str:
    return f"{prefix}/deployments/{deployment}/audio/{task}?api-version=2024-10-21"


AUDIO = ("file", b"RIFF0000")
#: What the upstream is sent: the deployment as its one segment, the config's api-version.
SENT_PATH = "/openai/deployments/{}/audio/transcriptions?api-version=2024-10-21"

# -- Azure deployment ids ---------------------------------------------------------------


@pytest.mark.parametrize(
    "deployment",
    [
        "..%2F..%2Fadmin",
        "%2E%2E",
        ".",
        "..",
        "a" * 65,
        "my-whisper%0d%0aX-Injected:%20yes",
        "a%2Fb",
        "%2Fadmin",
        "dep%3Fx%3D1",
        "dep%23frag",
        "-leading-dash",
    ],
)
@pytest.mark.parametrize(
    ("prefix", "task", "request_type"),
    [
        ("/openai", "transcriptions", "transcription"),
        ("/openai/openai", "transcriptions", "transcription"),
        ("/openai", "translations", "translation"),
        ("/openai/openai", "translations", "translation"),
    ],
)
async def test_a_deployment_id_that_could_leave_its_path_segment_is_refused(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    deployment: str,
    prefix: str,
    task: str,
    request_type: str,
) -> None:
    server = await make_proxy(azure_config(upstream))
    status, body, _ = await send(
        server, azure_path(deployment, task, prefix), form(("model", "whisper-1"), AUDIO)
    )
    assert status == 400, body
    assert_error(
        json_of(body),
        status=400,
        code="invalid_deployment_id",
        param="deployment_id",
        request_type=request_type,
    )
    assert upstream.requests == []


@pytest.mark.parametrize("deployment", ["a" * 64, "0", "my.whisper_v2-eu", "A.."])
async def test_a_valid_deployment_id_reaches_the_upstream_as_its_one_path_segment(
    make_proxy: ProxyFactory, upstream: FakeUpstream, deployment: str
) -> None:
    server = await make_proxy(azure_without_a_map(upstream))
    status, body, _ = await send(server, azure_path(deployment), form(AUDIO))
    assert status == 200, body
    assert [r.raw_path for r in upstream.requests] == [SENT_PATH.format(deployment)]


@pytest.mark.parametrize(
    "model",
    [
        "azure/..",
        "azure/.",
        "azure/../../admin",
        "azure/a/b",
        "azure/a%2Fb",
        "azure/dep?x=1",
        "azure/dep#frag",
        "azure/a b",
        "..",
    ],
)
async def test_on_v1_a_model_naming_no_valid_azure_deployment_is_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream, model: str
) -> None:
    # ".." bare goes to the only provider, Azure, as its own deployment.
    server = await make_proxy(azure_without_a_map(upstream))
    status, body, _ = await send(server, URL, form(("model", model), AUDIO))
    assert status == 400, body
    assert_error(json_of(body), status=400, code="invalid_deployment_id", param="model")
    assert upstream.requests == []


async def test_a_fallback_naming_no_valid_azure_deployment_is_refused_before_the_primary_runs(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["providers"].update(azure_without_a_map(upstream)["providers"])
    server = await make_proxy(config)
    status, body, _ = await send(
        server,
        URL,
        form(("model", "openai/whisper-1"), ("fallbacks[]", "azure/.."), AUDIO),
    )
    assert status == 400, body
    message = assert_error(
        json_of(body), status=400, code="invalid_deployment_id", param="fallbacks"
    )
    assert message.startswith("fallback azure/..: ")
    assert upstream.requests == []


async def test_a_realtime_session_on_no_valid_azure_deployment_is_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(azure_config(upstream))
    url = Url(
        f"{base_url(server)}/openai/realtime?api-version=2025-04-01-preview"
        "&intent=transcription&deployment=..%2F..%2Fadmin",
        encoded=True,
    )
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
    }
    async with aiohttp.ClientSession() as session, session.get(url, headers=upgrade) as response:
        assert response.status == 400
        body = await response.read()
    assert_error(
        json_of(body),
        status=400,
        code="invalid_deployment_id",
        param="deployment_id",
        request_type="realtime",
    )
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("deployments", "where"),
    [
        ({"whisper-1": "../admin"}, "whisper-1"),
        ({"whisper-1": ".."}, "whisper-1"),
        ({"whisper-1": "."}, "whisper-1"),
        ({"whisper-1": "a/b"}, "whisper-1"),
        ({"whisper-1": "a" * 65}, "whisper-1"),
        ({"whisper-1": "my whisper"}, "whisper-1"),
        ({"whisper-1": "ok", "large": "x\r\ny"}, "large"),
        # An empty value makes the model its own deployment: the model name is checked.
        ({"../admin": ""}, "../admin"),
    ],
)
def test_a_configured_deployment_that_is_no_deployment_id_is_refused_at_load(
    deployments: dict[str, str], where: str
) -> None:
    key = {
        "value": AZURE_KEY,
        "azure_key_config": {"endpoint": "http://127.0.0.1:9", "deployments": deployments},
    }
    with pytest.raises(ConfigError) as refused:
        parse_config({"providers": {"azure": {"keys": [key]}}}, {})
    assert str(refused.value).startswith(
        f"providers.azure.keys[0].azure_key_config.deployments.{where}: "
    )


async def _azure_path_through_proxy(
    deployment: str,
) -> tuple[int, dict[str, Any], list[ReceivedRequest]]:
    upstream = FakeUpstream()
    upstream.server = TestServer(upstream.app)
    await upstream.server.start_server()
    proxy = TestServer(create_app(parse_config(azure_without_a_map(upstream), {})))
    await proxy.start_server()
    try:
        status, body, _ = await send(proxy, azure_path(quote(deployment, safe="")), form(AUDIO))
        return status, json_of(body), upstream.requests
    finally:
        await proxy.close()
        await upstream.server.close()


def _deployment_ids() -> st.SearchStrategy[str]:
    return st.one_of(
        st.from_regex(DEPLOYMENT_ID, fullmatch=True),
        st.sampled_from(
            [".", "..", "../admin", "a/b", "a\r\nb", "a" * 65, ".a", "_a", "a b", "{a}"]
        ),
        st.text(min_size=1, max_size=70),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_deployment_ids())
def test_any_text_as_a_deployment_id_is_one_path_segment_or_refused(deployment: str) -> None:
    status, document, requests = asyncio.run(_azure_path_through_proxy(deployment))
    if DEPLOYMENT_ID.fullmatch(deployment):
        assert status == 200, document
        assert [r.raw_path for r in requests] == [SENT_PATH.format(deployment)]
    elif set(deployment) & set("{}"):
        # aiohttp's router never matches a braced id to {deployment_id}: no route, no handler.
        assert status == 404, document
        assert document["error"]["code"] == "not_found"
        assert requests == []
    else:
        assert status == 400, document
        assert document["error"]["code"] == "invalid_deployment_id"
        assert requests == []


# -- Keys in upstream answers ------------------------------------------------------------


def _error(**fields: str) -> dict[str, Any]:
    error = {
        "message": "bad request",
        "type": "invalid_request_error",
        "code": "bad",
        "param": None,
    }
    return {"error": {**error, **fields}}


@pytest.mark.parametrize("field", ["message", "code", "param", "type"])
async def test_our_key_quoted_in_any_field_of_an_upstream_error_is_blotted_out(
    proxy: TestServer, upstream: FakeUpstream, field: str
) -> None:
    upstream.respond = answering(400, _error(**{field: f"key {UPSTREAM_KEY} refused"}))
    status, body, headers = await send(proxy, URL, form(("model", "whisper-1"), AUDIO))
    assert status == 400
    assert json_of(body)["error"][field] == "key *** refused"
    assert_nowhere([UPSTREAM_KEY], body, headers)


@pytest.mark.parametrize(
    ("content_type", "answer"),
    [
        ("text/plain", f"upstream broke; it was sent {UPSTREAM_KEY}".encode()),
        ("application/json", orjson.dumps({"detail": {"api_key": UPSTREAM_KEY}})),
        # An error that is not the OpenAI shape, quoting the key as a JSON key.
        ("application/json", orjson.dumps({"detail": {UPSTREAM_KEY: "revoked"}})),
    ],
)
async def test_our_key_in_an_upstream_error_of_any_shape_is_blotted_out(
    proxy: TestServer, upstream: FakeUpstream, content_type: str, answer: bytes
) -> None:
    upstream.respond = answering(500, answer, content_type)
    status, body, headers = await send(proxy, URL, form(("model", "whisper-1"), AUDIO))
    assert status == 500
    assert "***" in json_of(body)["error"]["message"]
    assert_nowhere([UPSTREAM_KEY], body, headers)


async def test_our_key_in_a_header_an_error_passes_on_is_blotted_out(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    upstream.respond = answering(429, _error(), headers={"Retry-After": UPSTREAM_KEY})
    status, body, headers = await send(proxy, URL, form(("model", "whisper-1"), AUDIO))
    assert status == 429
    assert ("Retry-After", "***") in headers
    assert_nowhere([UPSTREAM_KEY], body, headers)


async def test_a_key_quoted_with_its_slashes_json_escaped_is_blotted_out(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    key = "sk-with/slashes/in-it-0123456789"
    config = provider_config(upstream)
    config["providers"]["openai"]["keys"][0]["value"] = key
    server = await make_proxy(config)
    escaped = key.replace("/", "\\/")
    upstream.respond = answering(401, b'{"error": {"message": "no: ' + escaped.encode() + b'"}}')
    status, body, headers = await send(server, URL, form(("model", "whisper-1"), AUDIO))
    assert status == 401
    assert json_of(body)["error"]["message"] == "no: ***"
    assert_nowhere([key, escaped], body, headers)


async def test_another_providers_key_quoted_by_an_upstream_is_blotted_out(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["providers"]["other"] = {
        "keys": [{"value": OTHER_KEY}],
        "custom_provider_config": {"base_provider_type": "openai"},
        "network_config": {"base_url": "http://127.0.0.1:9"},
    }
    config["providers"].update(azure_config(upstream)["providers"])
    server = await make_proxy(config)
    upstream.respond = answering(
        403, _error(message=f"not {OTHER_KEY}", code=AZURE_KEY, param=OTHER_KEY)
    )
    status, body, headers = await send(server, URL, form(("model", "openai/whisper-1"), AUDIO))
    assert status == 403
    assert json_of(body)["error"] | {"event_id": None} == {
        "message": "not ***",
        "type": "invalid_request_error",
        "code": "***",
        "param": "***",
        "event_id": None,
    }
    assert_nowhere([UPSTREAM_KEY, OTHER_KEY, AZURE_KEY], body, headers)


async def test_our_key_in_a_successful_answer_and_its_raw_response_is_blotted_out(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    upstream.respond = answering(
        200,
        {
            "text": f"the key is {UPSTREAM_KEY}",
            "usage": {"type": "duration", "seconds": 2},
            "echo": {"authorization": f"Bearer {UPSTREAM_KEY}"},
        },
    )
    status, body, headers = await send(
        proxy,
        URL,
        form(("model", "whisper-1"), AUDIO),
        headers={"x-bf-send-back-raw-response": "true"},
    )
    assert status == 200
    document = json_of(body)
    assert document["text"] == "the key is ***"
    assert document["extra_fields"]["raw_response"]["echo"] == {"authorization": "Bearer ***"}
    assert_nowhere([UPSTREAM_KEY], body, headers)


async def test_our_key_in_a_plain_text_answer_is_blotted_out(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    upstream.respond = answering(200, f"the key is {UPSTREAM_KEY}\n".encode(), "text/plain")
    status, body, headers = await send(
        proxy, URL, form(("model", "whisper-1"), ("response_format", "text"), AUDIO)
    )
    assert status == 200
    assert body == b"the key is ***\n"
    assert_nowhere([UPSTREAM_KEY], body, headers)


async def test_our_key_in_the_events_of_an_upstream_stream_is_blotted_out(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    upstream.respond = streaming(openai_events(["the key is ", UPSTREAM_KEY, "."]))
    status, body, headers = await send(
        proxy, URL, form(("model", "gpt-4o-transcribe"), ("stream", "true"), AUDIO)
    )
    assert status == 200
    assert b'"delta":"***"' in body
    assert b'"text":"the key is ***."' in body
    assert_nowhere([UPSTREAM_KEY], body, headers)


async def test_our_key_split_across_an_upstream_streams_writes_is_blotted_out(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    delta = {"type": "transcript.text.delta", "delta": f"key {UPSTREAM_KEY}"}
    # The event a few bytes at a time.
    upstream.respond = dripping(
        b"data: " + orjson.dumps(delta) + b"\n\ndata: [DONE]\n\n",
        piece=7,
        pause_s=0.005,
        content_type="text/event-stream",
    )
    status, body, headers = await send(
        proxy, URL, form(("model", "gpt-4o-transcribe"), ("stream", "true"), AUDIO)
    )
    assert status == 200
    assert b'"delta":"key ***"' in body
    assert_nowhere([UPSTREAM_KEY], body, headers)


async def test_our_key_in_an_upstream_streams_error_event_is_blotted_out(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    upstream.respond = streaming(
        [*openai_events(["hi"])[:1], {"error": {"message": f"key {UPSTREAM_KEY} revoked"}}]
    )
    status, body, headers = await send(
        proxy, URL, form(("model", "gpt-4o-transcribe"), ("stream", "true"), AUDIO)
    )
    assert status == 200
    assert b"key *** revoked" in body
    assert_nowhere([UPSTREAM_KEY], body, headers)


@pytest.mark.parametrize("status", [200, 401])
async def test_the_clients_direct_key_echoed_by_the_upstream_is_blotted_out(
    make_proxy: ProxyFactory, upstream: FakeUpstream, status: int
) -> None:
    config = provider_config(upstream)
    config["client"] = {"allow_direct_keys": True}
    server = await make_proxy(config)
    upstream.respond = echoing_the_key(status)
    answered, body, headers = await send(
        server,
        URL,
        form(("model", "whisper-1"), AUDIO),
        headers={
            "Authorization": f"Bearer {DIRECT_KEY}",
            "x-bf-send-back-raw-response": "true",
        },
    )
    assert upstream.last.headers["Authorization"] == f"Bearer {DIRECT_KEY}"
    assert answered == status
    assert b"***" in body
    assert_nowhere([DIRECT_KEY, UPSTREAM_KEY], body, headers)
