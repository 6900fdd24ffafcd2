"""``/api/logs`` and ``/api/usage``: the request log read back, and followed live.

Bifrost's log API's shapes, plus audio seconds. Filters that do not parse are
a 400 naming the parameter; a virtual key reads its own rows only, whatever
its filters say.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from aiohttp import web

from ..answers.responses import json_response
from ..answers.sse import EventStream
from ..answers.streaming import keep_alive
from ..app_state import CONFIG_KEY, LOG_QUERIES_KEY, REQUEST_LOG_KEY, STATE_KEY
from ..errors import NotFoundError, ServiceUnavailableError
from ..store.log_filters import LogFilters, UsageQuery
from ..store.log_queries import LogQueries
from ..store.request_log import RequestLog
from .access import Reader, reader_of

#: The paths, in the order they are matched (``{id}`` last).
LOGS_PATH = "/api/logs"
FILTERDATA_PATH = "/api/logs/filterdata"
STREAM_PATH = "/api/logs/stream"
LOG_PATH = "/api/logs/{id}"
USAGE_PATH = "/api/usage"


def add_log_api(app: web.Application) -> None:
    """Route the request log's API."""
    app.router.add_get(LOGS_PATH, list_logs)
    app.router.add_get(FILTERDATA_PATH, filterdata)
    app.router.add_get(STREAM_PATH, stream_logs)
    app.router.add_get(LOG_PATH, one_log)
    app.router.add_get(USAGE_PATH, usage)


async def list_logs(request: web.Request) -> web.Response:
    """``GET /api/logs``: a page of rows, with its pagination and stats."""
    reader = reader_of(request)
    filters = _filters(request, reader)
    return json_response(await _queries(request).logs(filters, reader.virtual_key_id))


async def one_log(request: web.Request) -> web.Response:
    """``GET /api/logs/{id}``: one row, with its children (turns, chunks)."""
    reader = reader_of(request)
    found = await _queries(request).log(request.match_info["id"], reader.virtual_key_id)
    if found is None:
        raise NotFoundError("no such request in the log", code="log_not_found")
    return json_response(found)


async def filterdata(request: web.Request) -> web.Response:
    """``GET /api/logs/filterdata``: the providers, models and keys there are rows of."""
    reader = reader_of(request)
    return json_response(await _queries(request).filterdata(reader.virtual_key_id))


async def usage(request: web.Request) -> web.Response:
    """``GET /api/usage``: requests, errors, audio, cost and latency per group and interval."""
    reader = reader_of(request)
    query = UsageQuery.parse(request.query)
    return json_response(await _queries(request).usage(query, reader.virtual_key_id))


async def stream_logs(request: web.Request) -> web.StreamResponse:
    """``GET /api/logs/stream``: rows as they are written, as server-sent events, with the
    same filters; comment lines while nothing is written. Ends when the client leaves or
    the server stops."""
    reader = reader_of(request)
    log = _log(request)
    filters = _filters(request, reader)
    stream = EventStream(request)
    keepalive_s = request.app[CONFIG_KEY].proxy.sse_keepalive_s
    tails = request.app[STATE_KEY].tails
    async with log.subscribe(filters) as rows:
        tails.add(rows)
        try:
            await stream.open()
            with contextlib.suppress(ConnectionError):
                keepalive = asyncio.create_task(keep_alive(stream, keepalive_s))
                try:
                    async for row in rows:
                        await stream.send(row)
                finally:
                    keepalive.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                        await keepalive
                await stream.close()
        finally:
            tails.discard(rows)
    return stream.response


def _filters(request: web.Request, reader: Reader) -> LogFilters:
    """The query's filters; a virtual key's are held to its own rows."""
    filters = LogFilters.parse(request.query)
    if reader.virtual_key_id is not None:
        filters = dataclasses.replace(filters, virtual_key_ids=(reader.virtual_key_id,))
    return filters


def _log(request: web.Request) -> RequestLog:
    log = request.app.get(REQUEST_LOG_KEY)
    if log is None:
        raise ServiceUnavailableError(
            "the request log is off (logs.enabled: false)", code="request_log_off"
        )
    return log


def _queries(request: web.Request) -> LogQueries:
    _log(request)  # the same refusal when the log is off
    return request.app[LOG_QUERIES_KEY]
