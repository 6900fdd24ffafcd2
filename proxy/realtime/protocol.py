"""The Realtime API's events on the wire: ids, the server's events, client events read.

Every server event carries a string ``event_id``; an ``error`` caused by a
client event echoes that event's own ``event_id`` in its error object
(OpenAI's :class:`RealtimeError` shape), so a client can tell which of its
events failed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ProxyError


def new_id(prefix: str) -> str:
    """A fresh id in OpenAI's style: ``event_...``, ``item_...``, ``sess_...``."""
    return f"{prefix}_{secrets.token_hex(10)}"


def server_event(type_: str, **fields: Any) -> dict[str, Any]:
    """A server event of ``type_`` with its own ``event_id``."""
    return {"event_id": new_id("event"), "type": type_, **fields}


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


def error_event(
    message: str,
    *,
    error_type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    caused_by: str | None = None,
) -> dict[str, Any]:
    """An ``error`` event; ``caused_by`` is the ``event_id`` of the client event at fault."""
    return server_event(
        "error",
        error={
            "type": error_type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": caused_by,
        },
    )


def restarting_event(deadline_s: float) -> dict[str, Any]:
    """The ``error`` a session gets when the server begins to stop: reconnect."""
    return error_event(
        f"the server is restarting: reconnect to go on; this session ends in {deadline_s:g} s",
        error_type="server_error",
        code="server_restarting",
    )


def expired_event() -> dict[str, Any]:
    """The ``error`` a session gets when the client secret it was opened with expires."""
    return error_event(
        "the client secret this session was opened with has expired: mint a new one",
        code="session_expired",
    )


def idle_event(idle_timeout_s: float) -> dict[str, Any]:
    """The ``error`` a session gets when its client has sent nothing for too long."""
    return error_event(
        f"no event from the client for {idle_timeout_s:g} s: the session is closed",
        code="idle_timeout",
    )


def binary_frame_event() -> dict[str, Any]:
    """The ``error`` for a binary frame: the Realtime API takes JSON text only."""
    return error_event(
        "binary frames are not taken: send client events as JSON text", code="invalid_event"
    )


def client_error_event(exc: ClientEventError, caused_by: str | None) -> dict[str, Any]:
    """The ``error`` event for a client event the session refused."""
    return error_event(
        exc.message, error_type=exc.error_type, code=exc.code, param=exc.param, caused_by=caused_by
    )


def proxy_error_event(exc: ProxyError, caused_by: str | None = None) -> dict[str, Any]:
    """The ``error`` event for one of the proxy's own errors (a refusal, an upstream's)."""
    return error_event(
        exc.message, error_type=exc.type, code=exc.code, param=exc.param, caused_by=caused_by
    )


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


def encode(event: dict[str, Any]) -> str:
    """A server event as a text frame."""
    return orjson.dumps(event).decode()
