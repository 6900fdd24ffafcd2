"""A request log row: :class:`LogRow` as callers hand it in, its columns as stored, and the
JSON-ready entry the log API answers with (and the live tail yields)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Status = Literal["processing", "success", "error"]
STATUSES: tuple[Status, ...] = ("processing", "success", "error")


@dataclass(frozen=True, slots=True)
class LogRow:
    """What the request log records of one request, realtime session or turn, or
    long-audio chunk. A row added again with the same ``id`` replaces the first (a
    request logged as ``processing`` when it begins, and again when it ends)."""

    #: The request id (``x-request-id``); a turn's or a chunk's own id.
    id: str
    #: ``transcription``, ``translation``, ``realtime.session``, ``realtime.turn``,
    #: ``transcription.chunk``, ``async.transcription``, ...
    object: str
    #: Unix time in seconds when it began.
    timestamp: float = field(default_factory=time.time)
    #: The session or request this row is part of (a turn's, a chunk's).
    parent_request_id: str | None = None
    provider: str | None = None
    model_requested: str | None = None
    model_deployment: str | None = None
    #: The virtual key's id, never its value.
    virtual_key_id: str | None = None
    status: Status = "processing"
    status_code: int | None = None
    error_code: str | None = None
    #: Milliseconds from its start to its end, and to its answer's first event.
    latency: int | None = None
    first_event_latency: int | None = None
    stream: bool = False
    response_format: str | None = None
    bytes_in: int | None = None
    audio_seconds: float | None = None
    #: Where ``audio_seconds`` came from: ``answer``, ``container`` or ``reservation``.
    audio_seconds_source: str | None = None
    #: USD.
    cost: float | None = None
    number_of_retries: int = 0
    #: Which route answered: 0 the primary, 1 the first fallback, ...
    fallback_index: int | None = None
    cache_hit: bool = False
    #: Which replica served it.
    replica: str | None = None
    #: The transcript, only when ``logs.content`` is on; never audio.
    content: str | None = None
    trace_id: str | None = None
    #: An operator's change (``governance.*``): who made it (an admin key's place in the
    #: config, a JWT's subject), and the id of what it changed.
    actor: str | None = None
    subject: str | None = None


#: The columns, in the order of :class:`LogRow`'s fields.
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LogRow))


#: The longest model name a row keeps. The models are in the log's indexes, whose
#: entries PostgreSQL caps at 2704 bytes, and a client may send a name of any length:
#: one row too long for them would cost its whole batch.
MAX_MODEL_CHARS = 256


def as_params(row: LogRow) -> dict[str, Any]:
    """``row`` as the store's columns: the time in epoch milliseconds, a model name cut
    to :data:`MAX_MODEL_CHARS`, and no NUL character in any text (PostgreSQL's text
    cannot hold one, and one such row must not cost its whole batch)."""
    params = {name: getattr(row, name) for name in COLUMNS}
    params["timestamp"] = round(row.timestamp * 1000)
    for name in ("model_requested", "model_deployment"):
        value = params[name]
        if value is not None and len(value) > MAX_MODEL_CHARS:
            params[name] = value[:MAX_MODEL_CHARS]
    for name in _TEXT_COLUMNS:
        value = params[name]
        if value and "\x00" in value:
            params[name] = value.replace("\x00", "\ufffd")
    return params


#: The columns that hold text (the only ones a NUL can be in).
_TEXT_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in fields(LogRow) if "str" in str(f.type) and f.name != "timestamp"
)


def entry(columns: Mapping[Any, Any]) -> dict[str, Any]:
    """A stored row (or :func:`as_params`' output) as the log API shows it: every
    column, the time in RFC 3339."""
    shown = {name: columns[name] for name in COLUMNS}
    shown["timestamp"] = rfc3339(columns["timestamp"])
    return shown


def now_ms() -> int:
    """The wall clock in epoch milliseconds, as the store keeps times."""
    return int(time.time() * 1000)


def rfc3339(epoch_ms: int) -> str:
    """Epoch milliseconds as RFC 3339 in UTC, to the millisecond (``...T12:00:00.250Z``)."""
    moment = EPOCH + timedelta(milliseconds=epoch_ms)  # exact, unlike a float's seconds
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
