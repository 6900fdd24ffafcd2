"""The browser boundary: pages of other origins, and DNS rebinding, against a real proxy.

A page anywhere on the web can make a browser POST a form, or open a WebSocket,
to the proxy on 127.0.0.1; by rebinding a name of its own to 127.0.0.1 it can
even make its requests same-origin. Each attack here is a real request with
the headers a browser sends, and the fake upstream says whether anything
reached it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.config import parse_config
from tests.helpers.client import ProxyFactory, base_url, form, json_of
from tests.helpers.errors import assert_error
from tests.helpers.upstream import FakeUpstream, provider_config

EVIL = "https://evil.example"
APP = "https://app.example"


async def exchange(
    server: TestServer, method: str, path: str, headers: dict[str, str], data: Any = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{base_url(server)}{path}", headers=headers, data=data) as reply,
    ):
        return reply.status, dict(reply.headers), await reply.read()


def transcription() -> aiohttp.MultipartWriter:
    return form(("model", "whisper-1"), ("file", b"RIFF"))


async def upgrade(server: TestServer, headers: dict[str, str]) -> int:
    """The status a realtime upgrade with ``headers`` gets (101 when it opens)."""
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(
                f"{base_url(server)}/v1/realtime?intent=transcription", headers=headers
            )
        except aiohttp.WSServerHandshakeError as refused:
            return refused.status
        await ws.close()
        return 101


@pytest.fixture
async def open_proxy(make_proxy: ProxyFactory, upstream: FakeUpstream) -> TestServer:
    """The default: no credential required, listening on loopback, one origin allowed."""
    config = provider_config(upstream)
    config["proxy"] = {"allowed_origins": [APP], "allowed_hosts": ["proxy.internal.example"]}
    return await make_proxy(config)


# --- Origin -----------------------------------------------------------------------------------


async def test_a_page_of_another_origin_cannot_post_a_transcription(
    open_proxy: TestServer, upstream: FakeUpstream
) -> None:
    status, _, body = await exchange(
        open_proxy, "POST", "/v1/audio/transcriptions", {"Origin": EVIL}, transcription()
    )
    assert status == 403
    assert_error(
        json_of(body), status=403, code="origin_not_allowed", error_type="permission_error"
    )
    assert upstream.requests == []


async def test_a_page_of_another_origin_cannot_open_a_realtime_session(
    open_proxy: TestServer,
) -> None:
    assert await upgrade(open_proxy, {"Origin": EVIL}) == 403
    assert await upgrade(open_proxy, {"Origin": "null"}) == 403


async def test_the_proxys_own_page_and_clients_without_an_origin_are_served(
    open_proxy: TestServer,
) -> None:
    own = base_url(open_proxy)
    assert await upgrade(open_proxy, {"Origin": own}) == 101
    assert await upgrade(open_proxy, {}) == 101
    status, headers, _ = await exchange(
        open_proxy, "POST", "/v1/audio/transcriptions", {"Origin": own}, transcription()
    )
    assert status == 200
    assert "Access-Control-Allow-Origin" not in headers  # same origin: nothing to share


async def test_an_allowed_origin_gets_cors(open_proxy: TestServer) -> None:
    asked = "authorization, x-stainless-os, content-type"
    status, headers, _ = await exchange(
        open_proxy,
        "OPTIONS",
        "/v1/audio/transcriptions",
        {
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked,
        },
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Headers"] == asked
    # Every method the API answers, the governance API's PUT included.
    allowed = {m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")}
    assert allowed == {"GET", "POST", "PUT", "DELETE", "OPTIONS"}
    status, headers, _ = await exchange(
        open_proxy, "POST", "/v1/audio/transcriptions", {"Origin": APP}, transcription()
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == APP
    assert "x-request-id" in headers["Access-Control-Expose-Headers"]
    assert await upgrade(open_proxy, {"Origin": APP}) == 101


async def test_a_preflight_from_another_origin_is_refused(open_proxy: TestServer) -> None:
    status, headers, body = await exchange(
        open_proxy,
        "OPTIONS",
        "/v1/audio/transcriptions",
        {"Origin": EVIL, "Access-Control-Request-Method": "POST"},
    )
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers
    assert_error(
        json_of(body), status=403, code="origin_not_allowed", error_type="permission_error"
    )


# --- Host (DNS rebinding) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["rebind.evil.example", "rebind.evil.example:8080", "127.0.0.1.nip.io"]
)
async def test_a_rebound_name_is_refused_when_no_credential_is_required(
    open_proxy: TestServer, upstream: FakeUpstream, host: str
) -> None:
    # The page's own origin: same-origin to itself, so the Origin check alone would pass it.
    headers = {"Host": host, "Origin": f"http://{host}"}
    status, _, body = await exchange(
        open_proxy, "POST", "/v1/audio/transcriptions", headers, transcription()
    )
    assert status == 403
    assert_error(json_of(body), status=403, code="host_not_allowed", error_type="permission_error")
    assert await upgrade(open_proxy, headers) == 403
    status, _, _ = await exchange(open_proxy, "GET", "/v1/models", {"Host": host})
    assert status == 403
    assert upstream.requests == []


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost:9",
        "[::1]:8080",
        "app.localhost",
        "10.1.2.3",  # an address: nothing to rebind
        "transcription-proxy",  # a single label, resolved by local search domains
        "proxy.internal.example",  # listed in proxy.allowed_hosts
        "PROXY.Internal.Example",
    ],
)
async def test_addresses_loopback_and_listed_names_are_served(
    open_proxy: TestServer, host: str
) -> None:
    status, _, _ = await exchange(
        open_proxy, "POST", "/v1/audio/transcriptions", {"Host": host}, transcription()
    )
    assert status == 200


async def test_with_credentials_required_the_host_is_not_what_protects(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["client"] = {"enforce_auth_on_inference": True}
    config["governance"] = {
        "virtual_keys": [{"id": "k", "value": "sk-bf-k-0123456789", "provider_configs": []}]
    }
    config["governance"]["virtual_keys"][0]["provider_configs"] = [
        {"provider": "openai", "allowed_models": ["*"]}
    ]
    server = await make_proxy(config)
    headers = {"Host": "gateway.example.com", "x-bf-vk": "sk-bf-k-0123456789"}
    status, _, _ = await exchange(
        server, "POST", "/v1/audio/transcriptions", headers, transcription()
    )
    assert status == 200
    # A page that rebinds a name still has no key: refused as any anonymous caller is.
    status, _, _ = await exchange(
        server, "POST", "/v1/audio/transcriptions", {"Host": "rebind.evil.example"}, transcription()
    )
    assert status == 401


async def _origins_through_proxy(origins: list[str]) -> list[tuple[str, int, bool]]:
    upstream = FakeUpstream()
    upstream.server = TestServer(upstream.app)
    await upstream.server.start_server()
    config = provider_config(upstream)
    config["proxy"] = {"allowed_origins": [APP]}
    proxy = TestServer(create_app(parse_config(config, {})))
    await proxy.start_server()
    try:
        own = base_url(proxy)
        seen = []
        for origin in [*origins, own]:
            status, headers, _ = await exchange(proxy, "GET", "/v1/models", {"Origin": origin})
            seen.append((origin, status, "Access-Control-Allow-Origin" in headers))
        return seen
    finally:
        await proxy.close()
        await upstream.server.close()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60)
        | st.sampled_from([EVIL, "http://127.0.0.1", "https://127.0.0.1.evil.example", "null"]),
        min_size=1,
        max_size=8,
    )
)
def test_no_other_origin_gets_through(origins: list[str]) -> None:
    *others, (own, own_status, own_shared) = asyncio.run(_origins_through_proxy(origins))
    assert (own_status, own_shared) == (200, False)
    for origin, status, shared in others:
        if origin.lower() == APP:
            assert (status, shared) == (200, True)
        elif origin.lower() != own:
            assert (status, shared) == (403, False), origin
