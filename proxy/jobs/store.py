"""The store as the jobs use it: on SQLite one connection at a time, on PostgreSQL a pool.

SQLite takes one writer at a time anyway; taking turns here as well keeps the
jobs to the one connection (and file descriptors) they opened at start, however
their loops and requests overlap, and keeps them off the request log's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncConnection

from ..store.engine import Store


class JobStore:
    """Connections to ``store`` for the jobs' queries, one at a time on SQLite."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._turn = asyncio.Lock() if store.backend == "sqlite" else None

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.store.backend

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection, its transaction the caller's to begin."""
        async with self._taking_turns(), self.store.engine.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed on the way out."""
        async with self._taking_turns(), self.store.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _taking_turns(self) -> AsyncIterator[None]:
        if self._turn is None:
            yield
            return
        async with self._turn:
            yield
