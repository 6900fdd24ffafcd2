"""Provider keys blotted out of whatever an upstream sends back.

Some upstreams quote the key they were sent (in an error's ``message``, but
also its ``code`` or ``param``, or a body the client asks to see as
``raw_response``). Every byte an upstream answers with passes through a
:class:`Redactor` before it is parsed, so no field, however it is later
read, can carry one of our keys to a client.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config import ProviderConfig

#: What a key is replaced with.
MASK = "***"
#: Shorter values are not searched for: blotting out every "abc" in a transcript
#: would damage answers, and a key that short protects nothing anyway.
MIN_SECRET_CHARS = 8


class Redactor:
    """Replaces each of a set of secrets, wherever it appears, with :data:`MASK`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = frozenset(s for s in secrets if len(s) >= MIN_SECRET_CHARS)
        # Longest first: a key that contains another is blotted out whole.
        self._spellings = tuple(
            sorted(
                {spelling for secret in self._secrets for spelling in _spellings(secret)},
                key=len,
                reverse=True,
            )
        )
        self._encoded = tuple(s.encode() for s in self._spellings)

    @classmethod
    def of(cls, providers: Iterable[ProviderConfig]) -> Redactor:
        """A redactor of every key of ``providers``: an upstream may quote any of them."""
        return cls(key.value for provider in providers for key in provider.keys)

    def with_secret(self, secret: str | None) -> Redactor:
        """This redactor, and ``secret`` too (a key the client brought)."""
        if not secret or secret in self._secrets:
            return self
        return Redactor((*self._secrets, secret))

    def bytes(self, raw: bytes) -> bytes:
        """``raw`` with every secret blotted out."""
        for secret in self._encoded:
            if secret in raw:
                raw = raw.replace(secret, MASK.encode())
        return raw

    def text(self, text: str) -> str:
        """``text`` with every secret blotted out."""
        for secret in self._spellings:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def _spellings(secret: str) -> set[str]:
    """How ``secret`` may appear in an answer: as itself, and as a JSON string
    quotes it when its encoder escapes ``/`` (PHP's and some Java ones do)."""
    return {secret, secret.replace("/", "\\/")}
