"""Who may read the operator's API, and how much of it.

An admin credential (a key in ``governance.admin_keys``, or a JWT with the
admin role) reads everything. A virtual key reads its own rows and usage
only: a tenant sees its own spend. With no credential required and no
operator credential configured (the default: listening on loopback only,
the browser boundary against other pages and DNS rebinding), whoever reaches
the proxy is its operator, as they may already spend its provider keys.
Anyone else is refused in the error shape: 401 without a credential, 403
with one that may not read.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..app_state import AUTH_KEY
from ..errors import AuthenticationError, PermissionDeniedError


@dataclass(frozen=True)
class Reader:
    """Whose rows a caller of the API may read: all of them, or one virtual key's."""

    #: None: every row (an operator).
    virtual_key_id: str | None

    @property
    def is_operator(self) -> bool:
        """Whether this caller reads every row."""
        return self.virtual_key_id is None


OPERATOR = Reader(None)


def reader_of(request: web.Request) -> Reader:
    """Who ``request`` reads the API as, or the refusal (401/403)."""
    authenticator = request.app[AUTH_KEY]
    caller = authenticator.identify(request.headers)
    if caller.kind == "admin":
        return OPERATOR
    if caller.virtual_key is not None:
        return Reader(caller.virtual_key.id)
    if caller.kind == "anonymous":
        if not authenticator.credentials_required and not authenticator.operators_configured:
            return OPERATOR
        raise AuthenticationError(
            "the operator's API needs an admin credential (governance.admin_keys or an "
            "admin JWT), or a virtual key for its own rows"
        )
    raise PermissionDeniedError(
        "a provider key of your own reads nothing here: use an admin credential or a virtual key",
        code="not_an_api_reader",
    )
