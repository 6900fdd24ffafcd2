"""Fixtures: a recording fake upstream and the proxy in front of it, both real servers."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.config import parse_config
from proxy.store.engine import Store, open_store
from tests.helpers.client import ProxyFactory, base_url
from tests.helpers.postgres import FAST, PostgresServer, unavailable
from tests.helpers.processes import RedisServer, open_files
from tests.helpers.realtime_upstream import FakeRealtimeUpstream
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
async def realtime_upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> FakeRealtimeUpstream:
    """A fake realtime upstream (OpenAI's WebSocket), for relayed sessions."""
    fake = FakeRealtimeUpstream()
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

    Sockets are left out: pooled keep-alive connections are meant to stay; so is the
    store the app keeps open in its data directory.
    """
    before = open_files()
    # The store's files (the request log's SQLite database) stay open with the app.
    store = os.environ.get("PROXY_DATA_DIR", "/nonexistent")

    def opened_since() -> list[str]:
        gc.collect()
        return sorted(
            target
            for fd, target in open_files().items()
            if before.get(fd) != target and target.startswith("/") and not target.startswith(store)
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


@pytest.fixture(autouse=True, scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where every proxy the suite starts keeps its files (the request log's SQLite store),
    in this process and in the proxy processes it starts: a temporary directory, never
    the repository's ``data/``."""
    directory = tmp_path_factory.mktemp("data")
    before = os.environ.get("PROXY_DATA_DIR")
    os.environ["PROXY_DATA_DIR"] = str(directory)
    yield directory
    if before is None:
        del os.environ["PROXY_DATA_DIR"]
    else:
        os.environ["PROXY_DATA_DIR"] = before


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (each test gets its own database)."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer(FAST)
    server.start()
    yield server
    server.remove()


@pytest.fixture
async def own_postgres() -> AsyncIterator[PostgresServer]:
    """A PostgreSQL server of the test's own, which it may stop and start again."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer(FAST)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.remove)


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store's URL: a SQLite file, or a database of its own on the real
    PostgreSQL server (the store's tests run on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store/proxy.sqlite3"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"test_{next(_databases)}")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    yield opened
    await opened.close()
