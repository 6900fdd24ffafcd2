"""Azure OpenAI, several keys per provider, upstream timeouts, and the model list."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config import KeyConfig, parse_config
from proxy.errors import ProxyError
from proxy.metrics import Metrics
from proxy.providers import create_provider
from proxy.providers.key_pool import KeyPool
from proxy.router import REMEMBERED_ROUTES, Route, Router
from tests.helpers.client import URL, ProxyFactory, base_url, form, json_of, post
from tests.helpers.errors import assert_error
from tests.helpers.upstream import (
    FakeUpstream,
    ReceivedRequest,
    Responder,
    azure_config,
    provider_config,
    transcript_json,
)


@pytest.mark.parametrize("endpoint_suffix", ["/openai", ""])
async def test_azure_sdk_end_to_end(
    make_proxy: ProxyFactory, upstream: FakeUpstream, endpoint_suffix: str
) -> None:
    server = await make_proxy(azure_config(upstream))
    audio = b"RIFF" + bytes(range(256)) * 100
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=f"{base_url(server)}{endpoint_suffix}",
        api_key="client-azure-key",
        api_version="2025-04-01-preview",
        max_retries=0,
    ) as client:
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", audio, "audio/wav"), response_format="verbose_json"
        )
    assert result.text == f"heard {len(audio)} bytes"
    received = upstream.last
    assert received.path == "/openai/deployments/my-whisper/audio/transcriptions"
    # The provider's api_version, not whatever the client's SDK defaults to.
    assert received.query == {"api-version": "2024-10-21"}
    assert received.headers["api-key"] == "azure-secret-key"
    assert "Authorization" not in received.headers
    assert received.file.sha256 == hashlib.sha256(audio).hexdigest()
    extra = (result.model_extra or {})["extra_fields"]
    assert extra["provider"] == "azure"
    assert extra["model_requested"] == "whisper-1"
    assert extra["model_deployment"] == "my-whisper"


async def test_azure_deployment_in_the_path_wins_over_the_model_field(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(azure_config(upstream))
    status, document, _ = await post(
        server,
        form(("model", "gpt-4o-transcribe"), ("file", b"RIFF")),
        path="/openai/deployments/whisper-1/audio/transcriptions?api-version=2099-01-01",
    )
    assert status == 200
    assert document["extra_fields"]["model_requested"] == "whisper-1"
    assert upstream.last.path == "/openai/deployments/my-whisper/audio/transcriptions"
    # The file streams as soon as it starts: the path already picked the route.
    assert upstream.last.names == ["model", "file"]
    assert upstream.last.field("model") == "whisper-1"


async def test_the_azure_route_goes_to_azure_even_when_openai_serves_bare_names(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    # OpenAI would get bare names on /v1; the Azure SDK's deployment path is Azure's.
    config = azure_config(upstream)
    config["providers"]["openai"] = provider_config(backup)["providers"]["openai"]
    server = await make_proxy(config)
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=f"{base_url(server)}/openai",
        api_key="client-azure-key",
        api_version="2025-04-01-preview",
        max_retries=0,
    ) as client:
        result = await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", b"RIFF", "audio/wav")
        )
    assert (result.model_extra or {})["extra_fields"]["provider"] == "azure"
    assert upstream.last.path == "/openai/deployments/my-whisper/audio/transcriptions"
    assert backup.requests == []


async def test_the_azure_route_without_an_azure_provider_says_so(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    status, document, _ = await post(
        proxy,
        form(("file", b"RIFF")),
        path="/openai/openai/deployments/whisper-1/audio/transcriptions",
    )
    assert status == 404
    assert document["error"]["code"] == "azure_not_configured"
    assert "azure" in document["error"]["message"]
    assert upstream.requests == []


def test_azure_provider_needs_a_key_with_an_endpoint() -> None:
    from proxy.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"providers.azure.keys: an Azure provider needs"):
        parse_config({"providers": {"azure": {}}}, {})
    with pytest.raises(ConfigError, match=r"azure_key_config.endpoint: required"):
        parse_config({"providers": {"azure": {"keys": [{"value": "k"}]}}}, {})


def test_keys_are_chosen_by_weight() -> None:
    keys = [KeyConfig(value="a", weight=3), KeyConfig(value="b", weight=1)]
    calls: list[tuple[list[int], list[float]]] = []

    def choose(options: Sequence[int], weights: Sequence[float]) -> int:
        calls.append((list(options), list(weights)))
        return options[-1]

    pool = KeyPool("p", keys, choose=choose)
    assert pool.pick("whisper-1").value == "b"
    assert calls == [([0, 1], [3.0, 1.0])]


def test_a_refused_key_rests_then_returns() -> None:
    now = [0.0]
    keys = [KeyConfig(value="a"), KeyConfig(value="b", models=("whisper-1",))]
    pool = KeyPool("p", keys, clock=lambda: now[0], choose=lambda options, weights: options[0])
    assert pool.pick("whisper-1").value == "a"
    assert pool.refused(keys[0], "whisper-1") is True  # b is still there
    assert pool.pick("whisper-1").value == "b"
    assert pool.refused(keys[1], "whisper-1") is False  # nothing left rested
    assert pool.pick("whisper-1").value == "a"  # all resting: better than nothing
    now[0] = 61.0
    assert pool.pick("whisper-1").value == "a"


async def test_a_key_refused_upstream_is_passed_over(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def only_good_key(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        if received.headers["Authorization"] == "Bearer sk-revoked":
            return web.json_response(
                {"error": {"message": "Incorrect API key", "code": "invalid_api_key"}}, status=401
            )
        return await transcript_json(request, received)

    upstream.respond = only_good_key
    config = provider_config(upstream, max_retries=1, retry_backoff_initial=1)
    config["providers"]["openai"]["keys"] = [{"value": "sk-revoked"}, {"value": "sk-good"}]
    server = await make_proxy(config)
    for _ in range(10):
        status, _, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
        assert status == 200
    refused = [r for r in upstream.requests if r.headers["Authorization"] == "Bearer sk-revoked"]
    assert len(refused) <= 1


async def test_an_upstream_cookie_is_never_sent_with_another_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    """The upstream session is shared by every client: it must keep no cookie jar."""

    async def with_cookie(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        response = await transcript_json(request, received)
        response.set_cookie("__cf_bm", "affinity-of-the-first-client")
        return response

    upstream.respond = with_cookie
    config = provider_config(upstream)
    # By name: a cookie jar takes no cookies from a bare IP address.
    network = config["providers"]["openai"]["network_config"]
    network["base_url"] = network["base_url"].replace("127.0.0.1", "localhost")
    server = await make_proxy(config)
    for _ in range(2):
        status, headers, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
        assert status == 200
        assert "Set-Cookie" not in headers  # nor is it passed back to the client
    assert [r.headers.get("Cookie") for r in upstream.requests] == [None, None]


async def test_model_not_served_by_any_key(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["providers"]["openai"]["keys"][0]["models"] = ["whisper-1"]
    server = await make_proxy(config)
    status, body, _ = await post(server, form(("model", "openai/gpt-4o"), ("file", b"RIFF")))
    assert status == 400
    assert_error(body, status=400, code="model_not_found", param="model")


def slow(seconds: float) -> Responder:
    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await transcript_json(request, received)

    return respond


def with_timeouts(upstream: FakeUpstream, idle_s: float, per_mib_s: float) -> dict[str, Any]:
    config = provider_config(upstream, default_request_timeout_in_seconds=idle_s)
    config["proxy"] = {"timeout_per_mib_s": per_mib_s}
    return config


async def test_time_to_answer_grows_with_the_upload(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    upstream.respond = slow(0.8)
    server = await make_proxy(with_timeouts(upstream, idle_s=0.3, per_mib_s=0.5))
    small, _, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert small == 504
    # 2 MiB: 0.3 s + 2 x 0.5 s to answer, more than the upstream takes.
    large, document, _ = await post(
        server, form(("model", "whisper-1"), ("file", b"\0" * (2 * 1024 * 1024)))
    )
    assert large == 200, document


async def test_a_slow_client_is_not_blamed_on_the_upstream(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(with_timeouts(upstream, idle_s=0.2, per_mib_s=0))
    boundary = "slowclient"

    async def dribble() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"'
            "\r\n\r\n"
        ).encode()
        for _ in range(4):
            await asyncio.sleep(0.15)
            yield b"\0" * 300_000
        yield f"\r\n--{boundary}--\r\n".encode()

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(server)}{URL}",
            data=dribble(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()


async def test_a_stream_is_not_cut_while_chunks_keep_coming(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    async def trickle(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(8):
            await asyncio.sleep(0.1)
            await response.write(b'data: {"type":"transcript.text.delta","delta":"a"}\n\n')
        await response.write(b'data: {"type":"transcript.text.done","text":"aaaaaaaa"}\n\n')
        return response

    upstream.respond = trickle
    server = await make_proxy(with_timeouts(upstream, idle_s=0.25, per_mib_s=0))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(server)}{URL}",
            data=form(("model", "gpt-4o-transcribe"), ("stream", "true"), ("file", b"RIFF")),
        ) as response,
    ):
        body = await response.read()
    assert b'"text":"aaaaaaaa"' in body
    assert b'"error"' not in body


async def test_models_lists_what_the_config_names(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = azure_config(upstream)
    config["providers"]["openai"] = {
        "keys": [{"value": "k", "models": ["whisper-1", "gpt-4o-transcribe", "*"]}],
        "network_config": {"base_url": upstream.base_url},
    }
    server = await make_proxy(config)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(server)}/v1/models") as response,
    ):
        assert response.status == 200
        document = json_of(await response.read())
    assert document["object"] == "list"
    assert [m["id"] for m in document["data"]] == [
        "azure/whisper-1",
        "openai/whisper-1",
        "openai/gpt-4o-transcribe",
    ]
    assert document["data"][0] == {
        "id": "azure/whisper-1",
        "object": "model",
        "created": 0,
        "owned_by": "azure",
    }


async def test_bare_model_goes_to_openai_even_when_an_azure_deployment_has_its_name(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    config = azure_config(backup)
    config["providers"]["openai"] = provider_config(upstream)["providers"]["openai"]
    server = await make_proxy(config)
    status, document, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 200
    assert document["extra_fields"]["provider"] == "openai"
    assert upstream.last.path == "/v1/audio/transcriptions"
    assert not backup.requests
    # Named by its keys' models, a bare name goes to the provider that lists it.
    config["providers"]["azure"]["keys"][0]["models"] = ["whisper-1"]
    server = await make_proxy(config)
    status, document, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert document["extra_fields"]["provider"] == "azure"


async def test_remembered_routes_are_the_routes_worked_out() -> None:
    """The router keeps each model string's route: what it remembers must be what it works out."""
    config = parse_config(
        {
            "providers": {
                "openai": {"keys": [{"value": "sk-a", "models": ["whisper-1", "shared"]}]},
                "groq": {
                    "keys": [{"value": "gsk", "models": ["whisper-large-v3", "shared"]}],
                    "custom_provider_config": {"base_provider_type": "openai"},
                    "network_config": {"base_url": "http://127.0.0.1:9"},
                },
            }
        },
        {},
    )
    models = [
        "whisper-1",
        "Whisper-1",  # another string, whatever it resolves to
        "openai/whisper-1",
        "whisper-large-v3",
        "groq/whisper-large-v3",
        "groq/whisper-1",
        "Systran/faster-whisper-small",
        "shared",  # listed by both: refused, every time
        "nobody-lists-this",
        "groq/",
        "",
        *(f"generated-{n}" for n in range(REMEMBERED_ROUTES + 10)),  # past the bound
    ]

    def outcome(resolve: Callable[[str], Route], model: str) -> object:
        try:
            route = resolve(model)
        except ProxyError as exc:
            return (type(exc), exc.code, exc.message, exc.param)
        return (route.provider.name, route.model, route.requested)

    async with aiohttp.ClientSession() as session:
        router = Router(
            {
                name: create_provider(provider, session, config.proxy, Metrics())
                for name, provider in config.providers.items()
            }
        )
        for model in models * 2:  # the second time round, from memory
            assert outcome(router.resolve, model) == outcome(router.work_out, model), model


async def test_on_v1_an_azure_deployment_map_still_limits_the_models(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    # Only the deployment route takes an unmapped name as the deployment itself.
    server = await make_proxy(azure_config(upstream))
    status, body, _ = await post(server, form(("model", "azure/other"), ("file", b"RIFF")))
    assert status == 400
    assert_error(body, status=400, code="model_not_found", param="model")
    assert upstream.requests == []
