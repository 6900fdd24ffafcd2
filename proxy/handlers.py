"""Thin request handlers: read the form, route it, write the answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

from aiohttp import web

from .answers.events import final_answer
from .answers.relay import STREAM_REQUEST_TYPE, relay
from .answers.responses import json_response, transcription_response
from .app_state import (
    AUTH_KEY,
    CACHE_KEY,
    CONFIG_KEY,
    DECODERS_KEY,
    FACTS_KEY,
    GOVERNOR_KEY,
    LIMITS_KEY,
    METRICS_KEY,
    ROUTER_KEY,
    STATE_KEY,
)
from .audio.sources import BufferedAudio, SpooledAudio
from .cache.lookup import CachedAnswer, CacheLookup, cache_scope
from .dispatch import Dispatch, may_retry
from .errors import BadGatewayError, InvalidRequestError, ProxyError, UploadOverLimitError
from .form import PIECE_BYTES, FormReader, TranscriptionForm, repr_digest_sha256
from .form.fields import fallbacks_of, first_value, forwarded, parse_stream
from .governance.credentials import Caller
from .governance.governor import Admission, Governor
from .governance.metering import audio_seconds, wav_seconds
from .long_audio.dispatch import (
    LimitedAudio,
    LongAudio,
    long_audio_installed,
    over_limit,
    refuse_without_extra,
    upload_limit,
)
from .metrics import Metrics, metrics_response
from .models import AudioSource, FormField, RequestFacts, TranscriptDone, TranscriptEvent
from .router import Route

#: A cached entry and its answer in the format the request asks for.
CacheHit = tuple[CachedAnswer, TranscriptDone]

RAW_REQUEST_HEADER = "x-bf-send-back-raw-request"
RAW_RESPONSE_HEADER = "x-bf-send-back-raw-response"


async def health(request: web.Request) -> web.Response:
    """Liveness: the process is up and serving."""
    return json_response({"status": "ok"})


async def metrics_page(request: web.Request) -> web.Response:
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
    cache_request = request.app[CACHE_KEY].engage(request.headers)
    declared_sha256 = repr_digest_sha256(request.headers)
    routing_fields = ("model",) if deployment is None else ()
    async with FormReader(
        request,
        request.app[LIMITS_KEY],
        routing_fields,
        metrics=metrics,
        facts=facts,
        hash_audio=cache_request is not None,
        expected_sha256=declared_sha256,
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
            lookup: CacheLookup | None = None
            if cache_request is not None:
                lookup = CacheLookup(
                    request.app[CACHE_KEY],
                    cache_request,
                    scope=cache_scope(caller),
                    route=routes[0],
                )
                hit = await _look_up_before_sending(lookup, form, reader, declared_sha256)
                if hit is not None:
                    return await _answer_from_cache(request, lookup, hit, form.all_fields())
            dispatch, events = await _start(request, stack, routes, form, reader, caller, lookup)
            # Until the first event, a failure is an ordinary JSON error with
            # its own status. By then the whole form has been read, so a
            # stream field sent after the file counts too.
            try:
                first = await _first_event(
                    events, lookup if isinstance(dispatch, Dispatch) else None, metrics
                )
            except UploadOverLimitError:
                # A body of unknown length crossed the provider's limit: what
                # was sent is abandoned and the recording is cut into chunks.
                await events.aclose()
                dispatch = _long_audio(request, routes, form, caller)
                events = await stack.enter_async_context(aclosing(dispatch.events()))
                first = await anext(events, None)
            if isinstance(first, tuple):
                assert lookup is not None
                return await _answer_from_cache(request, lookup, first, form.all_fields())
            if first is None:
                raise BadGatewayError("the provider ended without an answer")
            route = dispatch.route
            facts.provider = route.provider.name
            facts.model_deployment = route.provider.deployment_of(route.model)
            if dispatch.fell_back:
                facts.attempts = dispatch.attempt_facts
            fields = form.all_fields()
            if lookup is not None:
                facts.cache_debug = lookup.debug(None)
                if lookup.cache_id is None:  # a long upload: keyed once it is all read
                    lookup.cache_id = lookup.key(fields, reader.audio_sha256)
            if _wants_stream(fields):
                answers: list[TranscriptDone] = []

                def on_answer(done: TranscriptDone) -> None:
                    answers.append(done)
                    _note_how_answered(dispatch, facts)

                watched = await stack.enter_async_context(
                    aclosing(_keeping_answer(first, events, on_answer))
                )
                response = await _relay(request, first, watched, facts)
                if lookup is not None and answers and facts.stream_complete:
                    await lookup.save(answers[0], fields, facts)
                return response
            done = first if isinstance(first, TranscriptDone) else await final_answer(events)
            _note_how_answered(dispatch, facts)
            facts.audio_seconds = audio_seconds(done)
            if lookup is not None:
                await lookup.save(done, fields, facts)
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


def _note_how_answered(dispatch: Dispatch | LongAudio, facts: RequestFacts) -> None:
    """What only the end of an answer tells: its chunks, and any chunk's fallbacks."""
    if isinstance(dispatch, LongAudio):
        facts.audio_chunks = dispatch.chunk_count
        if dispatch.fell_back:
            facts.attempts = dispatch.attempt_facts


async def _start(
    request: web.Request,
    stack: contextlib.AsyncExitStack,
    routes: Sequence[Route],
    form: TranscriptionForm,
    reader: FormReader,
    caller: Caller,
    lookup: CacheLookup | None,
) -> tuple[Dispatch | LongAudio, AsyncGenerator[TranscriptEvent, None]]:
    """Send the upload on its way: streamed through whole, or cut into chunks when too long."""
    assert form.audio is not None
    limit = upload_limit(routes)
    over = None if limit is None else over_limit(request, form.audio, limit)
    if over:
        dispatch: Dispatch | LongAudio = _long_audio(request, routes, form, caller)
    else:
        audio: AudioSource = form.audio
        if limit is not None and over is None:
            # Too long or not is found out on the way: what was read is kept
            # so the recording can still be cut into chunks.
            await reader.record(max_bytes=limit + 2 * PIECE_BYTES)
            audio = LimitedAudio(form.audio, limit)
        elif may_retry(routes):
            await reader.record()
            audio = form.audio
        if lookup is not None and not lookup.hit.done():
            # The digest is known only at the end of the file: the end of
            # the upstream body waits for the cache's answer.
            audio = lookup.hold(audio, form.all_fields, lambda: reader.audio_sha256)
        dispatch = Dispatch(
            routes,
            form.fields,
            audio,
            metrics=request.app[METRICS_KEY],
            request_id=request[FACTS_KEY].request_id,
            api_key=caller.direct_key,
        )
    return dispatch, await stack.enter_async_context(aclosing(dispatch.events()))


def _long_audio(
    request: web.Request, routes: Sequence[Route], form: TranscriptionForm, caller: Caller
) -> LongAudio:
    """The way of an upload over its provider's limit (a 413 if this install cannot cut it)."""
    assert form.audio is not None
    limit = upload_limit(routes)
    assert limit is not None
    if not long_audio_installed():
        raise refuse_without_extra(routes[0], limit)
    proxy = request.app[CONFIG_KEY].proxy
    return LongAudio(
        routes,
        form.fields,
        form.audio,
        settings=proxy.chunking,
        limit=limit,
        decoders=request.app[DECODERS_KEY],
        spool_dir=proxy.spool_dir,
        metrics=request.app[METRICS_KEY],
        request_id=request[FACTS_KEY].request_id,
        api_key=caller.direct_key,
    )


async def _look_up_before_sending(
    lookup: CacheLookup,
    form: TranscriptionForm,
    reader: FormReader,
    declared_sha256: bytes | None,
) -> CacheHit | None:
    """A hit found before anything goes upstream, when the audio's digest is known up front.

    A spooled or buffered file was hashed as it was read. A streaming file
    is known up front only by its ``Repr-Digest``: on a hit, the rest of the
    body is read (and checked against the digest) without going upstream.
    """
    if isinstance(form.audio, SpooledAudio | BufferedAudio):
        found = await lookup.find(form.all_fields(), reader.audio_sha256)
        lookup.hit.set_result(found)
        return found
    if declared_sha256 is None or form.audio is None:
        return None
    found = await lookup.find(form.fields, declared_sha256.hex())
    if found is None:
        return None  # streamed upstream; the cache is asked again at the end of the file
    async for _ in form.audio.chunks():
        pass  # read and hashed; a digest that does not match is a 400
    every_field = form.all_fields()
    if len(every_field) != len(form.fields):
        # Fields after the file may change the key; the audio is read and gone.
        found = await lookup.find(every_field, reader.audio_sha256)
        if found is None:
            raise InvalidRequestError(
                "with Repr-Digest, send every field before the file: fields after it "
                "changed the request, and the file was read without forwarding it",
                code="fields_after_file",
            )
    lookup.hit.set_result(found)
    return found


async def _first_event(
    events: AsyncIterator[TranscriptEvent], lookup: CacheLookup | None, metrics: Metrics
) -> TranscriptEvent | CacheHit | None:
    """The upstream's first event, or the cache's answer if that comes first.

    On a hit the upstream request, still waiting for the end of its body, is
    abandoned: the upstream never receives a complete request.
    """
    if lookup is None or lookup.hit.done():
        return await anext(events, None)
    upstream = asyncio.ensure_future(anext(events, None))
    try:
        await asyncio.wait((upstream, lookup.hit), return_when=asyncio.FIRST_COMPLETED)
        answered = upstream.done() and not upstream.cancelled() and upstream.exception() is None
        if not answered and lookup.hit.done() and (hit := lookup.hit.result()) is not None:
            metrics.cache_upstream_cancelled.inc()
            return hit
        return await upstream
    finally:
        if not upstream.done():
            upstream.cancel()
        with contextlib.suppress(asyncio.CancelledError, ProxyError):
            await upstream


async def _answer_from_cache(
    request: web.Request, lookup: CacheLookup, hit: CacheHit, fields: Sequence[FormField]
) -> web.StreamResponse:
    facts = request[FACTS_KEY]
    entry, done = hit
    facts.provider = entry.provider
    facts.model_deployment = entry.model
    facts.cache_debug = lookup.debug(entry)
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


@contextlib.asynccontextmanager
async def _settled(
    governor: Governor, admission: Admission, facts: RequestFacts
) -> AsyncIterator[None]:
    """Settle the request's reservations with the audio it used, however it ends."""
    try:
        yield
    finally:
        # The answer's own figure, else the length of a WAV upload; an
        # answer from the cache cost no upstream audio.
        seconds = (
            0.0
            if facts.cache_hit
            else facts.audio_seconds or wav_seconds(facts.audio_head, facts.audio_bytes)
        )
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
