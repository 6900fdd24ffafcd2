"""Short-lived client secrets: a browser opens a realtime session without the virtual key.

``POST /v1/realtime/client_secrets`` (OpenAI's request and answer: an
``expires_after`` of 10 to 7200 s, 600 by default, and the ``session`` to
start with) mints ``ek_...``, bound to the caller's virtual key and so to
its permissions and limits. It is good as ``Authorization: Bearer`` or the
``openai-insecure-api-key.<secret>`` subprotocol, until it expires, for a
realtime session only: an HTTP transcription with one is refused.

Secrets are kept by their sha256 (a store's contents never hold one that
works), in this process or in Redis when ``proxy.redis_url`` is set, so any
replica takes a secret another minted. They are never logged.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson

from ..cache.stores import CacheStore, CacheStoreError
from ..errors import AuthenticationError, InvalidRequestError, ServiceUnavailableError
from ..governance.credentials import ANONYMOUS, CLIENT_SECRET_PREFIX, Authenticator, Caller
from .protocol import ClientEventError
from .session_config import SessionConfig

#: How long a secret lives when the request does not say, and the bounds it may say.
DEFAULT_TTL_S = 600
MIN_TTL_S, MAX_TTL_S = 10, 7200


class ClientSecrets:
    """Mints client secrets and tells who one stands for."""

    def __init__(self, store: CacheStore, authenticator: Authenticator) -> None:
        self._store = store
        self._authenticator = authenticator

    async def mint(
        self,
        caller: Caller,
        body: dict[str, Any],
        allowed: Callable[[SessionConfig], None] = lambda _: None,
    ) -> dict[str, Any]:
        """A new secret for ``caller``, as OpenAI answers ``client_secrets.create``;
        ``allowed`` refuses a session the caller may not have, before anything is kept."""
        if caller.kind == "direct_key":
            raise InvalidRequestError(
                "client secrets stand for a virtual key; a provider's own key cannot be lent",
                code="direct_key_not_lendable",
            )
        seconds = _ttl(body.get("expires_after"))
        try:
            config = SessionConfig().updated(body.get("session", {}), "ga")
        except ClientEventError as exc:
            raise InvalidRequestError(exc.message, param=exc.param) from None
        allowed(config)
        value = f"{CLIENT_SECRET_PREFIX}{secrets.token_urlsafe(32)}"
        expires_at = int(time.time()) + seconds
        record = {
            "virtual_key": caller.virtual_key.id if caller.virtual_key else None,
            "admin": caller.kind == "admin",
            "expires_at": expires_at,
            "session": body.get("session") or {},
        }
        try:
            await self._store.put(_stored_as(value), orjson.dumps(record), seconds)
        except CacheStoreError as exc:
            raise _store_down() from exc
        return {"value": value, "expires_at": expires_at, "session": config.as_session("ga")}

    async def redeem(self, value: str) -> tuple[Caller, dict[str, Any]]:
        """Who ``value`` stands for, and the session it was minted with; 401 when it is
        unknown or has expired."""
        try:
            stored = await self._store.get(_stored_as(value))
        except CacheStoreError as exc:
            raise _store_down() from exc
        if stored is None:
            raise AuthenticationError(
                "the client secret is unknown or has expired", code="invalid_client_secret"
            )
        record = orjson.loads(stored)
        if record["expires_at"] <= time.time():
            raise AuthenticationError("the client secret has expired", code="invalid_client_secret")
        session: dict[str, Any] = record.get("session") or {}
        if record.get("admin"):
            return Caller("admin"), session
        key_id = record.get("virtual_key")
        if key_id is None:
            return ANONYMOUS, session
        return self._authenticator.by_id(key_id), session


def _store_down() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "the store that keeps client secrets is unreachable",
        code="secrets_unavailable",
        headers={"Retry-After": "1"},
    )


def _ttl(expires_after: object) -> int:
    if expires_after is None:
        return DEFAULT_TTL_S
    if not isinstance(expires_after, dict):
        raise InvalidRequestError("expires_after must be an object", param="expires_after")
    anchor = expires_after.get("anchor", "created_at")
    if anchor != "created_at":
        raise InvalidRequestError(
            'expires_after.anchor must be "created_at"', param="expires_after.anchor"
        )
    seconds = expires_after.get("seconds", DEFAULT_TTL_S)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int)
        or not (MIN_TTL_S <= seconds <= MAX_TTL_S)
    ):
        raise InvalidRequestError(
            f"expires_after.seconds must be a whole number from {MIN_TTL_S} to {MAX_TTL_S}",
            param="expires_after.seconds",
        )
    return seconds


def _stored_as(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
