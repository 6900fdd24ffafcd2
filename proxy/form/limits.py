"""The caps a form is read under, and the checks made before a byte of the body is read."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..errors import PayloadTooLargeError, UnsupportedMediaTypeError

#: Largest piece of the body read at once: asyncio receives 256 KiB at a
#: time. Measured with scripts/bench_upload.py, 1 MiB pieces saved about a
#: tenth of the CPU per GiB, with no throughput gain beyond the noise, and
#: added 2-4 MiB to every upload's working set; 64 KiB pieces cost about
#: twice the CPU of 1 MiB ones.
PIECE_BYTES = 256 * 1024
#: A body at most this large that has arrived whole is taken from aiohttp's
#: buffer, where it already is, so the upstream request has a known length.
BUFFERED_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FormLimits:
    """The caps enforced while reading a form."""

    max_body_bytes: int
    max_fields: int = 64
    max_field_bytes: int = 64 * 1024
    spool_dir: str | None = None
    #: Longest wait for the next bytes of the body.
    body_idle_timeout_s: float = 30.0
    #: All the waits for the body together: this, plus a second per
    #: ``body_min_bytes_per_s`` bytes received.
    body_deadline_s: float = 20.0
    body_min_bytes_per_s: int = 500


def check_content_type(request: web.BaseRequest) -> None:
    """Refuse a body that is not multipart/form-data before reading any of it."""
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"the body must be multipart/form-data; got {request.content_type or 'no Content-Type'}"
        )


def check_declared_length(request: web.BaseRequest, limits: FormLimits) -> None:
    """Refuse a body whose Content-Length is over the limit before reading any of it."""
    declared = request.content_length
    if declared is not None and declared > limits.max_body_bytes:
        raise too_large(limits)


def too_large(limits: FormLimits) -> PayloadTooLargeError:
    """The 413 of a body over ``limits.max_body_bytes``."""
    return PayloadTooLargeError(
        f"the request body is larger than the limit of {limits.max_body_bytes} bytes"
    )
