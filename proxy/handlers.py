"""Thin endpoint functions: each calls the stages of a request in order.

A transcription: who is asking (governance), the form (form), which routes
(router), what the caller may spend (governance), the cache's lookups
(cache), the way the upload is sent (dispatch), the answer (answers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

from aiohttp import web

from .answers.events import final_answer
from .answers.responses import json_response, transcription_response
from .answers.streaming import relay, streamed
from .app_state import (
    AUTH_KEY,
    CACHE_KEY,
    CONFIG_KEY,
    DISPATCHER_KEY,
    FACTS_KEY,
    GOVERNOR_KEY,
    LIMITS_KEY,
    METRICS_KEY,
    REQUEST_SLOTS_KEY,
    ROUTER_KEY,
    STATE_KEY,
)
from .cache.lookup import CacheHit, CacheLookup
from .dispatch import Dispatch, Served, TranscriptionJob
from .errors import AnsweredFromCacheError, BadGatewayError, InvalidRequestError
from .form import FormReader, TranscriptionForm, repr_digest_sha256
from .form.fields import fallbacks_of, first_value, forwarded, parse_stream
from .governance.allowance import metered_upload
from .governance.credentials import Caller
from .governance.metering import note_answer
from .metrics import metrics_response
from .models import (
    AudioSource,
    FormField,
    RequestFacts,
    Task,
    TranscriptDone,
    TranscriptEvent,
)
from .providers.azure import check_deployment_id

RAW_REQUEST_HEADER = "x-bf-send-back-raw-request"
RAW_RESPONSE_HEADER = "x-bf-send-back-raw-response"


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
    limited = any(
        key.rate_limit is not None or key.budget is not None
        for key in config.governance.virtual_keys
    )
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
    request[FACTS_KEY].request_type = task
    # Who is asking, and whether the path names a deployment that could be sent
    # upstream, are settled before a byte of the body is read.
    caller = app[AUTH_KEY].identify(request.headers)
    if deployment is not None:
        check_deployment_id(deployment, param="deployment_id")
    with app[REQUEST_SLOTS_KEY].hold(caller):
        return await _serve(request, caller, task, deployment)


async def _serve(
    request: web.Request, caller: Caller, task: Task, deployment: str | None
) -> web.StreamResponse:
    app = request.app
    facts = request[FACTS_KEY]
    # How the cache is to be used is settled before a byte of the body is read.
    caching = app[CACHE_KEY].engage(request.headers)
    declared_sha256 = repr_digest_sha256(request.headers)
    async with FormReader(
        request,
        app[LIMITS_KEY],
        ("model",) if deployment is None else (),
        metrics=app[METRICS_KEY],
        facts=facts,
        hash_audio=caching is not None,
        expected_sha256=declared_sha256,
        task=task,
    ) as reader:
        form = await reader.read()
        if form.audio is None:
            raise _missing("file")
        requested = deployment or first_value(form.fields, "model")
        if requested is None:
            raise _missing("model")
        facts.model_requested = requested
        if _wants_stream(form.fields):
            facts.request_type = streamed(task)
        routes = app[ROUTER_KEY].plan(
            requested, fallbacks_of(form.fields), azure_deployment=deployment is not None
        )
        facts.provider = routes[0].provider.name
        facts.route = routes[0]
        caller = app[AUTH_KEY].on_routes(caller, routes)
        governor = app[GOVERNOR_KEY]
        governor.check_routes(caller, routes)
        async with metered_upload(
            governor,
            caller,
            routes,
            facts,
            form.audio,
            declared_bytes=request.content_length,
            max_seconds=app[CONFIG_KEY].proxy.max_audio_seconds,
        ) as allowance:
            lookup: CacheLookup | None = None
            if caching is not None:
                lookup = app[CACHE_KEY].lookup(
                    caching, caller, routes[0], declared_sha256, task=task
                )
                if (hit := await lookup.before_sending(form)) is not None:
                    return await _answer_from_cache(request, lookup, hit, form)
                lookup.hold(form)
            job = TranscriptionJob(
                routes,
                form.fields,
                form.audio,
                request_id=facts.request_id,
                api_key=caller.direct_key,
                task=task,
                allowance=allowance,
            )
            dispatch = await app[DISPATCHER_KEY].dispatch(job, request.content_length)
            try:
                return await _answer(request, dispatch, form, lookup, task)
            except AnsweredFromCacheError:
                assert lookup is not None
                assert lookup.hit is not None
                return await _answer_from_cache(request, lookup, lookup.hit, form)


async def _answer(
    request: web.Request,
    dispatch: Dispatch,
    form: TranscriptionForm,
    lookup: CacheLookup | None,
    task: Task,
) -> web.StreamResponse:
    """The dispatch's answer: relayed as events, or one complete document."""
    facts = request[FACTS_KEY]
    assert form.audio is not None
    async with aclosing(dispatch.events()) as events:
        # Until the first event, a failure is an ordinary JSON error with its
        # own status. By then the whole form has been read, so a stream field
        # sent after the file counts too.
        first = await anext(events, None)
        if first is None:
            raise BadGatewayError("the provider ended without an answer")
        if lookup is not None:
            lookup.answering()
            facts.cache_debug = lookup.debug(None)
        _note_served(facts, dispatch.served)
        fields = form.all_fields()
        if _wants_stream(fields):
            answers: list[TranscriptDone] = []

            def on_answer(done: TranscriptDone) -> None:
                answers.append(done)
                _note_served(facts, dispatch.served)

            async with aclosing(_keeping_answer(first, events, on_answer)) as watched:
                response = await _relay(request, first, watched, facts)
            if lookup is not None and answers and facts.stream_complete:
                await lookup.save(answers[0], form, facts)
            return response
        done = first if isinstance(first, TranscriptDone) else await final_answer(events)
    served = dispatch.served
    _note_served(facts, served)
    note_answer(facts, done)
    if lookup is not None:
        await lookup.save(done, form, facts)
    return transcription_response(
        done,
        facts,
        response_format=first_value(fields, "response_format") or "json",
        raw_request=(
            _raw_request(served.route.model, fields, form.audio, task)
            if _header_is_true(request, RAW_REQUEST_HEADER)
            else None
        ),
        raw_response=(
            served.route.provider.sends_back_raw_response
            or _header_is_true(request, RAW_RESPONSE_HEADER)
        ),
    )


def _note_served(facts: RequestFacts, served: Served) -> None:
    """Who answered, for the answer's ``extra_fields``, its headers and its log line."""
    facts.provider = served.route.provider.name
    facts.route = served.route
    facts.model_deployment = served.route.provider.deployment_of(served.route.model)
    if served.attempts:
        facts.attempts = served.attempts
    facts.audio_chunks = served.audio_chunks


async def _answer_from_cache(
    request: web.Request, lookup: CacheLookup, hit: CacheHit, form: TranscriptionForm
) -> web.StreamResponse:
    facts = request[FACTS_KEY]
    entry, done = hit
    facts.provider = entry.provider
    facts.model_deployment = entry.model
    facts.cache_debug = lookup.debug(entry)
    fields = form.all_fields()
    if _wants_stream(fields):
        return await _relay(request, done, _no_events(), facts)
    return transcription_response(
        done, facts, response_format=first_value(fields, "response_format") or "json"
    )


async def _relay(
    request: web.Request,
    first: TranscriptEvent,
    rest: AsyncIterator[TranscriptEvent],
    facts: RequestFacts,
) -> web.StreamResponse:
    return await relay(
        request,
        first,
        rest,
        facts,
        keepalive_s=request.app[CONFIG_KEY].proxy.sse_keepalive_s,
        metrics=request.app[METRICS_KEY],
        streams=request.app[STATE_KEY].streams,
    )


async def _keeping_answer(
    first: TranscriptEvent,
    rest: AsyncIterator[TranscriptEvent],
    on_answer: Callable[[TranscriptDone], None],
) -> AsyncGenerator[TranscriptEvent, None]:
    """``rest`` as it comes, its final answer (or ``first``, if that is it) seen on its way."""
    if isinstance(first, TranscriptDone):
        on_answer(first)
    async for event in rest:
        if isinstance(event, TranscriptDone):
            on_answer(event)
        yield event


async def _no_events() -> AsyncIterator[TranscriptEvent]:
    return
    yield  # an async generator with nothing in it


def _wants_stream(fields: Sequence[FormField]) -> bool:
    return parse_stream(first_value(fields, "stream") or "false")


def _missing(name: str) -> InvalidRequestError:
    return InvalidRequestError(f"{name} is required", code="missing_required_field", param=name)


def _header_is_true(request: web.Request, name: str) -> bool:
    return request.headers.get(name, "").strip().lower() == "true"


def _raw_request(
    model: str, fields: Sequence[FormField], audio: AudioSource, task: Task
) -> dict[str, Any]:
    """The upstream request's fields, without the audio bytes or any credential.

    A field sent once is a string; a repeated one (``include[]``) a list.
    """
    values: dict[str, list[str]] = {"model": [model]}
    for field in forwarded(fields, task):
        values.setdefault(field.name, []).append(field.value)
    document: dict[str, Any] = {
        name: found[0] if len(found) == 1 else found for name, found in values.items()
    }
    document["file"] = {"filename": audio.filename, "content_type": audio.content_type}
    return document
