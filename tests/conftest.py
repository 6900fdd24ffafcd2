"""Fixtures: a recording fake upstream and the proxy in front of it, both real servers."""

from __future__ import annotations

import gc
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.config import parse_config
from tests.helpers.client import ProxyFactory, base_url
from tests.helpers.processes import RedisServer, open_files
from tests.helpers.upstream import FakeUpstream, provider_config


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeUpstream:
    fake = FakeUpstream()
    fake.server = await aiohttp_server(fake.app)
    return fake


@pytest.fixture
async def backup(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeUpstream:
    """A second upstream, for fallbacks."""
    fake = FakeUpstream()
    fake.server = await aiohttp_server(fake.app)
    return fake


@pytest.fixture
def make_proxy(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> ProxyFactory:
    async def start(raw_config: dict[str, Any]) -> TestServer:
        return await aiohttp_server(create_app(parse_config(raw_config, {})))

    return start


@pytest.fixture
async def proxy(make_proxy: ProxyFactory, upstream: FakeUpstream) -> TestServer:
    return await make_proxy(provider_config(upstream))


@pytest.fixture
async def sdk(proxy: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=f"{base_url(proxy)}/v1", api_key="sk-client", max_retries=0
    )
    async with client:
        yield client


@pytest.fixture
def no_leaks() -> Callable[[], list[str]]:
    """Files (spools, temp files) this process opened since the test began and still holds.

    Sockets are left out: pooled keep-alive connections are meant to stay.
    """
    before = open_files()

    def opened_since() -> list[str]:
        gc.collect()
        return sorted(
            target
            for fd, target in open_files().items()
            if before.get(fd) != target and target.startswith("/")
        )

    return opened_since


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/test installs it)")
    server = RedisServer()
    await server.start()
    yield server
    await server.stop()
