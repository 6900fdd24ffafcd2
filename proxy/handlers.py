"""Thin endpoint functions: each calls the stages of a request in order.

A transcription: who is asking (auth), the form (form), which routes
(router), the plugins' say before anything is sent (governance, the cache:
:mod:`proxy.plugins`), the way the upload is sent (dispatch), the answer
(answers). The plugins are told of each stage by the pipeline; the handler
never names one.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .answers.responses import json_response
from .answers.streaming import streamed
from .app_state import (
    ANSWERS_KEY,
    AUTH_KEY,
    CONFIG_KEY,
    DISPATCHER_KEY,
    FACTS_KEY,
    LIMITS_KEY,
    METRICS_KEY,
    PIPELINE_KEY,
    ROUTER_KEY,
    STATE_KEY,
)
from .dispatch import TranscriptionJob
from .errors import missing_field
from .form import FormReader, repr_digest_sha256
from .form.fields import fallbacks_of, first_value, parse_stream
from .metrics import metrics_response
from .models import Task
from .providers.azure import check_deployment_id

#: How long readiness waits for Redis before calling it down.
READY_REDIS_TIMEOUT_S = 0.5


async def health(request: web.Request) -> web.Response:
    """Liveness (``/health``, ``/health/live``): the process is up and serving."""
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness (``/health/ready``): whether a balancer should send requests here.

    Unready from the moment a drain begins (a balancer that polls it stops
    sending; new connections are refused already), and while the Redis that
    rate limits and budgets are kept in is down, when there are any and the
    config does not serve without them (``redis_fail_open``). The cache and
    client secrets do without Redis for a while, so they alone do not count.
    """
    app = request.app
    state = app[STATE_KEY]
    if state.draining:
        return json_response({"status": "draining"}, status=503)
    config = app[CONFIG_KEY]
    # The config file's keys and those managed at run time alike.
    limited = app[AUTH_KEY].keys.any_limited()
    if state.redis is not None and limited and not config.proxy.redis_fail_open:
        try:
            async with asyncio.timeout(READY_REDIS_TIMEOUT_S):
                await state.redis.ping()
        except Exception:  # whatever the client raises, Redis is not there
            return json_response({"status": "redis_unreachable"}, status=503)
    return json_response({"status": "ready"})


async def metrics_page(request: web.Request) -> web.Response:
    """``GET /metrics`` in Prometheus' text format."""
    return metrics_response(request.app[METRICS_KEY])


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the configured models the caller may use, in OpenAI's list shape."""
    router = request.app[ROUTER_KEY]
    key = request.app[AUTH_KEY].identify(request.headers).virtual_key
    models = [
        {"id": f"{name}/{model}", "object": "model", "created": 0, "owned_by": name}
        for name, provider in router.providers.items()
        for model in provider.listed_models()
        if key is None or key.allows(name, model)
    ]
    return json_response({"object": "list", "data": models})


async def create_transcription(request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/transcriptions`` and its OpenAI-integration aliases."""
    return await _transcribe(request, "transcription", deployment=None)


async def create_translation(request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/translations`` and its aliases: the audio's words in English."""
    return await _transcribe(request, "translation", deployment=None)


async def create_azure_transcription(request: web.Request) -> web.StreamResponse:
    """The Azure OpenAI integration: the deployment in the path, on the Azure provider.

    It wins over any ``model`` field (the Azure SDK sends one too), and the
    client's ``api-version`` is not passed on: the upstream gets the one its
    provider is configured with.
    """
    return await _transcribe(
        request, "transcription", deployment=request.match_info["deployment_id"]
    )


async def create_azure_translation(request: web.Request) -> web.StreamResponse:
    """A translation on the Azure OpenAI integration (as :func:`create_azure_transcription`)."""
    return await _transcribe(request, "translation", deployment=request.match_info["deployment_id"])


async def _transcribe(
    request: web.Request, task: Task, *, deployment: str | None
) -> web.StreamResponse:
    app = request.app
    facts = request[FACTS_KEY]
    facts.request_type = facts.kind = facts.task = task
    # Who is asking, and whether the path names a deployment that could be sent
    # upstream, are settled before a byte of the body is read.
    facts.caller = app[AUTH_KEY].identify(request.headers)
    if deployment is not None:
        check_deployment_id(deployment, param="deployment_id")
    async with (
        app[PIPELINE_KEY].run(facts) as run,
        FormReader(
            request,
            app[LIMITS_KEY],
            ("model",) if deployment is None else (),
            metrics=app[METRICS_KEY],
            facts=facts,
            hash_audio=run.hashes_audio,
            expected_sha256=repr_digest_sha256(request.headers),
            task=task,
        ) as reader,
    ):
        reading = time.monotonic()
        try:
            form = facts.form = await reader.read()
        finally:
            # Timed however it ends: a read cut short (a slow client's 408) shows in the trace.
            facts.phase("form.read", reading)
        if form.audio is None:
            raise missing_field("file")
        requested = deployment or first_value(form.fields, "model")
        if requested is None:
            raise missing_field("model")
        facts.model_requested = requested
        if parse_stream(first_value(form.fields, "stream") or "false"):
            facts.request_type = streamed(task)
        routes = facts.routes = app[ROUTER_KEY].plan(
            requested, fallbacks_of(form.fields), azure_deployment=deployment is not None
        )
        facts.caller = app[AUTH_KEY].on_routes(facts.caller, routes)
        writer = app[ANSWERS_KEY]
        if (answer := await run.before(facts)) is not None:
            return await writer.from_plugin(request, facts, answer)
        job = TranscriptionJob(
            routes,
            form.fields,
            form.audio,
            request_id=facts.request_id,
            api_key=facts.caller.direct_key,
            task=task,
            hooks=run,
        )
        dispatch = await app[DISPATCHER_KEY].dispatch(job, request.content_length)
        return await writer.from_dispatch(request, facts, run, dispatch)
