"""The store's URL: what users write (``sqlite:///<path>``, ``postgresql://...``) and what
SQLAlchemy's async drivers are given (``sqlite+aiosqlite``, ``postgresql+asyncpg``)."""

from __future__ import annotations

import importlib.util
import re
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..config.schema import ConfigError

Backend = Literal["sqlite", "postgresql"]

#: The schemes accepted, and the async driver each one is served by.
_DRIVERS: dict[str, tuple[Backend, str]] = {
    "sqlite": ("sqlite", "sqlite+aiosqlite"),
    "sqlite+aiosqlite": ("sqlite", "sqlite+aiosqlite"),
    "postgresql": ("postgresql", "postgresql+asyncpg"),
    "postgres": ("postgresql", "postgresql+asyncpg"),
    "postgresql+asyncpg": ("postgresql", "postgresql+asyncpg"),
}

#: libpq's ``sslmode`` values, which asyncpg takes as its ``ssl`` argument.
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})

_PASSWORD = re.compile(r"(://[^:/@]*:).*@")


def redacted(raw: str) -> str:
    """``raw`` with its password replaced by ``***``, for messages and logs (up to the
    last ``@``: a password with an unencoded ``@`` is blotted out whole too)."""
    return _PASSWORD.sub(r"\1***@", raw)


def check_store_url(raw: str, where: str = "proxy.store") -> tuple[Backend, URL]:
    """The store's backend and its async driver's URL; a :class:`ConfigError` naming
    ``where`` and the URL (without its password) when it cannot be one."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(
            f"{where}: {redacted(raw)!r} is not a store URL "
            "(sqlite:///<path> or postgresql://user:password@host/database)"
        ) from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise ConfigError(
            f"{where}: {redacted(raw)!r}: unsupported scheme {url.drivername!r} "
            "(sqlite:///<path> or postgresql://...)"
        )
    backend, drivername = driver
    if backend == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            raise ConfigError(
                f"{where}: {redacted(raw)!r}: name a database file (sqlite:///<path>); "
                "an in-memory database would not outlive its connection"
            )
        return backend, url.set(drivername=drivername)
    if importlib.util.find_spec("asyncpg") is None:
        raise ConfigError(
            f"{where}: the PostgreSQL driver is not installed; "
            "install the postgresql extra: pip install '.[postgresql]'"
        )
    if not url.database:
        raise ConfigError(f"{where}: {redacted(raw)!r}: name the database (postgresql://.../name)")
    return backend, _asyncpg_query(url.set(drivername=drivername), where, raw)


def _asyncpg_query(url: URL, where: str, raw: str) -> URL:
    """libpq's ``sslmode`` as asyncpg's ``ssl`` (users copy URLs from libpq tools)."""
    mode = url.query.get("sslmode")
    if mode is None:
        return url
    if not isinstance(mode, str) or mode not in _SSL_MODES:
        raise ConfigError(
            f"{where}: {redacted(raw)!r}: sslmode must be one of {sorted(_SSL_MODES)}"
        )
    return url.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})
