"""The application: routes, middleware and the upstream session's lifetime."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from . import handlers
from .config import Config
from .errors import ExpectationFailedError, MethodNotAllowedError, NotFoundError, ProxyError
from .keys import CONFIG_KEY, FACTS_KEY, LIMITS_KEY, ROUTER_KEY, SESSION_KEY
from .models import RequestFacts
from .providers import create_provider
from .responses import error_response
from .router import Router
from .upload import FormLimits, check_content_type, check_declared_length

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

#: Keyword arguments for aiohttp's server. A handler is cancelled the moment
#: its client goes away, so the upstream request it holds is aborted at once.
#: The read buffer is 4x aiohttp's default: larger pieces cut the proxy's CPU
#: per uploaded GiB by a fifth (scripts/bench_upload.py); larger still gained
#: nothing measurable and costs memory per connection.
SERVER_SETTINGS: dict[str, object] = {"handler_cancellation": True, "read_bufsize": 256 * 1024}


def create_app(config: Config) -> web.Application:
    """The proxy as an aiohttp application."""
    app = web.Application(middlewares=[error_middleware])
    app[CONFIG_KEY] = config
    app[LIMITS_KEY] = FormLimits(
        max_body_bytes=config.client.max_request_body_bytes,
        max_fields=config.proxy.max_fields,
        max_field_bytes=config.proxy.max_field_bytes,
        spool_dir=config.proxy.spool_dir,
        max_spool_bytes=config.proxy.max_spool_mb * 1024 * 1024,
    )
    app.cleanup_ctx.append(_upstream_session)
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/v1/models", handlers.list_models)
    for path in TRANSCRIPTION_PATHS:
        app.router.add_post(path, handlers.create_transcription, expect_handler=expect_continue)
    for path in AZURE_TRANSCRIPTION_PATHS:
        app.router.add_post(
            path, handlers.create_azure_transcription, expect_handler=expect_continue
        )
    return app


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    # One session and one connection pool for every upstream. No pool
    # limit: requests in flight are bounded where they come in, not here.
    connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        app[SESSION_KEY] = session
        config = app[CONFIG_KEY]
        providers = {
            name: create_provider(provider, session, config.proxy)
            for name, provider in config.providers.items()
        }
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


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue``: refuse what is bound to fail before the body is sent."""
    if request.version != aiohttp.HttpVersion11:
        return None
    if request.headers.get(aiohttp.hdrs.EXPECT, "").lower() != "100-continue":
        return error_response(
            ExpectationFailedError("only Expect: 100-continue is understood"), None
        )
    try:
        check_content_type(request)
        check_declared_length(request, request.app[LIMITS_KEY])
    except ProxyError as exc:
        response = error_response(exc, None)
        response.force_close()
        return response
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure in the documented error shape, never with a stack trace."""
    facts = RequestFacts(started=time.monotonic())
    request[FACTS_KEY] = facts
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
