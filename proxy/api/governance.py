"""``/api/governance/{virtual-keys,rate-limits,budgets}[/{id}]``: governance changed at run
time, in the config file's shapes.

An admin credential only (a virtual key, which reads its own rows of the log API, may
change nothing here: 403). A key's value is generated unless supplied, shown once (in
the answer that made it, or that rotated it), then only its last four characters. What
the config file holds is listed too (``source: "config"``) and cannot be changed here
(409). Every change is one transaction (:mod:`proxy.store.governance`), reaches this
replica before its answer (unless reading it back fails: it is answered as made, and the
poll applies it) and the others within a second (:mod:`proxy.governance.runtime`), and
is a row of the request log (``governance.<kind>.<action>``) naming who made it.
"""

from __future__ import annotations

import functools
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from ..answers.responses import json_response
from ..app_state import AUTH_KEY, FACTS_KEY, REQUEST_LOG_KEY, ROUTER_KEY
from ..config import GovernanceConfig, VirtualKeyConfig
from ..errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProxyError,
    store_unreachable,
)
from ..form.json_body import read_json_object
from ..governance.credentials import VIRTUAL_KEY_PREFIX
from ..governance.directory import key_digest
from ..governance.runtime import GOVERNANCE_KEY, Catalog, ManagedGovernance
from ..governance.specs import (
    budget_spec,
    check_id,
    check_value,
    key_spec,
    rate_limit_spec,
    read_budget,
    read_rate_limit,
    read_virtual_key,
)
from ..ids import new_id
from ..store.governance import Entry, Kind, Reference, Refusal, new_entry
from ..store.log_rows import LogRow, rfc3339
from .access import reader_of

log = logging.getLogger(__name__)

PREFIX = "/api/governance"
#: The largest body a change may have: a key's spec is well under a kilobyte.
MAX_BODY_BYTES = 64 * 1024
#: Fields of the config file's keys that keys made here may not have yet: async jobs read
#: a key's webhook from the config file only, and would ignore these.
CONFIG_ONLY_KEY_FIELDS = ("webhook_url", "webhook_secret")

#: Reads a change's body (its ``id`` in it) as kept: the spec, and the stored entries it
#: names (which must still exist when it is written). A 400 naming the field.
SpecReader = Callable[
    [web.Request, ManagedGovernance, Catalog, dict[str, Any]],
    tuple[dict[str, Any], list[Reference]],
]


def _rate_limit_read(
    request: web.Request, managed: ManagedGovernance, catalog: Catalog, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Reference]]:
    return rate_limit_spec(read_rate_limit(body)), []


def _budget_read(
    request: web.Request, managed: ManagedGovernance, catalog: Catalog, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Reference]]:
    return budget_spec(read_budget(body)), []


def _key_read(
    request: web.Request, managed: ManagedGovernance, catalog: Catalog, body: dict[str, Any]
) -> tuple[dict[str, Any], list[Reference]]:
    for name in CONFIG_ONLY_KEY_FIELDS:
        if body.get(name) is not None:
            raise InvalidRequestError(
                f"{name}: set per-key webhooks in the config file for now (async jobs read "
                "them there only)",
                param=name,
                code="unsupported_field",
            )
    if "is_active" in body and body["is_active"] is None:
        # The file's reader takes null for "left out", which is true: not a way to clear.
        raise InvalidRequestError(
            "is_active: expected true or false, got null", param="is_active", code="invalid_value"
        )
    providers = request.app[ROUTER_KEY].providers
    key = read_virtual_key(body, providers, catalog.rate_limits, catalog.budgets)
    needs = []
    if key.rate_limit is not None and key.rate_limit.id not in managed.config.rate_limits:
        needs.append(Reference("rate_limit", key.rate_limit.id, "rate_limit_id"))
    if key.budget is not None and key.budget.id not in managed.config.budgets:
        needs.append(Reference("budget", key.budget.id, "budget_id"))
    return key_spec(key), needs


def _configured_keys(config: GovernanceConfig) -> Mapping[str, VirtualKeyConfig]:
    return {key.id: key for key in config.virtual_keys}


def _listed_keys(config: GovernanceConfig) -> list[dict[str, Any]]:
    return [
        {**_from_config(key.id, key_spec(key)), "value_last4": key.value[-4:]}
        for key in config.virtual_keys
    ]


def _listed_rate_limits(config: GovernanceConfig) -> list[dict[str, Any]]:
    return [_from_config(i, rate_limit_spec(v)) for i, v in config.rate_limits.items()]


def _listed_budgets(config: GovernanceConfig) -> list[dict[str, Any]]:
    return [_from_config(i, budget_spec(v)) for i, v in config.budgets.items()]


@dataclass(frozen=True)
class Resource:
    """One kind of entry, as the API names it, and how its bodies are read."""

    kind: Kind
    #: Its path segment, its list's name in answers, and what messages call it.
    path: str
    listed_as: str
    what: str
    #: Ids made for entries created without one start so.
    id_prefix: str
    read: SpecReader
    #: The config file's entries, by id, and as listed.
    configured: Callable[[GovernanceConfig], Mapping[str, Any]]
    listed: Callable[[GovernanceConfig], list[dict[str, Any]]]
    #: Whether its entries have a value (a key's): generated, rotated, shown once.
    has_value: bool = False


VIRTUAL_KEYS = Resource(
    "virtual_key",
    "virtual-keys",
    "virtual_keys",
    "virtual key",
    "vk",
    _key_read,
    _configured_keys,
    _listed_keys,
    has_value=True,
)
RATE_LIMITS = Resource(
    "rate_limit",
    "rate-limits",
    "rate_limits",
    "rate limit",
    "rl",
    _rate_limit_read,
    lambda config: config.rate_limits,
    _listed_rate_limits,
)
BUDGETS = Resource(
    "budget",
    "budgets",
    "budgets",
    "budget",
    "budget",
    _budget_read,
    lambda config: config.budgets,
    _listed_budgets,
)

Handler = Callable[[web.Request], Awaitable[web.Response]]


def add_governance_api(app: web.Application) -> None:
    """Route the governance API."""
    for resource in (VIRTUAL_KEYS, RATE_LIMITS, BUDGETS):
        many, one = f"{PREFIX}/{resource.path}", f"{PREFIX}/{resource.path}/{{id}}"
        app.router.add_get(many, _bound(list_entries, resource))
        app.router.add_post(many, _bound(create_entry, resource))
        app.router.add_get(one, _bound(get_entry, resource))
        app.router.add_put(one, _bound(update_entry, resource))
        app.router.add_delete(one, _bound(delete_entry, resource))
    app.router.add_post(f"{PREFIX}/virtual-keys/{{id}}/rotate", _bound(rotate_key, VIRTUAL_KEYS))


def _bound(
    handler: Callable[[web.Request, Resource], Awaitable[web.Response]], resource: Resource
) -> Handler:
    """``handler`` for ``resource``'s routes; a store that cannot be reached is a 503."""

    @functools.wraps(handler)
    async def bound(request: web.Request) -> web.Response:
        try:
            return await handler(request, resource)
        except (SQLAlchemyError, OSError) as exc:
            raise store_unreachable("governance", "governance_store_unavailable") from exc

    return bound


async def list_entries(request: web.Request, resource: Resource) -> web.Response:
    """``GET``: the config file's entries, then the store's."""
    _operator(request)
    catalog = await _managed(request).catalog()
    return json_response({resource.listed_as: _listed(request, resource, catalog)})


async def get_entry(request: web.Request, resource: Resource) -> web.Response:
    """``GET .../{id}``: one entry."""
    _operator(request)
    entry_id = check_id(request.match_info["id"])
    catalog = await _managed(request).catalog()
    for shown in _listed(request, resource, catalog):
        if shown["id"] == entry_id:
            return json_response(shown)
    raise _not_found(resource, entry_id)


async def create_entry(request: web.Request, resource: Resource) -> web.Response:
    """``POST``: a new entry (a key's value in the answer, this once)."""
    actor = _operator(request)
    body = await _body(request)
    given = body.pop("id", None)
    entry_id = check_id(given) if given is not None else new_id(resource.id_prefix)
    managed = _managed(request)
    _writable(managed, resource, entry_id, creating=True)
    catalog = await managed.catalog()
    value = None
    if resource.has_value:
        value = _new_value(request, body.pop("value", None))
        body["value"] = value
    spec, needs = resource.read(request, managed, catalog, {**body, "id": entry_id})
    entry = new_entry(
        resource.kind,
        entry_id,
        spec,
        actor,
        value_hash=key_digest(value).hex() if value is not None else None,
        value_last4=value[-4:] if value is not None else None,
    )
    made = _made(resource, await managed.store.create(entry, needs))
    _record(request, managed, resource, made.id, "create", 201, actor)
    await _applied(managed)
    shown = _shown_entry(resource, made)
    if value is not None:
        shown["value"] = value  # shown once: only its digest is kept
    return json_response(shown, status=201)


async def update_entry(request: web.Request, resource: Resource) -> web.Response:
    """``PUT .../{id}``: the fields given replace the entry's (``null`` clears one); those
    left out stay as they are. Of two changes at once, the later one applies to what the
    earlier one left, and neither is ever half made."""
    actor = _operator(request)
    entry_id = check_id(request.match_info["id"])
    body = await _body(request)
    given = body.pop("id", entry_id)
    if given != entry_id:
        raise InvalidRequestError(
            f"id: the body's id ({given!r}) is not the path's", param="id", code="id_mismatch"
        )
    if "value" in body:
        raise InvalidRequestError(
            "value: a key's value is changed by POST .../rotate only",
            param="value",
            code="value_not_updatable",
        )
    managed = _managed(request)
    _writable(managed, resource, entry_id)
    catalog = await managed.catalog()

    def revise(current: Mapping[str, Any]) -> tuple[dict[str, Any], list[Reference]]:
        revised = {**current, **body, "id": entry_id}
        if resource.has_value:
            revised["value"] = VIRTUAL_KEY_PREFIX  # read by the key's reader; never kept
        return resource.read(request, managed, catalog, revised)

    made = _made(resource, await managed.store.update(resource.kind, entry_id, revise, actor))
    _record(request, managed, resource, entry_id, "update", 200, actor)
    await _applied(managed)
    return json_response(_shown_entry(resource, made))


async def delete_entry(request: web.Request, resource: Resource) -> web.Response:
    """``DELETE .../{id}``: a key is refused from then on (its realtime sessions end); a
    rate limit or budget a key still names is not deleted (409)."""
    actor = _operator(request)
    entry_id = check_id(request.match_info["id"])
    managed = _managed(request)
    _writable(managed, resource, entry_id)
    refusal = await managed.store.delete(resource.kind, entry_id)
    if refusal is not None:
        raise _refused(resource, refusal)
    _record(request, managed, resource, entry_id, "delete", 200, actor)
    await _applied(managed)
    return json_response({"id": entry_id, "object": resource.kind, "deleted": True})


async def rotate_key(request: web.Request, resource: Resource) -> web.Response:
    """``POST .../virtual-keys/{id}/rotate``: a new value, shown this once; the old one is
    refused from the moment the answer is sent (on every replica within a second), and
    the key's realtime sessions end."""
    actor = _operator(request)
    entry_id = check_id(request.match_info["id"])
    managed = _managed(request)
    _writable(managed, resource, entry_id)
    value = _new_value(request, None)
    made = _made(
        resource, await managed.store.rotate(entry_id, key_digest(value).hex(), value[-4:], actor)
    )
    _record(request, managed, resource, entry_id, "rotate", 200, actor)
    await _applied(managed)
    return json_response({**_shown_entry(resource, made), "value": value})


# --- who, and what --------------------------------------------------------------------------


def _operator(request: web.Request) -> str:
    """Who is asking (for the record of what it changes), or the refusal: as for the log
    API (401 without a credential), and 403 for a virtual key."""
    reader = reader_of(request)
    if not reader.is_operator:
        raise PermissionDeniedError(
            "a virtual key changes and reads no governance: use an admin credential "
            "(governance.admin_keys or an admin JWT)",
            code="admin_required",
        )
    return reader.name or "operator (no credential required here)"


def _managed(request: web.Request) -> ManagedGovernance:
    """Governance at run time, or a 503 when its store could not be opened at start."""
    managed = request.app.get(GOVERNANCE_KEY)
    if managed is None:
        raise store_unreachable("governance", "governance_store_unavailable")
    return managed


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, read under the body clocks and cap, or a 400."""
    return await read_json_object(request, MAX_BODY_BYTES)


async def _applied(managed: ManagedGovernance) -> None:
    """Apply a committed change here and announce it to the other replicas."""
    try:
        await managed.changed()
    except Exception:
        # The change is committed, and the answer must say so, whatever failed after
        # (a retry would make it twice, or be refused): the poll applies it here soon.
        log.exception("governance: a change is made, but not applied here yet")


def _writable(
    managed: ManagedGovernance,
    resource: Resource,
    entry_id: str,
    *,
    creating: bool = False,
) -> None:
    """409 for an entry the config file holds: it is changed there, and read at start."""
    if entry_id not in resource.configured(managed.config):
        return
    raise ConflictError(
        f"{resource.what} {entry_id} is in the config file"
        + (": choose another id" if creating else ", read-only here: change it there"),
        code="exists" if creating else "read_only",
        param="id",
    )


def _new_value(request: web.Request, given: object) -> str:
    """A new key's value: ``given`` (checked), else generated; never one that is a
    credential here already."""
    if given is None:
        return VIRTUAL_KEY_PREFIX + secrets.token_urlsafe(32)
    value = check_value(given)
    if request.app[AUTH_KEY].knows(value):
        raise ConflictError(
            "value: another credential has this value; leave it out to have one generated",
            code="value_taken",
            param="value",
        )
    return value


def _made(resource: Resource, outcome: Entry | Refusal) -> Entry:
    if isinstance(outcome, Refusal):
        raise _refused(resource, outcome)
    return outcome


def _refused(resource: Resource, refusal: Refusal) -> ProxyError:
    """The error a refused change is answered with."""
    if refusal.reason == "missing":
        return NotFoundError(refusal.message, code=f"{resource.kind}_not_found")
    if refusal.reason == "no_reference":
        return InvalidRequestError(refusal.message, param=refusal.param, code="unknown_reference")
    return ConflictError(refusal.message, code=refusal.reason, param=refusal.param)


def _not_found(resource: Resource, entry_id: str) -> NotFoundError:
    return NotFoundError(f"no {resource.what} {entry_id}", code=f"{resource.kind}_not_found")


# --- answers ----------------------------------------------------------------------------------


def _listed(request: web.Request, resource: Resource, catalog: Catalog) -> list[dict[str, Any]]:
    """The config file's entries of ``resource`` (read-only), then the store's."""
    shown = resource.listed(_managed(request).config)
    shown += [_shown_entry(resource, e) for e in catalog.entries if e.kind == resource.kind]
    return shown


def _from_config(entry_id: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": entry_id,
        **spec,
        "source": "config",
        "created_at": None,
        "updated_at": None,
        "actor": None,
    }


def _shown_entry(resource: Resource, entry: Entry) -> dict[str, Any]:
    shown = {
        "id": entry.id,
        **entry.spec,
        "source": "store",
        "created_at": rfc3339(entry.created_at),
        "updated_at": rfc3339(entry.updated_at),
        "actor": entry.actor,
    }
    if resource.has_value:
        shown["value_last4"] = entry.value_last4
    return shown


def _record(
    request: web.Request,
    managed: ManagedGovernance,
    resource: Resource,
    entry_id: str,
    action: str,
    status: int,
    actor: str,
) -> None:
    """The change's row in the request log (never a value): what, to which entry
    (``subject``), by whom, when. Its id is made here, not the request's (which the
    client may choose, and the log keeps one row per id), and it names no virtual key:
    a tenant reading its own rows must not see an admin's."""
    log = request.app.get(REQUEST_LOG_KEY)
    if log is None:
        return
    facts = request[FACTS_KEY]
    log.add(
        LogRow(
            id=uuid.uuid4().hex,
            object=f"governance.{resource.kind}.{action}",
            timestamp=facts.started_at,
            virtual_key_id=None,
            status="success",
            status_code=status,
            latency=facts.latency_ms(),
            replica=managed.replica,
            actor=actor,
            subject=entry_id,
        )
    )
