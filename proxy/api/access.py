"""Who may read the operator's API, and how much of it.

An admin credential (a key in ``governance.admin_keys``, or a JWT with the
admin role) reads everything. A virtual key reads its own rows and usage
only: a tenant sees its own spend. With no credential required and no
operator credential configured (the embedded default), a caller on this
machine (a loopback address; the browser boundary keeps other pages and DNS
rebinding out) is its operator, as it may already spend its provider keys.
From anywhere else the API needs a credential, however the proxy listens: a
proxy bound to 0.0.0.0 without admin keys must not hand its keys to its
network. Anyone else is refused in the error shape: 401 without a
credential, 403 with one that may not read.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web

from ..app_state import AUTH_KEY
from ..errors import AuthenticationError, PermissionDeniedError


@dataclass(frozen=True)
class Reader:
    """Whose rows a caller of the API may read: all of them, or one virtual key's."""

    #: None: every row (an operator).
    virtual_key_id: str | None
    #: Which admin credential it is (:attr:`~proxy.governance.credentials.Caller.name`);
    #: None for a virtual key, and for the operator no credential is required of.
    name: str | None = None

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
        return Reader(None, caller.name)
    if caller.virtual_key is not None:
        return Reader(caller.virtual_key.id)
    if caller.kind == "anonymous":
        if (
            not authenticator.credentials_required
            and not authenticator.operators_configured
            and _on_this_machine(request)
        ):
            return OPERATOR
        raise AuthenticationError(
            "the operator's API needs an admin credential (governance.admin_keys or an "
            "admin JWT), or a virtual key for its own rows"
        )
    raise PermissionDeniedError(
        "a provider key of your own reads nothing here: use an admin credential or a virtual key",
        code="not_an_api_reader",
    )


def _on_this_machine(request: web.Request) -> bool:
    """Whether the request came from a loopback address (an IPv4 one mapped into IPv6
    included); a Unix socket's peer has none and is not taken for one."""
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
