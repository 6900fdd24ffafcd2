"""A small JSON request body (an API's object), read as uploads are: under the body
clocks (:mod:`proxy.form.body`) and a byte cap counted on the bytes read, since a
chunked body declares no length to check."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from ..app_state import LIMITS_KEY
from ..errors import InvalidRequestError
from .body import ClientBody
from .limits import check_declared_length


async def read_json_object(
    request: web.Request, max_bytes: int, *, empty: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The request's JSON object (orjson: no NaN or Infinity gets in), 413 past
    ``max_bytes``, 408 for a client too slow to send it; ``empty`` for a body of nothing
    (when None, that is a 400 like any body that is not an object)."""
    limits = replace(request.app[LIMITS_KEY], max_body_bytes=max_bytes)
    check_declared_length(request, limits)
    # A request without a body has aiohttp's shared empty stream, not one to read.
    raw = (
        await ClientBody(request, limits, on_end=lambda: None).read_all()
        if request.can_read_body
        else b""
    )
    if not raw.strip() and empty is not None:
        return empty
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object", code="invalid_json")
    return body
