"""The Realtime API on the wire: event types, ids, close codes, and the server's events.

Every server event the proxy makes of its own is built here, one typed
constructor per event type, and carries a string ``event_id``; an ``error``
caused by a client event echoes that event's own ``event_id`` in its error
object (OpenAI's :class:`RealtimeError` shape), so a client can tell which
of its events failed. No other module spells an event's type.
"""

from __future__ import annotations

from typing import Any, Literal, NewType

import orjson

from ..errors import ProxyError
from ..ids import new_id
from .client_events import ClientEventError

#: The two shapes of the API: GA (``session.update``) and beta (``transcription_session.*``).
Dialect = Literal["ga", "beta"]

#: A server event as it is sent: made only by this module's constructors.
ServerEvent = NewType("ServerEvent", dict[str, Any])

# --- client events ------------------------------------------------------------------------
SESSION_UPDATE = "session.update"
#: The beta API's update (``session`` then holds the beta shape).
BETA_SESSION_UPDATE = "transcription_session.update"
APPEND = "input_audio_buffer.append"
COMMIT = "input_audio_buffer.commit"
CLEAR = "input_audio_buffer.clear"

# --- server events ------------------------------------------------------------------------
SESSION_CREATED = "session.created"
BETA_SESSION_CREATED = "transcription_session.created"
SESSION_UPDATED = "session.updated"
BETA_SESSION_UPDATED = "transcription_session.updated"
SPEECH_STARTED = "input_audio_buffer.speech_started"
SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
COMMITTED = "input_audio_buffer.committed"
CLEARED = "input_audio_buffer.cleared"
#: How every transcription event's type ends (its prefix differs between API versions).
TRANSCRIPTION_COMPLETED_SUFFIX = "input_audio_transcription.completed"
_TRANSCRIPTION = "conversation.item.input_audio_transcription"
TRANSCRIPTION_DELTA = f"{_TRANSCRIPTION}.delta"
TRANSCRIPTION_COMPLETED = f"conversation.item.{TRANSCRIPTION_COMPLETED_SUFFIX}"
TRANSCRIPTION_FAILED = f"{_TRANSCRIPTION}.failed"
ERROR = "error"

# --- close codes --------------------------------------------------------------------------
#: A session idle for too long ends normally.
CLOSE_NORMAL = 1000
#: The session's policy is spent: a limit or budget, or the client secret's lifetime.
CLOSE_POLICY = 1008
#: A failure of the server's (an upstream that closed without saying why).
CLOSE_FAILED = 1011
#: The server is restarting: reconnect.
CLOSE_RESTARTING = 1012


def encode(event: ServerEvent) -> str:
    """A server event as a text frame."""
    return orjson.dumps(event).decode()


def _event(type_: str, **fields: Any) -> ServerEvent:
    """A server event of ``type_`` with its own ``event_id``."""
    return ServerEvent({"event_id": new_id("event"), "type": type_, **fields})


# --- the session --------------------------------------------------------------------------


def session_created(session: dict[str, Any], dialect: Dialect) -> ServerEvent:
    """``session.created`` (beta: ``transcription_session.created``) with the session."""
    return _event(SESSION_CREATED if dialect == "ga" else BETA_SESSION_CREATED, session=session)


def session_updated(session: dict[str, Any], dialect: Dialect) -> ServerEvent:
    """``session.updated`` (beta: ``transcription_session.updated``): the effective session."""
    return _event(SESSION_UPDATED if dialect == "ga" else BETA_SESSION_UPDATED, session=session)


# --- the audio buffer ---------------------------------------------------------------------


def speech_started(audio_start_ms: int, item_id: str) -> ServerEvent:
    """Speech began: the turn ``item_id`` starts at ``audio_start_ms`` (prefix included)."""
    return _event(SPEECH_STARTED, audio_start_ms=audio_start_ms, item_id=item_id)


def speech_stopped(audio_end_ms: int, item_id: str) -> ServerEvent:
    """Speech ended: the turn ``item_id`` ends at ``audio_end_ms`` (the silence included)."""
    return _event(SPEECH_STOPPED, audio_end_ms=audio_end_ms, item_id=item_id)


def committed(item_id: str, previous_item_id: str | None) -> ServerEvent:
    """The turn ``item_id``'s audio is complete and goes to be transcribed."""
    return _event(COMMITTED, previous_item_id=previous_item_id, item_id=item_id)


def cleared() -> ServerEvent:
    """The audio buffer was emptied at the client's word."""
    return _event(CLEARED)


# --- transcripts --------------------------------------------------------------------------


def transcription_delta(item_id: str, delta: str) -> ServerEvent:
    """More of the turn's transcript (appended, never taken back)."""
    return _event(TRANSCRIPTION_DELTA, item_id=item_id, content_index=0, delta=delta)


def transcription_completed(item_id: str, transcript: str, usage: dict[str, Any]) -> ServerEvent:
    """The turn's whole transcript, and what it cost."""
    return _event(
        TRANSCRIPTION_COMPLETED,
        item_id=item_id,
        content_index=0,
        transcript=transcript,
        usage=usage,
    )


def transcription_failed(
    item_id: str, error_type: str, code: str | None, message: str, param: str | None
) -> ServerEvent:
    """The turn could not be transcribed, and why."""
    return _event(
        TRANSCRIPTION_FAILED,
        item_id=item_id,
        content_index=0,
        error={"type": error_type, "code": code, "message": message, "param": param},
    )


# --- errors -------------------------------------------------------------------------------


def error_event(
    message: str,
    *,
    error_type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    caused_by: str | None = None,
) -> ServerEvent:
    """An ``error`` event; ``caused_by`` is the ``event_id`` of the client event at fault."""
    return _event(
        ERROR,
        error={
            "type": error_type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": caused_by,
        },
    )


def client_error_event(exc: ClientEventError, caused_by: str | None) -> ServerEvent:
    """The ``error`` event for a client event the session refused."""
    return error_event(
        exc.message, error_type=exc.error_type, code=exc.code, param=exc.param, caused_by=caused_by
    )


def proxy_error_event(exc: ProxyError, caused_by: str | None = None) -> ServerEvent:
    """The ``error`` event for one of the proxy's own errors (a refusal, an upstream's)."""
    return error_event(
        exc.message, error_type=exc.type, code=exc.code, param=exc.param, caused_by=caused_by
    )


def unknown_event_error(type_: str, caused_by: str | None) -> ServerEvent:
    """The ``error`` for a client event a transcription session does not take."""
    return error_event(
        f"{type_!r} is not a client event of a transcription session",
        code="unknown_event_type",
        param="type",
        caused_by=caused_by,
    )


def buffer_full_error(pending_turns: int, caused_by: str | None) -> ServerEvent:
    """The ``error`` for an append refused because too many turns await transcripts."""
    return error_event(
        "audio is arriving faster than it can be transcribed: this append was "
        f"dropped ({pending_turns} turns are waiting for their transcripts)",
        code="input_audio_buffer_full",
        param="audio",
        caused_by=caused_by,
    )


def commit_empty_error(buffered_ms: int, caused_by: str | None) -> ServerEvent:
    """The ``error`` for a commit with less than 100 ms of audio to commit."""
    return error_event(
        "buffer too small: a commit needs at least 100 ms of audio, and the buffer "
        f"holds {buffered_ms} ms",
        code="input_audio_buffer_commit_empty",
        caused_by=caused_by,
    )


def binary_frame_error() -> ServerEvent:
    """The ``error`` for a binary frame: the Realtime API takes JSON text only."""
    return error_event(
        "binary frames are not taken: send client events as JSON text", code="invalid_event"
    )


def internal_error(caused_by: str | None) -> ServerEvent:
    """The ``error`` for a failure of the proxy's own while it handled a client event."""
    return error_event(
        "the event could not be handled",
        error_type="server_error",
        code="internal_error",
        caused_by=caused_by,
    )


def restarting_error(deadline_s: float) -> ServerEvent:
    """The ``error`` a session gets when the server begins to stop: reconnect."""
    return error_event(
        f"the server is restarting: reconnect to go on; this session ends in {deadline_s:g} s",
        error_type="server_error",
        code="server_restarting",
    )


def expired_error() -> ServerEvent:
    """The ``error`` a session gets when the client secret it was opened with expires."""
    return error_event(
        "the client secret this session was opened with has expired: mint a new one",
        code="session_expired",
    )


def idle_error(idle_timeout_s: float) -> ServerEvent:
    """The ``error`` a session gets when its client has sent nothing for too long."""
    return error_event(
        f"no event from the client for {idle_timeout_s:g} s: the session is closed",
        code="idle_timeout",
    )


def upstream_closed_error(provider: str, close_code: int | None) -> ServerEvent:
    """The ``error`` a relayed session gets when the provider's session ends."""
    return error_event(
        f"provider {provider} ended the session "
        f"(close {close_code if close_code is not None else 'without a code'})",
        error_type="server_error",
        code="upstream_closed",
    )
