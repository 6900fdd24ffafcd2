"""The store: opening SQLite and PostgreSQL alike, migrations at start, clear errors."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from proxy.config import ConfigError, parse_config
from proxy.store.engine import Store, open_store
from proxy.store.migrations import LATEST, MIGRATIONS, migrate
from proxy.store.tables import metadata
from tests.helpers.postgres import PostgresServer


async def _versions(store: Store) -> list[int]:
    async with store.engine.connect() as conn:
        found = await conn.execute(text("SELECT version FROM schema_migrations ORDER BY version"))
        return list(found.scalars())


async def test_migrations_are_applied_at_start_and_again_change_nothing(store_url: str) -> None:
    store = await open_store(store_url)
    assert await _versions(store) == [m.version for m in MIGRATIONS]
    await store.close()
    # A second start (a restart, another replica) on the existing store: a no-op.
    again = await open_store(store_url)
    try:
        assert await migrate(again.engine, again.backend, "proxy.store") == []
        assert await _versions(again) == [m.version for m in MIGRATIONS]
    finally:
        await again.close()


async def test_the_migrated_schema_is_the_one_the_code_reads(store: Store) -> None:
    def columns(sync: object) -> dict[str, list[tuple[str, bool]]]:
        inspector = inspect(sync)
        return {
            table: [(c["name"], c["nullable"]) for c in inspector.get_columns(table)]
            for table in metadata.tables
        }

    async with store.engine.connect() as conn:
        found = await conn.run_sync(columns)
    for name, table in metadata.tables.items():
        assert found[name] == [(c.name, bool(c.nullable)) for c in table.columns], name


async def test_replicas_starting_together_migrate_once(store_url: str) -> None:
    stores = await asyncio.gather(*(open_store(store_url) for _ in range(3)))
    try:
        assert await _versions(stores[0]) == [m.version for m in MIGRATIONS]
    finally:
        for store in stores:
            await store.close()


async def test_a_schema_newer_than_the_code_is_refused(store_url: str) -> None:
    store = await open_store(store_url)
    async with store.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, 'x', 0)"),
            {"v": LATEST + 1},
        )
    await store.close()
    with pytest.raises(ConfigError, match=f"version {LATEST + 1}, newer than this proxy's"):
        await open_store(store_url)


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/a/b/proxy.sqlite3")
    try:
        async with store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 5000
        # The directory was created; another process sees the schema.
        with sqlite3.connect(tmp_path / "a" / "b" / "proxy.sqlite3") as other:
            assert other.execute("SELECT count(*) FROM request_log").fetchone() == (0,)
    finally:
        await store.close()


async def test_plain_urls_map_to_the_async_drivers(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database("plain_urls").replace("postgresql://", "postgres://")
    for written in (url, f"sqlite:///{tmp_path}/x.sqlite3"):
        store = await open_store(written)
        try:
            async with store.engine.connect() as conn:
                assert (await conn.execute(select(1))).scalar() == 1
        finally:
            await store.close()
    assert store.engine.dialect.driver == "aiosqlite"


async def test_a_store_that_does_not_open_is_a_clear_error_without_the_password(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    cases = {
        # Nothing listens there.
        "postgresql://bob:hunter2@127.0.0.1:1/proxy": "ConnectionRefusedError",
        # No such database, no such role.
        postgres_server.url("missing"): 'database "missing" does not exist',
        f"postgresql://bob:hunter2@127.0.0.1:{postgres_server.port}/postgres": 'role "bob"',
        # The file's directory cannot be made; the file is not a database.
        f"sqlite:///{blocked}/proxy.sqlite3": "cannot create",
        f"sqlite:///{blocked}": "file is not a database",
    }
    for url, reason in cases.items():
        with pytest.raises(ConfigError) as raised:
            await open_store(url)
        message = str(raised.value)
        assert message.startswith("proxy.store: "), message
        assert reason in message, message
        assert "hunter2" not in message
        assert "\n" not in message


def test_a_url_that_cannot_be_a_store_is_refused_when_the_config_is_read() -> None:
    for url, reason in {
        "mysql://u:hunter2@db/proxy": "unsupported scheme 'mysql'",
        "sqlite:///:memory:": "name a database file",
        "postgresql://u:hunter2@db": "name the database",
        "not a url at all": "is not a store URL",
        "postgresql://u:hunter2@db/x?sslmode=sometimes": "sslmode must be one of",
    }.items():
        with pytest.raises(ConfigError) as raised:
            parse_config({"proxy": {"store": url}}, {})
        assert str(raised.value).startswith("proxy.store: ")
        assert reason in str(raised.value)
        assert "hunter2" not in str(raised.value)


def test_store_and_log_settings_are_read_with_their_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROXY_DATA_DIR", raising=False)
    config = parse_config({}, {})
    assert config.proxy.data_dir == "data"
    assert config.proxy.store_url == "sqlite:///data/proxy.sqlite3"
    assert config.proxy.store_pool_size == 5
    logs = config.logs
    assert (logs.enabled, logs.content, logs.retention_days) == (True, False, 30.0)
    assert (logs.queue_max_rows, logs.batch_max_rows, logs.flush_interval_ms) == (10_000, 500, 500)

    monkeypatch.setenv("PROXY_DATA_DIR", "/srv/proxy")
    from_env = parse_config({}, {})
    assert from_env.proxy.store_url == "sqlite:////srv/proxy/proxy.sqlite3"
    configured = parse_config(
        {
            "proxy": {"data_dir": "/var/lib/p", "store": "env.STORE", "store_pool_size": 12},
            "logs": {"enabled": False, "content": True, "retention_days": 7, "queue_max_rows": 5,
                     "batch_max_rows": 2, "flush_interval_ms": 50},
        },
        {"STORE": "postgresql://u:pw@db/proxy"},
    )  # fmt: skip
    assert configured.proxy.store_url == "postgresql://u:pw@db/proxy"
    assert "pw" not in repr(configured.proxy)
    assert configured.proxy.store_pool_size == 12
    assert configured.logs.retention_days == 7
    assert configured.logs.flush_interval_ms == 50
    for bad, path in (
        ({"logs": {"retention_days": -1}}, "logs.retention_days"),
        ({"logs": {"queue_max_rows": 0}}, "logs.queue_max_rows"),
        ({"logs": {"content": "yes"}}, "logs.content"),
        ({"proxy": {"store_pool_size": 0}}, "proxy.store_pool_size"),
    ):
        with pytest.raises(ConfigError, match=path):
            parse_config(bad, {})
