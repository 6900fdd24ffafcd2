"""Logging: one JSON object per line (or plain text), each with its request's id.

Log records never carry credentials or audio, and transcript text only when
``--log-transcripts`` asks for it.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import re
import uuid
from typing import Any

import orjson

#: The id of the request being served, for every log line written meanwhile.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

ACCESS = logging.getLogger("proxy.access")

# A client's id is echoed in headers and logs: printable, without spaces, short.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


# Strings shaped like keys or tokens: Bifrost virtual keys, OpenAI keys, JWTs.
_CREDENTIAL_SHAPED = re.compile(r"(sk-|eyJ)[A-Za-z0-9_.-]{6,}")


def looks_like_a_credential(value: str) -> bool:
    """Whether ``value`` holds something shaped like a key or token."""
    return _CREDENTIAL_SHAPED.search(value) is not None


def redacted(value: str | None) -> str | None:
    """A client-supplied string fit for a log line: anything shaped like a credential is hidden."""
    if value is None:
        return None
    return _CREDENTIAL_SHAPED.sub("[redacted]", value)[:200]


def new_request_id(client_value: str | None) -> str:
    """The client's ``x-request-id`` when it is usable, else a fresh one."""
    if client_value and _CLIENT_REQUEST_ID.fullmatch(client_value):
        return client_value
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in document:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log line to stderr in ``fmt`` (``json`` or ``text``)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
