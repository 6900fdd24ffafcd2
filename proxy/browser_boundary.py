"""The browser boundary: which web pages may use the proxy, and under which names.

A browser lets any page send a form POST or open a WebSocket to any address,
the proxy's on 127.0.0.1 included, and sends an ``Origin`` header that says
whose page it is. So a request that carries an ``Origin`` is served only when
that origin is the proxy's own (its page, ``GET /``) or one the operator
listed in ``proxy.allowed_origins``; for those, CORS preflights are answered
and answers carry ``Access-Control-Allow-Origin``. Clients that are not
browsers send no ``Origin`` and are not affected.

DNS rebinding gets around that: a page at ``rebind.evil.example`` has the
name resolve to 127.0.0.1, and its requests are then same-origin to itself.
They still carry ``Host: rebind.evil.example``, which is how they are told
apart. When no credential is required (``client.enforce_auth_on_inference``
off: the proxy spends its own provider keys for anyone who reaches it), a
``Host`` that is a DNS name is refused unless it is a loopback name or one
listed in ``proxy.allowed_hosts``. An address (``127.0.0.1``, the listen
address, any other a balancer forwards) or a single-label name
(``transcription-proxy``, resolved by local search domains) cannot be
rebound by a page on the internet, so they are answered.
"""

from __future__ import annotations

import ipaddress

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from .config import Config
from .errors import PermissionDeniedError

#: The origin a request's answer is shared with (an allowed cross-origin caller).
SHARED_WITH = web.RequestKey("cors_origin", str)

#: Response headers a page may read besides the CORS-safelisted ones.
_EXPOSED = "x-request-id, x-bf-provider, x-bf-model, x-bf-latency-ms, retry-after"
_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
#: How long a browser may keep a preflight's answer.
_PREFLIGHT_MAX_AGE_S = "600"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class BrowserBoundary:
    """Decides, from a request's ``Origin`` and ``Host``, whether a browser may make it."""

    def __init__(self, config: Config) -> None:
        """The boundary ``config``'s ``proxy`` and ``client`` settings draw."""
        self._origins = frozenset(config.proxy.allowed_origins)
        self._hosts = frozenset(config.proxy.allowed_hosts)
        self._check_host = not config.client.enforce_auth_on_inference

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse what crosses the boundary (403 in the error shape); answer preflights."""
        if self._check_host and not self._host_allowed(request):
            raise PermissionDeniedError(
                f"this server does not answer to the name {request.host!r}; an operator "
                "can add it to proxy.allowed_hosts (or require credentials)",
                code="host_not_allowed",
            )
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return await handler(request)
        own = _is_own_origin(origin, request)
        if not own and origin.lower() not in self._origins:
            raise PermissionDeniedError(
                f"requests from the web page origin {origin[:200]!r} are not accepted; "
                "an operator can add it to proxy.allowed_origins",
                code="origin_not_allowed",
            )
        if not own:
            request[SHARED_WITH] = origin
            if _is_preflight(request):
                return _preflight(request, origin)
        return await handler(request)

    def _host_allowed(self, request: web.Request) -> bool:
        value = request.headers.get(hdrs.HOST)
        if not value:
            return True  # HTTP/1.0 without Host: nothing a browser sends
        host, _ = _split_host(value.strip().lower())
        return host in self._hosts or not _rebindable(host)


async def share_with_origin(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: an allowed cross-origin caller may read the answer."""
    origin = request.get(SHARED_WITH)
    if origin is None:
        return
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = _EXPOSED
    response.headers.add(hdrs.VARY, "Origin")


def _is_preflight(request: web.Request) -> bool:
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )


def _preflight(request: web.Request, origin: str) -> web.Response:
    headers = {
        hdrs.ACCESS_CONTROL_ALLOW_METHODS: _METHODS,
        hdrs.ACCESS_CONTROL_MAX_AGE: _PREFLIGHT_MAX_AGE_S,
    }
    # The origin is one the operator trusts: whatever headers its page sends
    # (the openai SDK's x-stainless-* among them) may come.
    if asked := request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS):
        headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = asked
    return web.Response(status=204, headers=headers)


def _is_own_origin(origin: str, request: web.Request) -> bool:
    """Whether ``origin`` names the host and port the request was sent to (the page the
    proxy serves itself). The scheme is not compared: behind a TLS-terminating balancer
    the page is https and the request reaching us http."""
    scheme, sep, authority = origin.strip().lower().partition("://")
    if not sep or scheme not in _DEFAULT_PORTS:
        return False
    return _host_port(authority, _DEFAULT_PORTS[scheme]) == _host_port(
        request.host.lower(), _DEFAULT_PORTS.get(request.scheme, 80)
    )


def _host_port(authority: str, default_port: int) -> tuple[str, int]:
    host, port = _split_host(authority)
    return host, port if port is not None else default_port


def _split_host(authority: str) -> tuple[str, int | None]:
    """``authority``'s host (brackets off an IPv6 literal) and port, if it has one."""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "")
    return host, int(port) if port.isdigit() else None


def _rebindable(host: str) -> bool:
    """Whether ``host`` is a name someone else's DNS could point at us: a dotted DNS name
    that is not a loopback name (``localhost``, ``*.localhost`` never leave the machine)."""
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "." in host.rstrip(".")
    return False
