"""The client's events as the proxy reads them, and the refusal of one it cannot take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


class ClientEventError(Exception):
    """A client event the session cannot take: answered with an ``error`` event, and the
    session goes on (as OpenAI's does)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_value",
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type


@dataclass(frozen=True)
class ClientEvent:
    """One event from the client: its type, its own id (if it gave one), and the rest."""

    type: str
    event_id: str | None
    body: dict[str, Any]


def read_client_event(text: str) -> ClientEvent:
    """A text frame as a client event, or :class:`ClientEventError`."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ClientEventError(
            "the frame is not JSON: every client event is a JSON object", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise ClientEventError("a client event is a JSON object", code="invalid_event")
    type_ = body.get("type")
    if not isinstance(type_, str):
        raise ClientEventError("the event has no type", code="invalid_event", param="type")
    return ClientEvent(type_, event_id_of(body), body)


def read_event_object(text: str) -> dict[str, Any]:
    """A text frame as a JSON object, whatever its type; :class:`ClientEventError`
    (``invalid_event``) when it is not one."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ClientEventError("a client event is a JSON object", code="invalid_event")
    return body


def event_id_of(event: dict[str, Any]) -> str | None:
    """A client event's own ``event_id``, when it gave a string one."""
    event_id = event.get("event_id")
    return event_id if isinstance(event_id, str) else None
