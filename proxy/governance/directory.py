"""The virtual keys the proxy knows: the config file's, and those managed at run time.

Keys are found by the digest of their value, never by the value itself: a key
managed at run time is stored only as its digest. The config file's keys win
over a managed key of the same id or value (the API never makes one, but a
config file changed afterwards might).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..config import VirtualKeyConfig
from ..errors import PermissionDeniedError, ProxyError

log = logging.getLogger(__name__)


def key_digest(value: str) -> bytes:
    """The SHA-256 digest keys are looked up (and stored) by.

    Unsalted and fast on purpose: virtual keys are random (32 bytes from the system's
    generator, or at least as long when supplied), so there is nothing to guess from a
    digest, and every request pays for this lookup.
    """
    return hashlib.sha256(value.encode()).digest()


@dataclass(frozen=True)
class KnownKey:
    """A virtual key and the digest of its value."""

    digest: bytes
    key: VirtualKeyConfig


class KeyDirectory:
    """Finds virtual keys by digest or id: the config file's, merged with the managed ones
    (:meth:`replace_managed`, whenever the store changes)."""

    def __init__(self, configured: Iterable[VirtualKeyConfig]) -> None:
        self._configured = [KnownKey(key_digest(key.value), key) for key in configured]
        self._configured_ids = frozenset(known.key.id for known in self._configured)
        self._by_digest: Mapping[bytes, KnownKey] = {}
        self._by_id: Mapping[str, KnownKey] = {}
        #: The stored keys already warned of as shadowed by the file's: once each.
        self._shadowed: set[str] = set()
        self.replace_managed(())

    def by_digest(self, digest: bytes) -> KnownKey | None:
        """The key whose value has ``digest``."""
        return self._by_digest.get(digest)

    def by_id(self, key_id: str) -> VirtualKeyConfig | None:
        """The key ``key_id``."""
        known = self._by_id.get(key_id)
        return known.key if known is not None else None

    def usable(self) -> dict[str, bytes]:
        """The keys that may be used now (known and active): their ids, and their values'
        digests."""
        return {
            key_id: known.digest for key_id, known in self._by_id.items() if known.key.is_active
        }

    def any_limited(self) -> bool:
        """Whether any key has a rate limit or a budget (their counters are in Redis)."""
        return any(
            known.key.rate_limit is not None or known.key.budget is not None
            for known in self._by_id.values()
        )

    def refusal(self, key_id: str, digest: bytes | None) -> ProxyError | None:
        """Why the key ``key_id``, proven by a value of ``digest`` (None: proven otherwise,
        by a JWT naming it), may no longer be used; None while it may."""
        known = self._by_id.get(key_id)
        usable = known.digest if known is not None and known.key.is_active else None
        if usable is None:
            return PermissionDeniedError(
                f"virtual key {key_id} is no longer active (deactivated or deleted)",
                code="key_inactive",
            )
        if digest is not None and digest != usable:
            return PermissionDeniedError(
                f"virtual key {key_id} was given a new value: connect again with it",
                code="key_rotated",
            )
        return None

    def replace_managed(self, managed: Iterable[KnownKey]) -> None:
        """Make ``managed`` the keys managed at run time, in one step: a lookup sees either
        the old set or the new one, never half of each."""
        by_digest: dict[bytes, KnownKey] = {}
        by_id: dict[str, KnownKey] = {}
        for known in managed:
            if known.key.id in self._configured_ids:
                if known.key.id not in self._shadowed:
                    log.warning(
                        "virtual key %s is in the config file: its stored copy is ignored",
                        known.key.id,
                    )
                    self._shadowed.add(known.key.id)
                continue
            by_digest[known.digest] = known
            by_id[known.key.id] = known
        for known in self._configured:
            by_digest[known.digest] = known
            by_id[known.key.id] = known
        self._by_digest, self._by_id = by_digest, by_id
