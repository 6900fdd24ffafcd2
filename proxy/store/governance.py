"""Virtual keys, rate limits and budgets managed at run time, as the store keeps them.

Each change is one transaction: the entry, the checks it depends on (what it names
exists; what it is named by is not deleted) and the version every replica polls move
together, so a replica reads all of a change or none of it, and of two admins changing
the same entry at once the later one wins whole. A change that cannot be made says why
(:class:`Refusal`) and leaves the store as it was. A deleted virtual key's id is retired,
never given to another key: logs, usage, counters and JWTs name keys by id.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .engine import Store
from .log_rows import now_ms
from .tables import governance_entries, governance_retired, governance_version

log = logging.getLogger(__name__)

Kind = Literal["virtual_key", "rate_limit", "budget"]

RefusalReason = Literal["missing", "exists", "in_use", "no_reference", "value_taken", "id_retired"]


@dataclass(frozen=True)
class Entry:
    """One managed virtual key, rate limit or budget."""

    kind: Kind
    id: str
    #: The config file's shape, without ``id`` (and a key's ``value``).
    spec: Mapping[str, Any]
    #: For a virtual key: the SHA-256 of its value (hex) and its last four characters.
    value_hash: str | None = None
    value_last4: str | None = None
    #: Epoch milliseconds.
    created_at: int = 0
    updated_at: int = 0
    #: Who made the last change (an admin credential's name, never the credential).
    actor: str = ""

    @property
    def rate_limit_id(self) -> str | None:
        """The rate limit a virtual key names."""
        value = self.spec.get("rate_limit_id")
        return value if isinstance(value, str) else None

    @property
    def budget_id(self) -> str | None:
        """The budget a virtual key names."""
        value = self.spec.get("budget_id")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Reference:
    """An entry a change needs to exist (a key's budget), and the field that names it."""

    kind: Kind
    id: str
    param: str


#: Makes an entry's new spec of its current one, with the entries the new one needs to
#: exist; raises to leave it as it is.
Revise = Callable[[Mapping[str, Any]], tuple[Mapping[str, Any], Sequence[Reference]]]


@dataclass(frozen=True)
class Refusal:
    """Why a change was not made."""

    reason: RefusalReason
    message: str
    param: str | None = None


class GovernanceStore:
    """Reads and changes the managed entries of an open :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def version(self) -> int:
        """The number every change moves on (one primary-key read: cheap to poll)."""
        async with self._store.engine.connect() as conn:
            found = await conn.scalar(
                select(governance_version.c.version).where(governance_version.c.id == 1)
            )
        return int(found or 0)

    async def snapshot(self) -> tuple[int, list[Entry]]:
        """The version and every entry as of it (read in one transaction)."""
        async with self._store.engine.connect() as conn, conn.begin():
            version = await conn.scalar(
                select(governance_version.c.version).where(governance_version.c.id == 1)
            )
            rows = await conn.execute(
                select(governance_entries).order_by(
                    governance_entries.c.kind, governance_entries.c.id
                )
            )
            entries = [_entry(row._mapping) for row in rows]
            return int(version or 0), [entry for entry in entries if entry is not None]

    async def create(self, entry: Entry, needs: Sequence[Reference] = ()) -> Entry | Refusal:
        """Add ``entry`` (its times and actor as given), if its id is free and what it
        ``needs`` exists."""
        c = governance_entries.c
        async with self._change() as conn:
            taken = await conn.scalar(
                select(func.count()).where(c.kind == entry.kind, c.id == entry.id)
            )
            if taken:
                return Refusal("exists", f"{_NAMES[entry.kind]} {entry.id} exists", "id")
            retired = await conn.scalar(
                select(func.count()).where(
                    governance_retired.c.kind == entry.kind, governance_retired.c.id == entry.id
                )
            )
            if retired:
                return Refusal(
                    "id_retired",
                    f"{_NAMES[entry.kind]} {entry.id} was deleted, and its id is not given "
                    "to another: its logs, usage and tokens name it. Choose another id",
                    "id",
                )
            missing = await _missing(conn, needs)
            if missing is not None:
                return missing
            try:
                async with conn.begin_nested():
                    await conn.execute(governance_entries.insert().values(**_columns(entry)))
            except IntegrityError:
                # Changes are serialised, so only the value can be taken: by a key made
                # with it since the caller checked (the id was checked just above).
                return _value_taken()
            await _moved_on(conn)
            return entry

    async def update(
        self, kind: Kind, entry_id: str, revise: Revise, actor: str
    ) -> Entry | Refusal:
        """Give an entry the spec ``revise`` makes of its current one (and check the
        entries it needs exist), in one transaction that holds the entry meanwhile: of two
        changes at once, the later one revises what the earlier one left. What ``revise``
        raises leaves the entry as it was."""
        c = governance_entries.c
        async with self._change() as conn:
            found = (
                await conn.execute(
                    select(governance_entries)
                    .where(c.kind == kind, c.id == entry_id)
                    .with_for_update()
                )
            ).first()
            if found is None:
                return _missing_entry(kind, entry_id)
            current = _entry({**found._mapping, "kind": kind, "id": entry_id})
            # One whose spec is not JSON is made anew of the change alone.
            spec, needs = revise(current.spec if current is not None else {})
            changes = {
                "spec": orjson.dumps(spec).decode(),
                "rate_limit_id": spec.get("rate_limit_id"),
                "budget_id": spec.get("budget_id"),
                "updated_at": now_ms(),
                "actor": actor,
            }
            return await _changed(conn, kind, entry_id, changes, needs)

    async def rotate(
        self, entry_id: str, value_hash: str, value_last4: str, actor: str
    ) -> Entry | Refusal:
        """Give a virtual key a new value (its digest): the old one is refused from the
        moment this commits."""
        changes = {
            "value_hash": value_hash,
            "value_last4": value_last4,
            "updated_at": now_ms(),
            "actor": actor,
        }
        async with self._change() as conn:
            try:
                async with conn.begin_nested():
                    return await _changed(conn, "virtual_key", entry_id, changes, ())
            except IntegrityError:
                return _value_taken()

    async def delete(self, kind: Kind, entry_id: str) -> Refusal | None:
        """Remove an entry, unless a virtual key still names it."""
        c = governance_entries.c
        async with self._change() as conn:
            if kind != "virtual_key":
                named_by = c.rate_limit_id if kind == "rate_limit" else c.budget_id
                users = (
                    await conn.scalars(
                        select(c.id)
                        .where(c.kind == "virtual_key", named_by == entry_id)
                        .order_by(c.id)
                        .limit(5)
                    )
                ).all()
                if users:
                    return Refusal(
                        "in_use",
                        f"{_NAMES[kind]} {entry_id} is named by virtual keys "
                        f"{', '.join(users)}: change them first",
                    )
            done = await conn.execute(
                delete(governance_entries).where(c.kind == kind, c.id == entry_id)
            )
            if not done.rowcount:
                return _missing_entry(kind, entry_id)
            if kind == "virtual_key":
                await conn.execute(
                    insert(governance_retired).values(kind=kind, id=entry_id, retired_at=now_ms())
                )
            await _moved_on(conn)
            return None

    @asynccontextmanager
    async def _change(self) -> AsyncIterator[AsyncConnection]:
        """One change's transaction, run alone: a change reads (is the budget a key names
        still there? is the one being deleted named by a key?), then writes, and two
        changes that each read before the other wrote could both be made (a key naming
        a deleted budget). SQLite takes its write lock at BEGIN; PostgreSQL locks the
        version row every change moves on, first thing."""
        async with self._store.serialized(_lock_version) as conn:
            yield conn


_NAMES: Mapping[Kind, str] = {
    "virtual_key": "virtual key",
    "rate_limit": "rate limit",
    "budget": "budget",
}


async def _changed(
    conn: AsyncConnection,
    kind: Kind,
    entry_id: str,
    changes: Mapping[str, Any],
    needs: Sequence[Reference],
) -> Entry | Refusal:
    """Make ``changes`` to an entry in ``conn``'s transaction, if what it ``needs``
    exists; the entry as it now is."""
    c = governance_entries.c
    missing = await _missing(conn, needs)
    if missing is not None:
        return missing
    done = await conn.execute(
        update(governance_entries).where(c.kind == kind, c.id == entry_id).values(**changes)
    )
    if not done.rowcount:
        return _missing_entry(kind, entry_id)
    await _moved_on(conn)
    row = (
        await conn.execute(select(governance_entries).where(c.kind == kind, c.id == entry_id))
    ).one()
    return _entry(row._mapping) or _missing_entry(kind, entry_id)


async def _moved_on(conn: AsyncConnection) -> None:
    """Move the version on, in the change's transaction: replicas polling it read the
    change once it commits."""
    await conn.execute(
        update(governance_version)
        .where(governance_version.c.id == 1)
        .values(version=governance_version.c.version + 1)
    )


def _value_taken() -> Refusal:
    return Refusal(
        "value_taken",
        "value: another virtual key has this value; leave it out to have one generated",
        "value",
    )


def _missing_entry(kind: Kind, entry_id: str) -> Refusal:
    return Refusal("missing", f"no {_NAMES[kind]} {entry_id} is managed here")


async def _missing(conn: AsyncConnection, needs: Sequence[Reference]) -> Refusal | None:
    """The first of ``needs`` that does not exist, as a refusal naming its field."""
    c = governance_entries.c
    for need in needs:
        found = await conn.scalar(select(func.count()).where(c.kind == need.kind, c.id == need.id))
        if not found:
            return Refusal("no_reference", f"no {_NAMES[need.kind]} {need.id!r}", need.param)
    return None


def new_entry(
    kind: Kind,
    entry_id: str,
    spec: Mapping[str, Any],
    actor: str,
    *,
    value_hash: str | None = None,
    value_last4: str | None = None,
) -> Entry:
    """An entry made now by ``actor``."""
    now = now_ms()
    return Entry(kind, entry_id, spec, value_hash, value_last4, now, now, actor)


def _columns(entry: Entry) -> dict[str, Any]:
    return {
        "kind": entry.kind,
        "id": entry.id,
        "spec": orjson.dumps(entry.spec).decode(),
        "rate_limit_id": entry.rate_limit_id,
        "budget_id": entry.budget_id,
        "value_hash": entry.value_hash,
        "value_last4": entry.value_last4,
        "created_at": entry.created_at,
        "updated_at": entry.updated_at,
        "actor": entry.actor,
    }


def _entry(row: Mapping[Any, Any]) -> Entry | None:
    """A row as an entry; None (and a warning) for one whose spec is not JSON: written by
    hand, say. One bad row must not keep every other change from being read."""
    try:
        spec = orjson.loads(row["spec"])
    except orjson.JSONDecodeError:
        spec = None
    if not isinstance(spec, dict):
        log.warning(
            "governance: %s %s is left out: its spec is not a JSON object", row["kind"], row["id"]
        )
        return None
    return Entry(
        kind=row["kind"],
        id=row["id"],
        spec=spec,
        value_hash=row["value_hash"],
        value_last4=row["value_last4"],
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
        actor=row["actor"],
    )


async def _lock_version(conn: AsyncConnection) -> None:
    """PostgreSQL's lock for a governance change: the version row every change moves on."""
    await conn.execute(
        select(governance_version.c.version).where(governance_version.c.id == 1).with_for_update()
    )
