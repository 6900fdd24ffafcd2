"""Thin request handlers: read the form, route it, write the answer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from aiohttp import web

from .errors import BadGatewayError, InvalidRequestError
from .fields import fallbacks_of, first_value, forwarded, parse_stream
from .governance import Admission, Governor
from .keys import (
    AUTH_KEY,
    CONFIG_KEY,
    FACTS_KEY,
    GOVERNOR_KEY,
    LIMITS_KEY,
    METRICS_KEY,
    ROUTER_KEY,
    STATE_KEY,
)
from .metrics import metrics_response
from .models import AudioSource, FormField, RequestFacts, TranscriptDone, TranscriptEvent
from .relay import STREAM_REQUEST_TYPE, relay
from .responses import json_response, transcription_response
from .router import Dispatch, may_retry
from .transcripts import audio_seconds, wav_seconds
from .upload import FormReader

RAW_REQUEST_HEADER = "x-bf-send-back-raw-request"
RAW_RESPONSE_HEADER = "x-bf-send-back-raw-response"


async def health(request: web.Request) -> web.Response:
    """Liveness: the process is up and serving."""
    return json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics`` in Prometheus' text format."""
    return metrics_response(request.app[METRICS_KEY])


async def create_transcription(request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/transcriptions`` and its OpenAI-integration aliases."""
    return await _transcribe(request, deployment=None)


async def create_azure_transcription(request: web.Request) -> web.StreamResponse:
    """The Azure OpenAI integration: the deployment in the path names the model.

    It wins over any ``model`` field (the Azure SDK sends one too), and the
    client's ``api-version`` is not passed on: the upstream gets the one its
    provider is configured with.
    """
    return await _transcribe(request, deployment=request.match_info["deployment_id"])


async def _transcribe(request: web.Request, *, deployment: str | None) -> web.StreamResponse:
    facts = request[FACTS_KEY]
    router = request.app[ROUTER_KEY]
    metrics = request.app[METRICS_KEY]
    governor = request.app[GOVERNOR_KEY]
    # Who is asking is settled before a byte of the body is read.
    caller = request.app[AUTH_KEY].identify(request.headers)
    routing_fields = ("model",) if deployment is None else ()
    async with FormReader(
        request, request.app[LIMITS_KEY], routing_fields, metrics=metrics, facts=facts
    ) as reader:
        form = await reader.read()
        if form.audio is None:
            raise _missing("file")
        requested = deployment or first_value(form.fields, "model")
        if requested is None:
            raise _missing("model")
        facts.model_requested = requested
        if _wants_stream(form.fields):
            facts.request_type = STREAM_REQUEST_TYPE
        routes = router.plan(requested, fallbacks_of(form.fields))
        facts.provider = routes[0].provider.name
        governor.check_routes(caller, routes)
        admission = await governor.admit(caller, routes[0])
        # From here on, however the request ends, its reservation is settled.
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(_settled(governor, admission, facts))
            if may_retry(routes):
                await reader.record()
            dispatch = Dispatch(
                routes,
                form.fields,
                form.audio,
                metrics=metrics,
                request_id=facts.request_id,
                api_key=caller.direct_key,
            )
            events = await stack.enter_async_context(aclosing(dispatch.events()))
            # Until the first event, a failure is an ordinary JSON error with
            # its own status. By then the whole form has been read, so a
            # stream field sent after the file counts too.
            first = await anext(events, None)
            if first is None:
                raise BadGatewayError("the provider ended without an answer")
            route = dispatch.route
            facts.provider = route.provider.name
            facts.model_deployment = route.provider.deployment_of(route.model)
            if dispatch.fell_back:
                facts.attempts = [attempt.as_dict() for attempt in dispatch.attempts]
            fields = form.all_fields()
            if _wants_stream(fields):
                return await relay(
                    request,
                    first,
                    events,
                    facts,
                    keepalive_s=request.app[CONFIG_KEY].proxy.sse_keepalive_s,
                    metrics=metrics,
                    streams=request.app[STATE_KEY].streams,
                )
            done = first if isinstance(first, TranscriptDone) else await _final_answer(events)
            facts.audio_seconds = audio_seconds(done)
    return transcription_response(
        done,
        facts,
        response_format=first_value(fields, "response_format") or "json",
        raw_request=(
            _raw_request(route.model, fields, form.audio)
            if _header_is_true(request, RAW_REQUEST_HEADER)
            else None
        ),
        raw_response=(
            route.provider.sends_back_raw_response or _header_is_true(request, RAW_RESPONSE_HEADER)
        ),
    )


@contextlib.asynccontextmanager
async def _settled(
    governor: Governor, admission: Admission, facts: RequestFacts
) -> AsyncIterator[None]:
    """Settle the request's reservations with the audio it used, however it ends."""
    try:
        yield
    finally:
        # The answer's own figure, else the length of a WAV upload.
        seconds = facts.audio_seconds or wav_seconds(facts.audio_head, facts.audio_bytes)
        await governor.settle(admission, seconds)


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


def _wants_stream(fields: Sequence[FormField]) -> bool:
    return parse_stream(first_value(fields, "stream") or "false")


def _missing(name: str) -> InvalidRequestError:
    return InvalidRequestError(f"{name} is required", code="missing_required_field", param=name)


async def _final_answer(events: AsyncIterator[TranscriptEvent]) -> TranscriptDone:
    """The answer at the end of ``events``; the deltas before it are not needed."""
    async for event in events:
        if isinstance(event, TranscriptDone):
            return event
    raise BadGatewayError("the upstream stream ended before the transcript was done")


def _header_is_true(request: web.Request, name: str) -> bool:
    return request.headers.get(name, "").strip().lower() == "true"


def _raw_request(model: str, fields: Sequence[FormField], audio: AudioSource) -> dict[str, Any]:
    """The upstream request's fields, without the audio bytes or any credential.

    A field sent once is a string; a repeated one (``include[]``) a list.
    """
    values: dict[str, list[str]] = {"model": [model]}
    for field in forwarded(fields):
        values.setdefault(field.name, []).append(field.value)
    document: dict[str, Any] = {
        name: found[0] if len(found) == 1 else found for name, found in values.items()
    }
    document["file"] = {"filename": audio.filename, "content_type": audio.content_type}
    return document
