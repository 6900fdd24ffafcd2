"""Governance at run time: the store's virtual keys, rate limits and budgets kept in step
with every replica's key directory.

A replica reads the store's entries at start, and again whenever their version moves
on: at once when another replica announces a change over Redis pub/sub (with
``proxy.redis_url``), and in any case when its poll (``proxy.governance_poll_s``,
0.5 s: one primary-key read) sees it, so an announcement lost while Redis was away
still arrives within a second. A key that can no longer be used (deleted,
deactivated, or given a new value) ends its realtime sessions here with an ``error``
event and close 1008; the directory already refuses it for anything new.

A store that cannot be opened at start (a read-only ``data_dir`` with
``logs.enabled: false``, say) leaves the proxy with the config file's governance
only (a warning), and the governance API answers 503; it does not stop the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from ..app_state import AUTH_KEY, CONFIG_KEY, STATE_KEY
from ..config import BudgetConfig, ConfigError, GovernanceConfig, RateLimitConfig
from ..errors import ProxyError
from ..outage import Outage
from ..realtime.session import RealtimeSession
from ..store.app_key import STORE_KEY
from ..store.engine import Store, open_store
from ..store.governance import Entry, GovernanceStore
from .directory import KeyDirectory, KnownKey
from .specs import stored_budget, stored_key, stored_rate_limit

log = logging.getLogger(__name__)

#: Where replicas announce a change (the message is the new version).
CHANNEL = "proxy:governance:changed"

_T = TypeVar("_T")


class PubSub(Protocol):
    """What is used of a redis-py ``PubSub``."""

    async def subscribe(self, *channels: str) -> Any:
        """Listen to ``channels``."""

    # redis-py's own signature, timeout and all.
    async def get_message(
        self,
        ignore_subscribe_messages: bool = False,
        timeout: float | None = 0.0,  # noqa: ASYNC109
    ) -> Any:
        """The next message, or None after ``timeout``."""

    async def aclose(self) -> None:
        """Unsubscribe, and give the connection back."""


class Announcer(Protocol):
    """What is used of a redis-py client: announcing changes, and hearing of them."""

    async def publish(self, channel: str, message: str) -> Any:
        """Send ``message`` to ``channel``'s subscribers."""

    def pubsub(self) -> PubSub:
        """A subscription of its own."""


@dataclass(frozen=True)
class Catalog:
    """What the store and the config file hold together, as of one version."""

    version: int
    entries: tuple[Entry, ...]
    rate_limits: Mapping[str, RateLimitConfig]
    budgets: Mapping[str, BudgetConfig]


class ManagedGovernance:
    """Keeps ``directory`` in step with the store's entries (:meth:`run` in the
    background; :meth:`changed` after a change of this replica's own)."""

    def __init__(
        self,
        store: GovernanceStore,
        config: GovernanceConfig,
        directory: KeyDirectory,
        sessions: Set[RealtimeSession],
        *,
        redis: Announcer | None = None,
        poll_s: float = 0.5,
        replica: str = "",
    ) -> None:
        self.store = store
        self.config = config
        #: This replica's name, for the request log's rows of changes.
        self.replica = replica
        self._directory = directory
        self._sessions = sessions
        self._redis = redis
        self._poll_s = poll_s
        self._version = -1
        self._refreshing = asyncio.Lock()
        self._nudged = asyncio.Event()
        self._ending: set[asyncio.Task[None]] = set()

    async def catalog(self) -> Catalog:
        """The store's entries now, with the rate limits and budgets keys may name."""
        version, entries = await self.store.snapshot()
        rate_limits: dict[str, RateLimitConfig] = {}
        budgets: dict[str, BudgetConfig] = {}
        for entry in entries:
            if entry.kind == "rate_limit":
                limit = _readable(entry, lambda e: stored_rate_limit(e.id, e.spec))
                if limit is not None:
                    rate_limits[entry.id] = limit
            elif entry.kind == "budget":
                budget = _readable(entry, lambda e: stored_budget(e.id, e.spec))
                if budget is not None:
                    budgets[entry.id] = budget
        # The config file's win: the API makes no entry with one of their ids.
        rate_limits.update(self.config.rate_limits)
        budgets.update(self.config.budgets)
        return Catalog(version, tuple(entries), rate_limits, budgets)

    async def refresh(self) -> None:
        """Read the store again if it changed since it was last read, and apply it."""
        async with self._refreshing:
            if await self.store.version() == self._version:
                return
            catalog = await self.catalog()
            if catalog.version <= self._version:
                return  # a later one is applied already
            self._apply(catalog)

    async def changed(self) -> None:
        """A change of this replica's own is in the store: apply it here before its
        answer goes, and announce it to the others."""
        await self.refresh()
        if self._redis is None:
            return
        try:
            await self._redis.publish(CHANNEL, str(self._version))
        except Exception as exc:  # redis-py raises several unrelated classes
            log.warning("governance: could not announce a change (%s); replicas poll for it", exc)

    async def run(self) -> None:
        """Follow the store until cancelled: on each announcement, and at each poll."""
        redis = self._redis
        listening = asyncio.ensure_future(self._listen(redis)) if redis is not None else None
        outage = Outage(log, "governance: reading the store")
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_s):
                        await self._nudged.wait()
                self._nudged.clear()
                try:
                    await self.refresh()
                except Exception:
                    # Keys stay as last read: the store is needed to change them, not to
                    # use them. And this loop is the one thing that carries other
                    # replicas' changes here: whatever a refresh raises (a store down, a
                    # row no one foresaw) must not end it, or keys stay as they are
                    # until a restart.
                    outage.failed()
                else:
                    outage.worked()
        finally:
            if listening is not None:
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)

    async def aclose(self) -> None:
        """Wait for the sessions being ended to be told why."""
        await asyncio.gather(*self._ending, return_exceptions=True)

    async def _listen(self, redis: Announcer) -> None:
        """Nudge :meth:`run` on every announcement; subscribe again after Redis fails."""
        failures = 0
        while True:
            pubsub = redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                if failures:
                    log.warning("governance: subscribed to changes again")
                failures = 0
                self._nudged.set()  # a change may have been missed while unsubscribed
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        self._nudged.set()
            except Exception as exc:  # redis-py raises several unrelated classes
                if not failures:
                    log.warning("governance: not subscribed to changes (%s); polling", exc)
                failures += 1
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _apply(self, catalog: Catalog) -> None:
        """Make ``catalog`` the directory's managed keys, and end the realtime sessions of
        the keys that can no longer be used."""
        before = self._directory.usable()
        managed = []
        for entry in catalog.entries:
            if entry.kind != "virtual_key" or entry.value_hash is None:
                continue
            known = _readable(entry, lambda e: _known(e, catalog))
            if known is not None:
                managed.append(known)
        self._directory.replace_managed(managed)
        self._version = catalog.version
        after = self._directory.usable()
        self._end_sessions(
            {
                key_id: refusal
                for key_id in _revoked(before, after)
                if (refusal := self._directory.refusal(key_id, before[key_id])) is not None
            }
        )

    def _end_sessions(self, why: Mapping[str, ProxyError]) -> None:
        for session in list(self._sessions):
            refusal = why.get(session.key_id or "")
            if refusal is None:
                continue
            task = asyncio.ensure_future(session.revoke(refusal))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)


def _known(entry: Entry, catalog: Catalog) -> KnownKey:
    """A stored key as the directory knows it. Raises :class:`ConfigError`."""
    try:
        digest = bytes.fromhex(entry.value_hash or "")
    except ValueError:
        raise ConfigError("its value_hash is not hex") from None
    if len(digest) != 32:
        raise ConfigError("its value_hash is not a SHA-256")
    return KnownKey(digest, stored_key(entry.id, entry.spec, catalog.rate_limits, catalog.budgets))


def _revoked(before: Mapping[str, bytes], after: Mapping[str, bytes]) -> Iterable[str]:
    """The keys usable before and not now with the same value."""
    return [key_id for key_id, digest in before.items() if after.get(key_id) != digest]


def _readable(entry: Entry, read: Callable[[Entry], _T]) -> _T | None:
    """``entry`` read back, or None when it no longer reads (what it names is gone from
    the config file, say): a key is refused rather than used on terms no one set."""
    try:
        return read(entry)
    except ConfigError as exc:
        log.warning("governance: %s %s is left out: %s", entry.kind, entry.id, exc)
        return None


#: Governance at run time, while the app runs.
GOVERNANCE_KEY = web.AppKey("managed_governance", ManagedGovernance)


def managed_governance(replica: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup context of governance at run time (after the stores': it needs their
    Redis client): on the store the request log opened (or one of its own with
    ``logs.enabled: false``), read before the app serves, and followed until it stops.
    ``replica`` names this one in the request log's rows of changes."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG_KEY]
        store: Store | None = app.get(STORE_KEY)
        own = None
        if store is None:
            try:
                store = own = await open_store(config.proxy.store_url, pool_size=1)
            except (SQLAlchemyError, OSError, ConfigError) as exc:
                # Without the request log, governance at run time must not be what
                # stops a start that worked before it existed.
                log.warning(
                    "governance: cannot open the store (%s); only the config file's keys, "
                    "rate limits and budgets are used, and the governance API answers 503",
                    exc,
                )
                yield
                return
        state = app[STATE_KEY]
        managed = ManagedGovernance(
            GovernanceStore(store),
            config.governance,
            app[AUTH_KEY].keys,
            state.sessions,
            redis=state.redis,
            poll_s=config.proxy.governance_poll_s,
            replica=replica,
        )
        await managed.refresh()
        app[GOVERNANCE_KEY] = managed
        following = asyncio.ensure_future(managed.run())
        try:
            yield
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await managed.aclose()
            if own is not None:
                await own.close()

    return lifetime
