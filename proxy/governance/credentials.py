"""Who is calling: credentials, in the order Bifrost reads them, turned into a :class:`Caller`.

``x-bf-vk``; ``Authorization: Bearer`` (a virtual key ``sk-bf-...``, a JWT, or,
with ``client.allow_direct_keys``, a provider key passed upstream as is);
``x-api-key``; ``api-key`` (the AzureOpenAI SDK's); ``Authorization: Basic``
(its password). Error messages never repeat the credential.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from ..config import ClientConfig, ConfigError, GovernanceConfig, JwtConfig, VirtualKeyConfig
from ..errors import AuthenticationError, PermissionDeniedError
from .directory import KeyDirectory, KnownKey, key_digest

if TYPE_CHECKING:
    from ..router import Route

VIRTUAL_KEY_PREFIX = "sk-bf-"
#: Realtime client secrets (:mod:`proxy.realtime.client_secrets`) start so.
CLIENT_SECRET_PREFIX = "ek_"


@dataclass(frozen=True)
class Caller:
    """The identity a request acts as."""

    kind: Literal["anonymous", "virtual_key", "admin", "direct_key"]
    virtual_key: VirtualKeyConfig | None = None
    #: A provider key the client brought, sent upstream in place of ours.
    direct_key: str | None = field(default=None, repr=False)
    #: Which admin credential it is (``governance.admin_keys[0]``, ``jwt:<sub>``): what
    #: the governance API records as who changed what. Never the credential itself.
    name: str | None = None
    #: The digest of the virtual key's value it proved (None: a JWT naming the key), so
    #: what it opened ends when that value is rotated away.
    key_digest: bytes | None = field(default=None, repr=False)


ANONYMOUS = Caller("anonymous")
ADMIN = Caller("admin")


class Authenticator:
    """Turns a request's headers into a :class:`Caller`, or refuses them."""

    def __init__(self, client: ClientConfig, governance: GovernanceConfig) -> None:
        self._client = client
        self._jwt = governance.jwt
        if (
            self._jwt is not None
            and self._jwt.rs256_public_key
            and not _jwt().algorithms.has_crypto
        ):
            raise ConfigError(
                "governance.jwt.rs256_public_key: RS256 needs cryptography; "
                "pip install '.[jwt-rsa]'"
            )
        # Looked up by digest: the time a lookup takes says nothing about how
        # much of a guessed key was right.
        #: The config file's virtual keys, and the ones managed at run time.
        self.keys = KeyDirectory(governance.virtual_keys)
        self._admin_digests = {key_digest(key): i for i, key in enumerate(governance.admin_keys)}

    def identify(self, headers: Mapping[str, str]) -> Caller:
        """The caller these headers prove, raising 401 or 403 when they prove nothing usable."""
        found = credential_of(headers)
        if found is None:
            if self._client.enforce_auth_on_inference:
                raise AuthenticationError("a credential is required (x-bf-vk or Authorization)")
            return ANONYMOUS
        source, token = found
        if token.startswith(CLIENT_SECRET_PREFIX):
            raise AuthenticationError(
                "a client secret opens realtime sessions only (/v1/realtime), nothing else",
                code="client_secret_not_accepted",
            )
        admin_index = self._admin_index(token)
        if admin_index is not None:
            return Caller("admin", name=f"governance.admin_keys[{admin_index}]")
        if token.startswith(VIRTUAL_KEY_PREFIX) or source == "x-bf-vk":
            known = self._known_key(token)
            caller = self._virtual_key(known.key if known else None, "virtual key")
            return replace(caller, key_digest=known.digest if known else None)
        if self._jwt is not None and token.count(".") == 2 and token.startswith("eyJ"):
            return self._from_jwt(token, self._jwt)
        if self._client.allow_direct_keys and source == "bearer":
            return Caller("direct_key", direct_key=token)
        if self._client.enforce_auth_on_inference:
            raise AuthenticationError("the credential is not a known virtual key or token")
        # With nothing to enforce, a client's placeholder key (SDKs always
        # send one) is no reason to refuse it.
        return ANONYMOUS

    def on_routes(self, caller: Caller, routes: Sequence[Route]) -> Caller:
        """``caller`` as ``routes`` may serve it: a provider key the client brought is a
        credential only for providers that take one (HTTP upstreams with keys of ours
        configured). Where credentials are required, it opens no other (401); where
        they are not, the caller is anonymous there, as without it."""
        if caller.kind != "direct_key":
            return caller
        refusing = [
            r.provider.name for r in routes if not r.provider.capabilities.takes_client_keys
        ]
        if not refusing:
            return caller
        if self._client.enforce_auth_on_inference:
            raise AuthenticationError(
                "a provider key of your own is a credential only for providers that take "
                f"one; {', '.join(sorted(refusing))} does not: use a virtual key",
                code="direct_key_not_accepted",
            )
        return ANONYMOUS

    @property
    def operators_configured(self) -> bool:
        """Whether any credential acts as the operator (admin keys, or JWTs, which may
        carry the admin role)."""
        return bool(self._admin_digests) or self._jwt is not None

    @property
    def credentials_required(self) -> bool:
        """Whether every request must bring a credential."""
        return self._client.enforce_auth_on_inference

    def knows(self, token: str) -> bool:
        """Whether ``token`` is a credential here already (an admin key, a virtual key):
        a new key's value must not be one."""
        return self._known_key(token) is not None or self._admin_index(token) is not None

    def _admin_index(self, token: str) -> int | None:
        # By digest: a lookup takes the same time however much of a guess is right.
        return self._admin_digests.get(key_digest(token)) if self._admin_digests else None

    def by_id(self, key_id: str, digest: bytes | None = None) -> Caller:
        """The caller of the virtual key ``key_id`` (a client secret's), if it still is one:
        active, and, when the secret was minted with a value of ``digest``, still that
        value (a secret minted with a leaked value ends with its rotation)."""
        caller = self._virtual_key(self.keys.by_id(key_id), "virtual key of the client secret")
        refusal = self.keys.refusal(key_id, digest)
        if refusal is not None:
            raise refusal
        return replace(caller, key_digest=digest)

    def _known_key(self, token: str) -> KnownKey | None:
        """The virtual key ``token`` is, with its digest.

        Found by a dict lookup on the SHA-256 of the token, which is no timing oracle:
        how long the lookup takes depends on the digest, and a guess that shares a prefix
        with a key shares nothing predictable with its digest, so timing it tells an
        attacker nothing about a 256-bit random value they do not already have.
        """
        return self.keys.by_digest(key_digest(token))

    def _virtual_key(self, key: VirtualKeyConfig | None, what: str) -> Caller:
        if key is None:
            raise AuthenticationError(f"unknown {what}")
        if not key.is_active:
            raise PermissionDeniedError(f"virtual key {key.id} is not active", code="key_inactive")
        return Caller("virtual_key", virtual_key=key)

    def _from_jwt(self, token: str, config: JwtConfig) -> Caller:
        jwt = _jwt()
        keys: list[tuple[str, str]] = []
        if config.hs256_secret:
            keys.append(("HS256", config.hs256_secret))
        if config.rs256_public_key:
            keys.append(("RS256", config.rs256_public_key))
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise AuthenticationError("the bearer token is not a valid JWT") from None
        key = next((k for alg, k in keys if alg == algorithm), None)
        if key is None:
            raise AuthenticationError(f"JWTs signed with {algorithm} are not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(algorithm)],
                audience=config.audience,
                options={"require": ["exp"], "verify_aud": config.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("the JWT has expired", code="token_expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError(
                "the JWT is not valid yet", code="token_not_yet_valid"
            ) from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError(
                "the JWT is for another audience", code="invalid_audience"
            ) from None
        except jwt.InvalidTokenError:
            raise AuthenticationError(
                "the JWT's signature or claims are invalid", code="invalid_token"
            ) from None
        if claims.get(config.role_claim) == config.admin_role:
            return Caller("admin", name=f"jwt:{claims.get('sub', '?')}")
        key_id = claims.get(config.virtual_key_claim)
        if not isinstance(key_id, str):
            raise PermissionDeniedError("the JWT names no virtual key and no admin role")
        return self._virtual_key(self.keys.by_id(key_id), "virtual key named by the JWT")


def _jwt() -> ModuleType:
    # Imported when JWTs are configured: PyJWT brings in cryptography, about
    # 10 MiB of RSS that a proxy without JWTs has no use for.
    import jwt
    import jwt.algorithms

    return jwt


def credential_of(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """The first credential present, and where it came from."""
    if value := headers.get("x-bf-vk", "").strip():
        return "x-bf-vk", value
    scheme, _, given = headers.get("Authorization", "").strip().partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer" and given:
        return "bearer", given
    for name in ("x-api-key", "api-key"):
        if value := headers.get(name, "").strip():
            return name, value
    if scheme.lower() == "basic" and given:
        try:
            decoded = base64.b64decode(given, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError("the Basic credential is not valid base64") from None
        user, _, password = decoded.partition(":")
        return "basic", password or user
    return None
