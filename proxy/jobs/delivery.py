"""Sending a webhook without being turned against our own network (no SSRF through it).

A webhook URL must be https, or name a host listed in
``proxy.jobs.webhook_allowed_hosts`` (names or addresses, no port). Loopback,
link-local, private, unspecified, multicast and other non-global addresses
(IPv4-mapped IPv6 ones too) are refused unless listed. The check that counts is
made on the address connected to: the sender's connector resolves names
through :class:`FilteringResolver`, which drops refused addresses, so a name
that resolves (or rebinds) to 127.0.0.1 reaches nothing. Redirects are not
followed; a receiver that answers slowly is cut off at the timeout.

Webhooks have a client session of their own: its connector's resolver must
refuse what the upstreams' session may reach (providers on a private network).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from ..errors import InvalidRequestError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: What is read of a receiver's answer (its body is not kept).
_ANSWER_BYTES = 64 * 1024


#: IPv6 prefixes whose last 32 bits are an IPv4 address some router or host may reach it
#: by (IPv4-compatible, NAT64's well-known prefix, SIIT's IPv4-translated); 6to4 and
#: IPv4-mapped addresses are read by :mod:`ipaddress` itself.
_CARRYING_IPV4 = tuple(
    ipaddress.IPv6Network(prefix) for prefix in ("::/96", "64:ff9b::/96", "::ffff:0:0:0/96")
)
#: IPv6 ranges :mod:`ipaddress` (3.11) calls global that are not: site-local (deprecated,
#: still routed inside some networks) and NAT64's local-use prefix.
_NOT_GLOBAL_V6 = tuple(ipaddress.IPv6Network(prefix) for prefix in ("fec0::/10", "64:ff9b:1::/48"))


def refused_address(address: IPAddress) -> bool:
    """Whether ``address`` is one a webhook may not reach unless it is listed (an IPv6
    address that carries an IPv4 one is judged by the IPv4 one)."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = address.ipv4_mapped or address.sixtofour
        if carried is None and any(address in prefix for prefix in _CARRYING_IPV4):
            carried = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if carried is not None:
            address = carried
        elif any(address in prefix for prefix in _NOT_GLOBAL_V6):
            return True
    return not address.is_global or address.is_multicast


def _address(host: str) -> IPAddress | None:
    """``host`` as an address, when it is one; read as the system's resolver reads it
    (``127.1``, ``2130706433``, ``0x7f.1``, a trailing dot), not only as :mod:`ipaddress`
    does, so that no spelling of an address is taken for a name."""
    literal = host.strip("[]").split("%", 1)[0].rstrip(".")
    try:
        return ipaddress.ip_address(literal)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(literal))
    except OSError:
        return None


class WebhookPolicy:
    """Which webhook URLs are allowed, and which addresses they may reach."""

    def __init__(self, allowed_hosts: tuple[str, ...]) -> None:
        self._names = frozenset(h for h in allowed_hosts if _address(h) is None)
        self._addresses = frozenset(a for h in allowed_hosts if (a := _address(h)) is not None)

    def listed(self, host: str) -> bool:
        """Whether ``host`` (a name or an address) is in the allowed list."""
        host = host.lower().rstrip(".")
        address = _address(host)
        return host in self._names if address is None else address in self._addresses

    def reaches(self, host: str, address: IPAddress) -> bool:
        """Whether a webhook to ``host`` may connect to ``address``."""
        return self.listed(host) or address in self._addresses or not refused_address(address)

    def check_url(self, url: str) -> URL:
        """``url`` parsed, or a 400 (``param: webhook_url``) saying why it may not be used."""
        try:
            parsed = URL(url)
        except ValueError:
            parsed = None
        host = parsed.host if parsed is not None else None
        if parsed is None or parsed.scheme not in ("http", "https") or not host:
            raise _refused("webhook_url must be an absolute http(s) URL")
        listed = self.listed(host)
        if parsed.scheme != "https" and not listed:
            raise _refused(
                "webhook_url must be https, or name a host in proxy.jobs.webhook_allowed_hosts"
            )
        address = _address(host)
        if isinstance(address, ipaddress.IPv4Address) and host != str(address):
            # 127.1, 2130706433, 10.0.0.1.: an address all the same, never sent to.
            raise _refused("webhook_url's host must be a name, or an address as 127.0.0.1 is")
        name = host.lower().rstrip(".")
        local_name = name == "localhost" or name.endswith(".localhost")
        if not listed and (local_name or (address is not None and refused_address(address))):
            raise _refused(
                "webhook_url may not reach a loopback, link-local or private address "
                "unless its host is in proxy.jobs.webhook_allowed_hosts"
            )
        return parsed


def _refused(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, code="invalid_webhook_url", param="webhook_url")


class FilteringResolver(AbstractResolver):
    """Resolves names as the system does, keeping only the addresses the policy allows."""

    def __init__(self, policy: WebhookPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of ``host`` the policy allows; none is an OSError (a failed try)."""
        found = await self._inner.resolve(host, port, family)
        kept = [
            info
            for info in found
            if (address := _address(info["host"])) is not None
            and self._policy.reaches(host, address)
        ]
        if not kept:
            raise OSError(f"{host} resolves only to addresses webhooks may not reach")
        return kept

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()


@dataclass(frozen=True)
class Attempted:
    """One attempt's end: the receiver's status, or why there was none."""

    status_code: int | None
    error: str | None
    latency_ms: int

    @property
    def delivered(self) -> bool:
        """Whether the receiver took it (any 2xx)."""
        return self.status_code is not None and 200 <= self.status_code < 300


def webhook_session(policy: WebhookPolicy) -> aiohttp.ClientSession:
    """The session webhooks are sent with: filtered resolution, no cookies."""
    connector = aiohttp.TCPConnector(
        resolver=FilteringResolver(policy), limit=64, enable_cleanup_closed=True
    )
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


class WebhookSender:
    """Posts signed webhook bodies, one attempt at a time."""

    def __init__(
        self, session: aiohttp.ClientSession, policy: WebhookPolicy, timeout_s: float
    ) -> None:
        self._session = session
        self._policy = policy
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> Attempted:
        """One attempt; never raises for what the receiver (or the way to it) does."""
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            # Checked again: an address literal never reaches the resolver, and the
            # allowed list may have changed since the job was submitted.
            target = self._policy.check_url(url)
            async with self._session.post(
                target, data=body, headers=headers, allow_redirects=False, timeout=self._timeout
            ) as response:
                await response.content.read(_ANSWER_BYTES)
                status = response.status
                if not 200 <= status < 300:
                    error = f"the receiver answered {status}"
        except InvalidRequestError as exc:
            error = exc.message
        except TimeoutError:
            error = "the receiver did not answer in time"
        except (aiohttp.ClientError, OSError) as exc:
            error = _described(exc)
        return Attempted(status, error, round((time.monotonic() - started) * 1000))


def _described(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:300]
