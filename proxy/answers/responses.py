"""The answers the proxy writes: JSON transcripts, plain-text transcripts, errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from ..errors import ProxyError, error_body
from ..models import RequestFacts, TranscriptDone
from .formats import JSON_TYPE, RESPONSE_FORMATS


def json_response(
    document: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON answer, serialised once with orjson."""
    return web.Response(
        body=orjson.dumps(document), status=status, content_type=JSON_TYPE, headers=headers
    )


def error_response(error: ProxyError, facts: RequestFacts | None) -> web.Response:
    """An error in the one documented shape (README, "API": errors)."""
    body = error_body(
        error,
        provider=facts.provider if facts else None,
        model_requested=facts.model_requested if facts else None,
        request_type=facts.request_type if facts else "transcription",
    )
    return json_response(body, status=error.status_code, headers=error.headers)


def transcription_response(
    done: TranscriptDone,
    facts: RequestFacts,
    *,
    response_format: str,
    raw_request: Mapping[str, Any] | None = None,
    raw_response: bool = False,
) -> web.Response:
    """The complete non-streaming answer (README, "API")."""
    latency = facts.latency_ms()
    if done.document is None:
        text = done.text or ""
        declared = RESPONSE_FORMATS.get(response_format)
        # As the upstream sent it: a format's own type, else plain text.
        content_type = (
            "text/plain" if declared is None or declared.is_document else declared.media_type
        )
        return web.Response(
            text=text,
            content_type=content_type,
            charset="utf-8",
            headers={
                "x-bf-provider": facts.provider or "",
                "x-bf-model": facts.model_deployment or "",
                "x-bf-latency-ms": str(latency),
                **({"x-bf-attempts": str(len(facts.attempts))} if facts.attempts else {}),
                **_cache_headers(facts),
                **({"x-bf-audio-chunks": str(facts.audio_chunks)} if facts.audio_chunks else {}),
            },
        )
    extra_fields: dict[str, Any] = {
        "request_type": facts.request_type,
        "provider": facts.provider,
        "model_requested": facts.model_requested,
        "model_deployment": facts.model_deployment,
        "latency": latency,
        "chunk_index": 0,
    }
    if facts.attempts:
        extra_fields["attempts"] = facts.attempts
    if facts.audio_chunks is not None:
        extra_fields["audio_chunks"] = facts.audio_chunks
    if facts.cache_debug is not None:
        extra_fields["cache_debug"] = facts.cache_debug
    if raw_request is not None:
        extra_fields["raw_request"] = raw_request
    if raw_response:
        extra_fields["raw_response"] = done.document
    return json_response({**done.document, "extra_fields": extra_fields})


def _cache_headers(facts: RequestFacts) -> dict[str, str]:
    """``cache_debug``'s facts, for the plain-text answers that have no ``extra_fields``."""
    debug = facts.cache_debug
    if debug is None:
        return {}
    return {
        "x-bf-cache-hit": "true" if debug.get("cache_hit") else "false",
        "x-bf-cache-id": str(debug.get("cache_id") or ""),
    }
