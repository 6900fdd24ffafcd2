"""Short-lived client secrets: a browser opens a realtime session without the virtual key.

``POST /v1/realtime/client_secrets`` (OpenAI's request and answer: an
``expires_after`` of 10 to 7200 s, 600 by default, and the ``session`` to
start with) mints ``ek_...``, bound to the caller's virtual key and so to
its permissions and limits. It is good as ``Authorization: Bearer`` or the
``openai-insecure-api-key.<secret>`` subprotocol, until it expires, for a
realtime session only: an HTTP transcription with one is refused. A session
opened with one ends when it expires. A mint counts as a request against
the key's request limit.

What is kept is the session's configuration as the proxy validated it, never
the client's own object (whose size and contents are the client's to choose).

Secrets are kept by their sha256 (a store's contents never hold one that
works), in this process or in Redis when ``proxy.redis_url`` is set, so any
replica takes a secret another minted. They are never logged.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..cache.stores import CacheStore, CacheStoreError, StoreFullError
from ..errors import (
    AuthenticationError,
    InvalidRequestError,
    ServiceUnavailableError,
    store_unreachable,
)
from ..governance.credentials import ANONYMOUS, CLIENT_SECRET_PREFIX, Authenticator, Caller
from .client_events import ClientEventError
from .session_config import SessionConfig

#: How long a secret lives when the request does not say, and the bounds it may say.
DEFAULT_TTL_S = 600
MIN_TTL_S, MAX_TTL_S = 10, 7200


@dataclass(frozen=True)
class Redeemed:
    """What a client secret stands for."""

    caller: Caller
    #: The session it was minted with (as :meth:`SessionConfig.as_session` gives it).
    session: dict[str, Any]
    #: When it expires, in the wall clock's seconds: a session opened with it ends then.
    expires_at: float


class ClientSecrets:
    """Mints client secrets and tells who one stands for."""

    def __init__(
        self,
        store: CacheStore,
        authenticator: Authenticator,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._authenticator = authenticator
        #: The wall clock expiries are told by (replicas share it; tests move it).
        self._clock = clock

    async def mint(
        self,
        caller: Caller,
        body: dict[str, Any],
        admit: Callable[[SessionConfig], Awaitable[None]],
    ) -> dict[str, Any]:
        """A new secret for ``caller``, as OpenAI answers ``client_secrets.create``;
        ``admit`` refuses a session the caller may not have, or a mint over its limits,
        once the request is found valid and before anything is kept."""
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
        await admit(config)
        value = f"{CLIENT_SECRET_PREFIX}{secrets.token_urlsafe(32)}"
        expires_at = int(self._clock()) + seconds
        session = config.as_session("ga")
        record = {
            "virtual_key": caller.virtual_key.id if caller.virtual_key else None,
            # The value the key was proven with: the secret ends when it is rotated away.
            "key_digest": caller.key_digest.hex() if caller.key_digest else None,
            "admin": caller.kind == "admin",
            "expires_at": expires_at,
            "session": session,
        }
        try:
            await self._store.put(_stored_as(value), orjson.dumps(record), seconds)
        except StoreFullError as exc:
            # Live secrets are never pushed out for new ones: a flood of mints cannot
            # evict another tenant's.
            raise ServiceUnavailableError(
                "too many client secrets are outstanding; try again when some have expired",
                code="too_many_client_secrets",
                headers={"Retry-After": "10"},
            ) from exc
        except CacheStoreError as exc:
            raise store_unreachable("client secrets", "secrets_unavailable") from exc
        return {"value": value, "expires_at": expires_at, "session": session}

    async def redeem(self, value: str) -> Redeemed:
        """Who ``value`` stands for, the session it was minted with and its expiry; 401
        when it is unknown or has expired."""
        try:
            stored = await self._store.get(_stored_as(value))
        except CacheStoreError as exc:
            raise store_unreachable("client secrets", "secrets_unavailable") from exc
        if stored is None:
            raise AuthenticationError(
                "the client secret is unknown or has expired", code="invalid_client_secret"
            )
        record = orjson.loads(stored)
        expires_at = float(record["expires_at"])
        if expires_at <= self._clock():
            raise AuthenticationError("the client secret has expired", code="invalid_client_secret")
        session: dict[str, Any] = record.get("session") or {}
        return Redeemed(self._caller_of(record), session, expires_at)

    def _caller_of(self, record: dict[str, Any]) -> Caller:
        """Who a stored secret stands for (its key as configured now)."""
        if record.get("admin"):
            return Caller("admin")
        key_id = record.get("virtual_key")
        if key_id is None:
            return ANONYMOUS
        digest = record.get("key_digest")
        return self._authenticator.by_id(key_id, bytes.fromhex(digest) if digest else None)


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
