"""The application: routes, middleware and the upstream session's lifetime."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from . import handlers, logs
from .answers.responses import error_response
from .answers.writer import AnswerWriter
from .api.governance import add_governance_api
from .api.logs import add_log_api
from .app_state import (
    ANSWERS_KEY,
    AUTH_KEY,
    CACHE_KEY,
    CONFIG_KEY,
    DISPATCHER_KEY,
    FACTS_KEY,
    GOVERNOR_KEY,
    LIMITS_KEY,
    LOG_QUERIES_KEY,
    METRICS_KEY,
    PIPELINE_KEY,
    REQUEST_LOG_KEY,
    REQUEST_SLOTS_KEY,
    ROUTER_KEY,
    SECRETS_KEY,
    SESSION_SLOTS_KEY,
    STATE_KEY,
    ServerState,
)
from .browser_boundary import BrowserBoundary, share_with_origin
from .cache.stores import CacheStore, MemoryStore, RedisStore
from .cache.transcripts import TranscriptCache
from .config import Config
from .dispatch import Dispatcher
from .errors import (
    ExpectationFailedError,
    MethodNotAllowedError,
    NotFoundError,
    ProxyError,
    ServiceUnavailableError,
)
from .form import FormLimits, check_content_type, check_declared_length
from .governance.concurrency import KeySlots
from .governance.counters import Counters, MemoryCounters, RedisCounters
from .governance.credentials import Authenticator
from .governance.governor import Governor
from .governance.runtime import managed_governance
from .jobs import add_job_routes, jobs_context
from .long_audio.chunked import LongAudio
from .metrics import Metrics
from .models import RequestFacts
from .plugins.base import Pipeline, Plugin
from .plugins.cache import CachePlugin
from .plugins.governance import GovernancePlugin
from .plugins.metrics import MetricsPlugin
from .plugins.request_log import RequestLogPlugin
from .providers import Provider, Redactor, create_provider
from .realtime.client_secrets import ClientSecrets
from .realtime.endpoint import (
    CLIENT_SECRET_PATHS,
    REALTIME_PATHS,
    create_client_secret,
    realtime_session,
)
from .redis_client import connect_redis
from .router import Router
from .store.app_key import STORE_KEY
from .store.engine import open_store
from .store.log_queries import LogQueries
from .store.request_log import RequestLog
from .web_ui import add_dashboard, add_web_ui

log = logging.getLogger(__name__)

TRANSCRIPTION_PATHS = (
    "/v1/audio/transcriptions",
    "/openai/v1/audio/transcriptions",
    "/openai/audio/transcriptions",
)
#: Where the AzureOpenAI SDK lands with azure_endpoint=http://host:port/openai
#: and with azure_endpoint=http://host:port.
AZURE_TRANSCRIPTION_PATHS = (
    "/openai/openai/deployments/{deployment_id}/audio/transcriptions",
    "/openai/deployments/{deployment_id}/audio/transcriptions",
)

TRANSLATION_PATHS = tuple(p.replace("transcriptions", "translations") for p in TRANSCRIPTION_PATHS)
AZURE_TRANSLATION_PATHS = tuple(
    p.replace("transcriptions", "translations") for p in AZURE_TRANSCRIPTION_PATHS
)

_COUNTED_ROUTES = frozenset(
    (
        *TRANSCRIPTION_PATHS,
        *AZURE_TRANSCRIPTION_PATHS,
        *TRANSLATION_PATHS,
        *AZURE_TRANSLATION_PATHS,
    )
)

#: Keyword arguments for aiohttp's server. A handler is cancelled the moment
#: its client goes away, so the upstream request it holds is aborted at once.
#: The read buffer is 4x aiohttp's default: larger pieces cut the proxy's CPU
#: per uploaded GiB by a fifth (scripts/bench_upload.py); larger still gained
#: nothing measurable and costs memory per connection.
SERVER_SETTINGS: dict[str, object] = {
    "handler_cancellation": True,
    "read_bufsize": 256 * 1024,
    "access_log": None,  # ours, with the request's id and facts, is written instead
}


def create_app(
    config: Config,
    providers: Mapping[str, Provider] | None = None,
    *,
    plugins: Sequence[Plugin] = (),
) -> web.Application:
    """The proxy as an aiohttp application.

    ``providers`` replaces the ones the config names (as httpx's
    ``MockTransport`` replaces the network): tests hand in providers of their
    own, and the app starts and closes them as it would its own. ``plugins``
    run around dispatch after the proxy's own (:func:`plugins_for`): an
    embedder's, or a test's.
    """
    boundary = BrowserBoundary(config)
    app = web.Application(middlewares=[observe_middleware, error_middleware, boundary.middleware])
    app[CONFIG_KEY] = config
    app[STATE_KEY] = state = ServerState()
    state.idle.set()
    app[METRICS_KEY] = metrics = Metrics(
        providers=[*config.providers, *(providers or {})],
        models=[
            name
            for provider in config.providers.values()
            for key in provider.keys
            for model in key.listed_models()
            for name in (model, f"{provider.name}/{model}")
        ],
    )
    proxy = config.proxy
    app[LIMITS_KEY] = FormLimits(
        max_body_bytes=config.client.max_request_body_bytes,
        max_fields=proxy.max_fields,
        max_field_bytes=proxy.max_field_bytes,
        spool_dir=proxy.spool_dir,
        body_idle_timeout_s=proxy.body_idle_timeout_s,
        body_deadline_s=proxy.body_deadline_s,
        body_min_bytes_per_s=proxy.body_min_bytes_per_s,
    )
    app[AUTH_KEY] = Authenticator(config.client, config.governance)
    app[REQUEST_SLOTS_KEY] = KeySlots(
        proxy.max_in_flight_per_key,
        what="requests in flight",
        setting="proxy.max_in_flight_per_key",
        code="too_many_requests_in_flight",
    )
    app[SESSION_SLOTS_KEY] = KeySlots(
        proxy.realtime.max_sessions_per_key,
        what="realtime sessions open",
        setting="proxy.realtime.max_sessions_per_key",
        code="too_many_sessions",
    )
    long_audio = LongAudio(
        proxy.chunking,
        asyncio.Semaphore(proxy.chunking.max_decoders),
        metrics,
        spool_dir=proxy.spool_dir,
    )
    app[DISPATCHER_KEY] = Dispatcher(
        cut=long_audio.cut,
        metrics=metrics,
        spool_dir=proxy.spool_dir,
        max_spool_bytes=proxy.max_spool_mb * 1024 * 1024,
    )
    app[ANSWERS_KEY] = AnswerWriter(
        keepalive_s=proxy.sse_keepalive_s, metrics=metrics, streams=app[STATE_KEY].streams
    )
    app.cleanup_ctx.append(_request_log)
    app.cleanup_ctx.append(_tracing)
    app.cleanup_ctx.append(_stores(plugins))
    # After the stores: it needs the store and the Redis client.
    app.cleanup_ctx.append(managed_governance(REPLICA))
    app.cleanup_ctx.append(_upstreams(providers))
    # After the stores and upstreams: jobs run through them, and stop before them.
    app.cleanup_ctx.append(jobs_context)
    app.on_response_prepare.append(_tag_response)
    app.on_response_prepare.append(share_with_origin)
    # Our own serving loop starts the drain at SIGTERM; a runner that only has
    # on_shutdown (a test server, say) starts it there. Either way, once.
    app.on_shutdown.append(start_draining)
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/health/live", handlers.health)
    app.router.add_get("/health/ready", handlers.ready)
    app.router.add_get("/metrics", handlers.metrics_page)
    app.router.add_get("/v1/models", handlers.list_models)
    add_log_api(app)
    add_governance_api(app)
    add_job_routes(app)
    if proxy.web_ui:
        add_web_ui(app)
        add_dashboard(app)
    for paths, handler in (
        (TRANSCRIPTION_PATHS, handlers.create_transcription),
        (AZURE_TRANSCRIPTION_PATHS, handlers.create_azure_transcription),
        (TRANSLATION_PATHS, handlers.create_translation),
        (AZURE_TRANSLATION_PATHS, handlers.create_azure_translation),
    ):
        for path in paths:
            app.router.add_post(path, handler, expect_handler=expect_continue)
    for path in REALTIME_PATHS:
        app.router.add_get(path, realtime_session)
    for path in CLIENT_SECRET_PATHS:
        app.router.add_post(path, create_client_secret)
    return app


def plugins_for(app: web.Application) -> list[Plugin]:
    """The plugins around dispatch, in the one order they run in: governance first (who
    may, and what it may spend), then the cache, the request log, tracing, metrics.
    A new concern is one module in :mod:`proxy.plugins` and one line here."""
    config = app[CONFIG_KEY]
    request_log = app.get(REQUEST_LOG_KEY)
    logs: list[Plugin] = (
        [RequestLogPlugin(request_log, replica=REPLICA, content=config.logs.content)]
        if request_log is not None
        else []
    )
    # With tracing off there is no plugin at all: requests pay nothing for it.
    tracing = app.get(TRACING_KEY)
    traces: list[Plugin] = [tracing] if tracing is not None else []
    return [
        GovernancePlugin(
            app[GOVERNOR_KEY],
            app[METRICS_KEY],
            request_slots=app[REQUEST_SLOTS_KEY],
            session_slots=app[SESSION_SLOTS_KEY],
            max_audio_seconds=config.proxy.max_audio_seconds,
            session_step_s=config.proxy.realtime.reserve_step_s,
        ),
        CachePlugin(app[CACHE_KEY]),
        *logs,
        *traces,
        MetricsPlugin(app[METRICS_KEY]),
    ]


#: This replica's name in the request log: its host's, and its process's.
REPLICA = f"{socket.gethostname()}:{os.getpid()}"


async def _request_log(app: web.Application) -> AsyncIterator[None]:
    """The store, and the request log written to it off the request path (with
    ``logs.enabled``). A store that cannot be opened stops the start with a message
    naming it."""
    config = app[CONFIG_KEY]
    if not config.logs.enabled:
        yield
        return
    store = await open_store(config.proxy.store_url, pool_size=config.proxy.store_pool_size)
    metrics = app[METRICS_KEY]
    log = RequestLog(
        store,
        config.logs,
        on_dropped=lambda count, reason: metrics.log_rows_dropped.labels(reason=reason).inc(count),
    )
    log.start()
    app[REQUEST_LOG_KEY] = log
    app[LOG_QUERIES_KEY] = LogQueries(store)
    app[STORE_KEY] = store
    try:
        yield
    finally:
        await log.close()
        await store.close()


#: The tracing plugin, when tracing is on (``proxy.tracing``).
TRACING_KEY = web.AppKey("tracing", Plugin)


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    """The tracer provider (with ``proxy.tracing``): made at start, and at cleanup, once
    every request is over, its last spans sent (for a few seconds at most)."""
    config = app[CONFIG_KEY]
    if not config.proxy.tracing.enabled:
        yield
        return
    # Imported here: the OpenTelemetry SDK is the tracing extra's, loaded only when on.
    from .plugins.tracing import TracingPlugin
    from .tracing_setup import Tracing

    tracing = Tracing(config.proxy.tracing, app[METRICS_KEY].spans_dropped)
    app[TRACING_KEY] = TracingPlugin(tracing.tracer, content=config.logs.content)
    try:
        yield
    finally:
        await tracing.aclose()


def _stores(
    plugins: Sequence[Plugin],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The stores' lifetime, and the plugins around dispatch made with them (the app's
    own, then ``plugins``)."""

    async def stores(app: web.Application) -> AsyncIterator[None]:
        """Where limits, budgets and cached transcripts are kept: Redis when replicas
        must share them (one connection pool for all), this process otherwise."""
        proxy = app[CONFIG_KEY].proxy
        redis = connect_redis(proxy.redis_url) if proxy.redis_url is not None else None
        app[STATE_KEY].redis = redis
        counters: Counters = RedisCounters(redis) if redis is not None else MemoryCounters()
        app[GOVERNOR_KEY] = Governor(
            app[CONFIG_KEY].governance,
            counters,
            fail_open=proxy.redis_fail_open,
            metrics=app[METRICS_KEY],
        )
        store: CacheStore = (
            RedisStore(redis)
            if proxy.cache.store == "redis" and redis is not None
            else MemoryStore(proxy.cache.max_mb * 1024 * 1024)
        )
        app[CACHE_KEY] = TranscriptCache(proxy.cache, store, app[METRICS_KEY])
        app[PIPELINE_KEY] = Pipeline([*plugins_for(app), *plugins])
        secrets: CacheStore = (
            RedisStore(redis, prefix=SECRETS_PREFIX)
            if redis is not None
            else MemoryStore(SECRETS_MEMORY_BYTES, evicts=False)
        )
        app[SECRETS_KEY] = ClientSecrets(secrets, app[AUTH_KEY])
        try:
            yield
        finally:
            await store.aclose()
            await secrets.aclose()
            await counters.aclose()
            if redis is not None:
                await redis.aclose()

    return stores


def _upstreams(
    given: Mapping[str, Provider] | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The providers' lifetime: the config's (over one upstream session), or ``given``."""

    async def upstreams(app: web.Application) -> AsyncIterator[None]:
        # One session and one connection pool for every upstream. No pool
        # limit: requests in flight are bounded where they come in, not here.
        connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
        # No cookie jar: one client's upstream cookies (a load balancer's, say)
        # must never ride along on another client's request.
        async with aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:
            config = app[CONFIG_KEY]
            providers = (
                dict(given)
                if given is not None
                else {
                    name: create_provider(
                        provider,
                        session,
                        config.proxy,
                        app[METRICS_KEY],
                        Redactor.of(config.providers.values()),
                    )
                    for name, provider in config.providers.items()
                }
            )
            if not providers:
                log.warning("no provider is configured: transcription requests will be refused")
            app[ROUTER_KEY] = Router(providers)
            try:
                for provider in providers.values():
                    await provider.start()
                yield
            finally:
                for provider in providers.values():
                    await provider.aclose()

    return upstreams


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue``: refuse what is bound to fail before the body is sent."""
    if request.version != aiohttp.HttpVersion11:
        return None
    if request.headers.get(aiohttp.hdrs.EXPECT, "").lower() != "100-continue":
        return error_response(
            ExpectationFailedError("only Expect: 100-continue is understood"), None
        )
    try:
        # Refused before the client sends a byte of its body.
        request.app[AUTH_KEY].identify(request.headers)
        check_content_type(request)
        check_declared_length(request, request.app[LIMITS_KEY])
    except ProxyError as exc:
        response = error_response(exc, None)
        response.force_close()
        return response
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


async def _tag_response(request: web.Request, response: web.StreamResponse) -> None:
    # Every response, errors and event streams included, says which request it answers.
    response.headers["x-request-id"] = logs.request_id.get()
    if request.app[STATE_KEY].draining and not isinstance(response, web.WebSocketResponse):
        # A keep-alive connection carries no request after this one: the
        # client's next goes to a replica that is staying. (The header is
        # already made by now, so it is set here as well as forced.)
        response.force_close()
        response.headers[aiohttp.hdrs.CONNECTION] = "close"


async def start_draining(app: web.Application) -> None:
    """On SIGTERM: readiness fails and answers close their connections; what is in flight
    gets the drain time (the caller has stopped accepting connections).

    Streams still open at the deadline are ended by us, with an error event
    and ``[DONE]``, before aiohttp's own (slightly later) deadline cancels
    whatever is left.
    """
    state = app[STATE_KEY]
    if state.draining:
        return
    state.draining = True
    timeout = app[CONFIG_KEY].proxy.drain_timeout_s
    log.info("shutting down: serving what is in flight for up to %s s", timeout)
    loop = asyncio.get_running_loop()
    state.drain_deadline = loop.time() + timeout
    loop.call_later(timeout, state.cut_streams)
    # Realtime sessions are told to reconnect now, and closed at the deadline.
    for session in list(state.sessions):
        state.drain_session(session)
    # A live tail of the request log lasts as long as its reader: it ends now.
    for tail in list(state.tails):
        tail.end()


#: Client secrets in Redis are kept under this prefix; in memory, in at most this much.
SECRETS_PREFIX = "proxy:secret:"
SECRETS_MEMORY_BYTES = 8 * 1024 * 1024

#: aiohttp's shutdown deadline lies this far past ours, so ours ends streams first.
DRAIN_GRACE_S = 2.0


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request its id, hold it to the in-flight cap, and log and count its answer."""
    facts = RequestFacts(
        started=time.monotonic(),
        request_id=logs.new_request_id(request.headers.get("x-request-id")),
        headers=request.headers,
        declared_bytes=request.content_length,
    )
    if request.path.endswith("/audio/translations"):
        facts.request_type = "translation"  # for an error answered before the handler runs
    request[FACTS_KEY] = facts
    logs.request_id.set(facts.request_id)
    # Only transcription work holds a slot: a client secret's mint, say, does not.
    transcription = _route_name(request) in _COUNTED_ROUTES
    state = request.app[STATE_KEY]
    metrics = request.app[METRICS_KEY]
    response: web.StreamResponse | None = None
    state.handling += 1
    state.idle.clear()
    try:
        if transcription and state.in_flight >= request.app[CONFIG_KEY].proxy.max_in_flight:
            # Refused before a byte of the body is read.
            response = error_response(
                ServiceUnavailableError(
                    "too many requests in flight; try again shortly",
                    code="overloaded",
                    headers={"Retry-After": "1"},
                ),
                facts,
            )
            response.force_close()
            return response
        if transcription:
            state.in_flight += 1
            metrics.in_flight.inc()
        try:
            response = await handler(request)
        finally:
            if transcription:
                state.in_flight -= 1
                metrics.in_flight.dec()
        return response
    finally:
        # Written once the answer is on its way: aiohttp sends a returned
        # response only after the middleware returns, and the line and the
        # metrics are work the client need not wait for. The callback runs
        # in a copy of this context, so the line keeps the request's id.
        asyncio.get_running_loop().call_soon(_access_log, request, facts, response)
        state.handling -= 1
        if not state.handling:
            state.idle.set()


def _access_log(
    request: web.Request, facts: RequestFacts, response: web.StreamResponse | None
) -> None:
    status = response.status if response is not None else 499  # the client left
    route_name = _route_name(request)
    metrics = request.app[METRICS_KEY]
    seconds = time.monotonic() - facts.started
    if route_name in _COUNTED_ROUTES:
        metrics.answered(route_name, facts.provider, facts.model_requested, status, seconds)
    if not logs.ACCESS.isEnabledFor(logging.INFO):
        return  # the line's fields are not worth gathering for nothing
    logs.ACCESS.info(
        "%s %s %s",
        request.method,
        route_name,
        status,
        extra={
            "method": request.method,
            "route": route_name,
            "status": status,
            "provider": facts.provider,
            "model": logs.redacted(facts.model_requested),
            "bytes_in": facts.audio_bytes,
            "bytes_out": _bytes_out(response),
            "latency_ms": int(seconds * 1000),
            # Bifrost's word for the events of a stream (their chunk_index).
            "chunks": facts.events_sent,
            "cache": ("hit" if facts.cache_hit else "miss") if facts.cache_debug else None,
            "trace_id": facts.trace_id,
            **(_session_fields(facts) if facts.kind == "realtime.session" else {}),
        },
    )


def _session_fields(facts: RequestFacts) -> dict[str, object]:
    """What the access line says of a realtime session besides its request's fields."""
    return {
        "audio_seconds": round(facts.audio_seconds_in, 3),
        "turns": facts.turns,
        "close_code": facts.close_code,
    }


def _route_name(request: web.Request) -> str:
    """The path pattern the request matched (``unmatched`` when none did)."""
    route = request.match_info.route.resource
    return route.canonical if route is not None else "unmatched"


def _bytes_out(response: web.StreamResponse | None) -> int:
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        return len(response.body)  # not sent yet when the line is written
    return response.body_length if response is not None else 0


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure in the documented error shape, never with a stack trace."""
    facts = request[FACTS_KEY]
    try:
        return await handler(request)
    except ProxyError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _routing_error(exc)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        error = ProxyError("internal error")
    response = error_response(error, facts)
    if not request.content.is_eof():
        # The rest of the body is unread: the connection cannot carry
        # another request once aiohttp has drained what it can.
        response.force_close()
    return response


def _routing_error(exc: web.HTTPException) -> ProxyError:
    if exc.status == 405:
        allow = exc.headers.get(aiohttp.hdrs.ALLOW, "")
        return MethodNotAllowedError(
            f"method not allowed; use {allow}", headers={aiohttp.hdrs.ALLOW: allow}
        )
    if exc.status == 404:
        return NotFoundError("no such endpoint")
    return ProxyError(exc.reason, code="http_error")
