"""The configuration's shape: Bifrost's `config.json` sections and our own, frozen dataclasses."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

ProviderKind = Literal["openai", "azure", "local"]
PROVIDER_KINDS: tuple[ProviderKind, ...] = ("openai", "azure", "local")

MIB = 1024 * 1024


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key path."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        #: The key path at fault, when one is (the governance API's ``param``).
        self.path = path


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

        An Azure deployment map does not count: the README ("API") routes a
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
    #: Whether the upstream has the Realtime API, so sessions on it are
    #: relayed rather than synthesized (OpenAI's own API and Azure by default).
    realtime: bool = False

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
    #: Windows decoded at once by faster-whisper's batched pipeline when they
    #: are already there; 1 decodes one window at a time, each conditioned on
    #: the text before it.
    batch_size: int = 1
    #: Cut each window's silences out before decoding (Silero VAD).
    vad_filter: bool = False
    #: The first window's length when the answer streams: the first caption sooner.
    first_window_s: float = 10.0
    #: Give freed memory back to the system once no decode is running (glibc:
    #: at most two malloc arenas, and ``malloc_trim``).
    return_memory: bool = True
    #: Realtime sessions transcribed live at once; past it a new one is refused (the
    #: rest would all be served late). README, "Realtime sessions", has the measure.
    max_live_sessions: int = 4


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


RealtimeVad = Literal["auto", "silero", "loudness"]


@dataclass(frozen=True)
class RealtimeSettings:
    """Realtime sessions synthesized by the proxy (``proxy.realtime``)."""

    #: While a turn is spoken, the embedded model transcribes it again this
    #: often for partial captions (0: none).
    partial_interval_ms: int = 1000
    #: Committed turns waiting for their transcripts before appends are refused.
    max_pending_turns: int = 4
    #: Sessions open at once; past it, upgrades are refused with 503.
    max_sessions: int = 500
    #: How speech is told from silence for ``server_vad``: Silero (with the
    #: ``local`` extra; ``auto`` uses it when installed) or loudness.
    vad: RealtimeVad = "auto"
    #: The embedded model's beam width for a turn's transcript (``completed``): 5, as
    #: the HTTP path decodes, so a turn reads as the same audio sent as a file would.
    beam_size: int = 5
    #: Its beam width for partial captions: 1 (greedy) keeps those passes quick; they
    #: are interim text the transcript replaces.
    partial_beam_size: int = 1
    #: Audio seconds reserved against limits and budgets at a time, as a session goes.
    reserve_step_s: float = 30.0
    #: Sessions one virtual key may hold open at once (so one tenant cannot take them all).
    max_sessions_per_key: int = 250
    #: A session the client sends no event for this long is closed.
    idle_timeout_s: float = 300.0
    #: On shutdown, how long the turns committed at the deadline may take.
    drain_pending_s: float = 1.5


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
class TracingSettings:
    """Traces over OTLP/HTTP (``proxy.tracing``): off unless a collector is named."""

    #: The collector's OTLP/HTTP base URL (``http://collector:4318``); spans are posted to
    #: its ``/v1/traces``. None: tracing is off. The file's, else
    #: ``OTEL_EXPORTER_OTLP_ENDPOINT``. It may hold a password: never logged.
    otlp_endpoint: str | None = field(default=None, repr=False)
    #: The ``service.name`` spans are sent under.
    service_name: str = "transcription-proxy"
    #: More attributes of the resource (``deployment.environment``, ...).
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    #: Longest a finished span waits for its batch to be sent (the SDK's schedule delay).
    schedule_delay_ms: int = 5000

    @property
    def enabled(self) -> bool:
        """Whether spans are made and sent."""
        return self.otlp_endpoint is not None

    @property
    def traces_url(self) -> str | None:
        """Where spans are posted: the endpoint's ``/v1/traces`` (as the SDK makes it of
        ``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
        if self.otlp_endpoint is None:
            return None
        return f"{self.otlp_endpoint.rstrip('/')}/v1/traces"


#: What a Standard Webhooks secret starts with; its signing key follows in base64.
WEBHOOK_SECRET_PREFIX = "whsec_"
#: The shortest signing key taken: Standard Webhooks' own secrets are 24 to 64 bytes.
MIN_WEBHOOK_KEY_BYTES = 16


def webhook_key(secret: str) -> bytes | None:
    """The HMAC key a ``whsec_<base64>`` secret stands for; None for anything else
    (a key too short to be a secret included)."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return None
    try:
        key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except binascii.Error:
        return None
    return key if len(key) >= MIN_WEBHOOK_KEY_BYTES else None


@dataclass(frozen=True)
class JobsSettings:
    """Async jobs and their signed webhooks (``proxy.jobs``; README, "Async jobs")."""

    #: Jobs this replica runs at once.
    workers: int = 2
    #: Where uploads wait for their job, named by job id (``<data_dir>/jobs`` when None);
    #: a volume every replica mounts lets any replica take over another's jobs.
    spool_dir: str | None = None
    #: Bytes the spool may hold in all; past it new jobs are refused with 507 (0: the
    #: disk's own limit).
    max_spool_bytes: int = 0
    #: A job's result (and its spool) is kept this long unless the request's
    #: ``x-bf-async-job-result-ttl`` says otherwise, and never longer than the max.
    result_ttl_s: float = 3600.0
    max_result_ttl_s: float = 7 * 86400.0
    #: A claimed job's lease: renewed while it runs, taken over once it lapses.
    lease_s: float = 30.0
    #: How often an idle worker looks for work other replicas queued.
    poll_interval_s: float = 1.0
    #: How often expired jobs and their spool files are deleted.
    sweep_interval_s: float = 60.0
    #: Standard Webhooks' ``whsec_<base64>``, when a key has no secret of its own.
    webhook_secret: str | None = field(default=None, repr=False)
    #: Hosts (names or addresses, no port) a webhook may name over plain http, or at a
    #: loopback, link-local or private address.
    webhook_allowed_hosts: tuple[str, ...] = ()
    #: Waits before each retry of a failed delivery; past the last, it is given up.
    webhook_retry_schedule_s: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 3600.0)
    #: A receiver that has not answered within this is cut off (and retried).
    webhook_timeout_s: float = 10.0


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
    #: Transcription requests one virtual key may have in flight at once.
    max_in_flight_per_key: int = 128
    #: The longest audio one request may carry; past it, refused before it is sent.
    max_audio_seconds: float = 4 * 3600.0
    #: Longest wait for the next bytes of a client's body (a slow-drip
    #: client cannot hold a slot forever).
    body_idle_timeout_s: float = 30.0
    #: A whole body must arrive within this, plus a second for every
    #: ``body_min_bytes_per_s`` bytes received (Apache's mod_reqtimeout
    #: ``body=20,MinRate=500``): a client dripping bytes just inside the idle
    #: timeout is still cut off.
    body_deadline_s: float = 20.0
    body_min_bytes_per_s: int = 500
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
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    #: Serve the caption page at ``GET /`` and the dashboard at ``GET /dashboard``.
    web_ui: bool = True
    #: Browser origins (``https://app.example``) besides the proxy's own that may
    #: call it: WebSocket upgrades and CORS requests from any other are refused.
    allowed_origins: tuple[str, ...] = ()
    #: Host names the proxy answers to when no credential is required, besides
    #: its listen address and loopback names (against DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    #: Where the proxy keeps its files (the default SQLite store); created if missing.
    data_dir: str = field(default_factory=lambda: default_data_dir(os.environ))
    #: The store's URL (``sqlite:///<path>`` or ``postgresql://...``); None: the
    #: SQLite file in ``data_dir``. It may hold a password: never logged.
    store: str | None = field(default=None, repr=False)
    #: Connections to a PostgreSQL store kept open (each replica has its own pool).
    store_pool_size: int = 5
    #: How often a replica asks the store whether governance changed at run time (with
    #: Redis, changes are also announced at once; this is the safety net when one is lost).
    governance_poll_s: float = 0.5

    @property
    def store_url(self) -> str:
        """The store's URL: the one configured, else ``proxy.sqlite3`` in ``data_dir``."""
        return self.store or f"sqlite:///{self.data_dir}/proxy.sqlite3"


def default_data_dir(environ: Mapping[str, str]) -> str:
    """``proxy.data_dir`` when the file sets none: ``$PROXY_DATA_DIR``, else ``./data``."""
    return environ.get("PROXY_DATA_DIR") or "data"


@dataclass(frozen=True)
class LogsSettings:
    """The request log (the top-level ``logs`` section): one row per request, realtime
    session and turn, and long-audio chunk, written to the store off the request path."""

    enabled: bool = True
    #: Store each request's transcript with its row (never its audio).
    content: bool = False
    #: Rows older than this are pruned in the background (0: kept forever).
    retention_days: float = 30.0
    #: Rows waiting to be written while the store is slow or down; past it new rows
    #: are dropped and counted. 10,000 rows is 5 s at 2,000 requests/s, and tens of MB.
    queue_max_rows: int = 10_000
    #: Rows written by one INSERT: large enough that 2,000 rows/s is a few
    #: statements a second, small enough that one failed batch loses little.
    batch_max_rows: int = 500
    #: Longest a row waits for its batch while the store keeps up (and so the
    #: live tail's delay).
    flush_interval_ms: int = 500


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
    #: The key's own Standard Webhooks secret for its jobs' webhooks (``whsec_...``).
    webhook_secret: str | None = field(default=None, repr=False)
    #: Where its async jobs' webhooks go when a job names no ``webhook_url``.
    webhook_url: str | None = None

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
class ModelPrice:
    """What a model's audio costs in USD: per audio minute, or per million tokens of each
    kind an answer reports (``usage.type: tokens``, as gpt-4o-transcribe answers)."""

    per_minute: float = 0.0
    input_audio_tokens: float = 0.0
    input_text_tokens: float = 0.0
    output_text_tokens: float = 0.0

    @property
    def per_token(self) -> bool:
        """Whether the model is priced by the tokens its answers report."""
        return bool(self.input_audio_tokens or self.input_text_tokens or self.output_text_tokens)


@dataclass(frozen=True)
class GovernanceConfig:
    """Bifrost's ``governance`` section, with audio-priced budgets."""

    virtual_keys: tuple[VirtualKeyConfig, ...] = ()
    #: By id: what the keys above name (and keys managed at run time may name too).
    rate_limits: Mapping[str, RateLimitConfig] = field(default_factory=dict)
    budgets: Mapping[str, BudgetConfig] = field(default_factory=dict)
    jwt: JwtConfig | None = None
    #: Prices by model (``whisper-1``) or ``provider/model``.
    model_prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    #: Audio seconds reserved for a request before its length is known.
    reserve_audio_seconds: float = 30.0
    #: Credentials that act as the operator (``/api/*``, ``/dashboard``), as a JWT with
    #: the admin role does. Compared in constant time; never logged.
    admin_keys: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Config:
    """Everything the proxy is configured with."""

    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    client: ClientConfig = field(default_factory=ClientConfig)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    governance: GovernanceConfig = field(default_factory=GovernanceConfig)
    logs: LogsSettings = field(default_factory=LogsSettings)


DEFAULT_BASE_URLS: Mapping[str, str] = {"openai": "https://api.openai.com"}


#: OpenAI's and Azure OpenAI's limit on an uploaded audio file.
HOSTED_UPLOAD_LIMIT_MB = 25.0
