"""A multipart form that arrived whole, split into its parts in one pass over its bytes.

A small request's body is usually complete in aiohttp's buffer by the time
its handler runs. Walking it with the streaming reader (a boundary line, a
header parser and a part object per part, a read per piece) costs more than
the rest of the request; here a few ``bytes.find`` calls do it.

Only what this parser is sure to read exactly as the streaming reader does is
taken: no preamble or epilogue, CRLF line ends, a Content-Disposition and at
most a Content-Type per part, each once and plainly written. Anything else
(and every malformed body) is declined with ``None`` and goes the streaming
reader's way, which gives the answer or the error it always has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp.helpers import parse_mimetype
from aiohttp.multipart import content_disposition_filename

from .part_reader import plain_disposition_params

#: aiohttp's limit on a boundary, whose reader refuses a longer one.
_MAX_BOUNDARY = 70
#: Comfortably under aiohttp's longest part header line (8190 bytes).
_MAX_HEADER_LINE = 8000
_HEADER_NAMES = frozenset({"content-disposition", "content-type"})
# What aiohttp's header parser refuses in a value, and bare CR or LF.
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class WholePart:
    """One part of the form, as the streaming reader would have given it."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes

    def charset(self, default: str) -> str:
        """The part's charset, from its Content-Type (as aiohttp's ``get_charset``)."""
        if self.content_type is None:
            return default
        return parse_mimetype(self.content_type).parameters.get("charset", default)


def form_boundary(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type, if usable."""
    boundary = parse_mimetype(content_type).parameters.get("boundary")
    if not boundary or len(boundary) > _MAX_BOUNDARY:
        return None
    return boundary.encode("utf-8", "surrogateescape")


def split_whole_form(body: bytes, boundary: bytes) -> list[WholePart] | None:
    """The parts of ``body`` in order, or ``None`` to have the streaming reader read it."""
    dash_boundary = b"--" + boundary
    delimiter = b"\r\n" + dash_boundary
    if not body.startswith(dash_boundary + b"\r\n"):
        return None  # a preamble, or not this boundary at all
    parts: list[WholePart] = []
    position = len(dash_boundary) + 2
    while True:
        if body.startswith(b"\r\n", position):
            return None  # a part without headers
        head_end = body.find(b"\r\n\r\n", position)
        if head_end == -1:
            return None
        headers = _part_headers(body[position : head_end + 2])
        if headers is None:
            return None
        start = head_end + 4
        if body.startswith(dash_boundary, start):
            return None  # an empty part without its CRLF: aiohttp's leniency, not ours
        end = body.find(delimiter, start)
        if end == -1:
            return None
        part = _part(headers, body[start:end])
        if part is None:
            return None
        parts.append(part)
        position = end + len(delimiter)
        after = body[position : position + 2]
        if after == b"\r\n":
            position += 2
            continue
        if after == b"--" and body[position + 2 :] in (b"", b"\r\n"):
            return parts
        return None  # padding after a boundary, or an epilogue


def _part_headers(block: bytes) -> dict[str, str] | None:
    """A part's header lines (each ending in CRLF), lower-cased names to values."""
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n")[:-1]:
        if len(line) > _MAX_HEADER_LINE:
            return None
        raw_name, colon, raw_value = line.partition(b":")
        name = raw_name.decode("ascii", "replace").lower()
        if not colon or name not in _HEADER_NAMES or name in headers:
            return None
        try:
            value = raw_value.strip(b" \t").decode("utf-8")
        except UnicodeDecodeError:
            return None
        if _FORBIDDEN_IN_VALUE.search(value):
            return None
        headers[name] = value
    return headers


def _part(headers: dict[str, str], data: bytes) -> WholePart | None:
    disposition = headers.get("content-disposition")
    params = plain_disposition_params(disposition) if disposition is not None else None
    if params is None:
        return None
    name = content_disposition_filename(params, "name")
    content_type = headers.get("content-type")
    if not name or name == "_charset_":
        return None
    if content_type is not None and parse_mimetype(content_type).type == "multipart":
        return None  # nested: the streaming reader refuses it
    return WholePart(name, content_disposition_filename(params, "filename"), content_type, data)
