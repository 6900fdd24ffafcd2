"""A sans-IO parser for multipart/form-data: bytes in, parts out, fed the whole body or pieces.

Like h11's ``Connection``, it does no I/O of its own. The caller hands it
what it has read (:meth:`FormParser.feed`, and :meth:`FormParser.feed_eof` at
the end of the body) and asks for events (:meth:`FormParser.next_event`):

- a :class:`PartHead` as each part begins,
- ``bytes``, pieces of that part's body, as they can be told apart from the
  boundary that ends it,
- :data:`Signal.PART_END` after the last piece of a part,
- :data:`Signal.FORM_END` after the closing boundary,
- :data:`Signal.NEED_DATA` when nothing more can be said until more is fed.

A body that has arrived whole is fed once and split with a few ``bytes.find``
calls; one that trickles in is fed as it comes, and the same events come
out, only later. A piece of a part's body is passed on as the very object
fed whenever nothing in it needs holding back (a suffix that could begin the
boundary), so a streamed file is not copied on its way through.

What it accepts and refuses is what aiohttp's ``MultipartReader`` accepts and
refuses, leniencies included (a preamble and an epilogue; any whitespace after
a boundary; LF or CRLF line ends in part headers; an empty part directly
followed by its boundary), with aiohttp's own header parser for part
headers and its limits on them (8190 bytes a line, 128 lines). It differs
where that is better for a client or for memory: a ``_charset_`` part sets
the default charset of the text parts, as RFC 7578 section 4.6 says it
does, where aiohttp 3.14 refuses the body; a line of the preamble or after a
boundary may be 64 KiB (aiohttp's limit is twice its read buffer, 512 KiB
here), and the epilogue is dropped unread, whatever its lines' length.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HeadersParser
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from ..errors import MalformedBodyError

#: aiohttp's limits on a part's headers: the longest line (its line end
#: included) and the most lines.
MAX_HEADER_LINE = 8190
MAX_HEADERS = 128
#: A preamble or boundary line longer than this is no form a client sends.
_MAX_OTHER_LINE = 64 * 1024
# The part headers nearly every client writes, to the letter: a plain name,
# perhaps a plain filename (valid UTF-8, checked when decoded), perhaps a
# Content-Type of printable ASCII. What matches reads exactly as aiohttp's
# header parser and Content-Disposition parser read it; anything else is
# read by them, line by line.
_PLAIN_VALUE = rb'"([^"\\/;\x00-\x1f\x7f][^"\\;\x00-\x1f\x7f]*)"'
_COMMON_HEAD = re.compile(
    rb"Content-Disposition: form-data; name="
    + _PLAIN_VALUE
    + rb"(?:; filename="
    + _PLAIN_VALUE
    + rb")?"
    + rb"(?:\r\nContent-Type: ([!-~](?:[ -~]*[!-~])?)[ \t]*)?\r\n\r\n"
)
#: Headers longer than this in all go to aiohttp's header parser.
_MAX_PLAIN_HEADERS = 4096
#: The longest encoding name the WHATWG lists is 19 characters.
_MAX_CHARSET = 31

# ``form-data`` and plain quoted parameters: what browsers, curl and the SDKs
# send. Values with a backslash, a leading slash or a ``*`` parameter name go
# to aiohttp's full parser, which handles (and sanitises) them.
_PLAIN_DISPOSITION = re.compile(r'form-data(?:\s*;\s*[A-Za-z0-9_-]+="[^"\\/;][^"\\;]*")*\s*')
_PLAIN_PARAMETER = re.compile(r'([A-Za-z0-9_-]+)="([^"]*)"')


class Signal(enum.Enum):
    """The events that carry no data."""

    NEED_DATA = "need data"
    PART_END = "part end"
    FORM_END = "form end"


@dataclass(frozen=True, slots=True)
class PartHead:
    """A part's headers, as the form reader asks of them."""

    #: ``name`` and ``filename`` from the Content-Disposition header.
    name: str | None
    filename: str | None
    content_type: str | None
    #: Its text's charset: its own Content-Type's, else the form's ``_charset_``, else UTF-8.
    charset: str
    #: Whether it is a multipart body of its own (a nested form).
    is_multipart: bool = False
    #: Its Content-Transfer-Encoding, lower-cased ("" when it has none).
    transfer_encoding: str = ""


Event = PartHead | bytes | Signal


def form_boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type, as the body spells it."""
    boundary = parse_mimetype(content_type).parameters.get("boundary")
    if not boundary:
        raise MalformedBodyError("the Content-Type names no multipart boundary")
    if len(boundary) > 70:
        raise MalformedBodyError("the multipart boundary is longer than 70 characters")
    # The header was decoded with surrogates for bytes that are not UTF-8;
    # they go back to the bytes they were.
    return boundary.encode("utf-8", "surrogateescape")


class FormParser:
    """One multipart/form-data body's parts, as events (see the module's docstring)."""

    def __init__(self, boundary: bytes) -> None:
        self._dash_boundary = b"--" + boundary
        self._delimiter = b"\r\n" + self._dash_boundary
        self._buffer = b""
        self._at = 0
        self._eof = False
        #: What the parser is reading: the preamble, a part's headers, its body,
        #: the rest of a boundary's line, or nothing more (after the closing one).
        #: The class's function, not a bound method: one would tie the parser
        #: (and the body it holds) into a cycle only the garbage collector frees.
        self._step: Callable[[FormParser], Event | None] = FormParser._preamble_event
        self._header_lines: list[bytes] = []
        #: Whether the current part's body has begun (its first bytes are special).
        self._body_started = False
        #: A piece was given out just before the part's end was found.
        self._end_pending = False
        #: The ``_charset_`` part being read, and the charset it set.
        self._charset_part: bytearray | None = None
        self._default_charset = "utf-8"

    def feed(self, data: bytes) -> None:
        """Add the next bytes of the body."""
        if self._eof:
            raise RuntimeError("fed after the end of the body")
        if self._step is FormParser._done or not data:
            return  # the epilogue is nobody's concern
        if self._at >= len(self._buffer):
            self._buffer, self._at = data, 0
        else:
            self._buffer, self._at = self._buffer[self._at :] + data, 0

    def feed_eof(self) -> None:
        """The body has ended."""
        self._eof = True

    def close(self) -> None:
        """Drop what is buffered: the parser is done with (it says the form ended from now on)."""
        self._buffer, self._at = b"", 0
        self._step = FormParser._done

    def next_event(self) -> Event:
        """The next event, or :data:`Signal.NEED_DATA`; raises :class:`MalformedBodyError`."""
        while True:
            event = self._step(self)
            if event is None:
                continue  # it moved on; look again
            if self._charset_part is not None and event is not Signal.NEED_DATA:
                self._read_charset(event)
                continue
            return event

    # --- the states ----------------------------------------------------------------------------

    def _done(self) -> Event:
        return Signal.FORM_END

    def _preamble_event(self) -> Event | None:
        line = self._line(_MAX_OTHER_LINE)
        if line is None:
            return Signal.NEED_DATA
        if not line:
            raise MalformedBodyError("the body does not begin with its multipart boundary")
        stripped = line.rstrip()
        if stripped == self._dash_boundary:
            self._step = FormParser._headers_event
        elif stripped == self._dash_boundary + b"--":
            self._step = FormParser._done
            return Signal.FORM_END
        return None

    def _headers_event(self) -> Event | None:
        head = None if self._header_lines else self._common_head()
        if head is not None:
            return self._part_begins(head)
        line = self._line(MAX_HEADER_LINE)
        if line is None:
            return Signal.NEED_DATA
        line = line.rstrip(b"\r\n")
        if line:
            self._header_lines.append(line)
            if len(self._header_lines) > MAX_HEADERS:
                raise MalformedBodyError(f"a part has more than {MAX_HEADERS} header lines")
            return None
        head = self._head(self._header_lines)
        self._header_lines = []
        return self._part_begins(head)

    def _part_begins(self, head: PartHead) -> PartHead | None:
        self._step = FormParser._body_event
        self._body_started = False
        if head.name == "_charset_" and not head.is_multipart:
            self._charset_part = bytearray()
            return None
        return head

    def _body_event(self) -> Event:
        if self._end_pending:
            self._end_pending = False
            self._part_ended()
            return Signal.PART_END
        buffer, at = self._buffer, self._at
        if not self._body_started:
            # As in aiohttp, a part whose body begins with the boundary is an
            # empty part whose CRLF was left out.
            dash_boundary = self._dash_boundary
            if buffer.startswith(dash_boundary, at):
                self._at = at + len(dash_boundary)
                self._step = FormParser._boundary_line_event
                return Signal.PART_END
            if (
                len(buffer) - at < len(dash_boundary)
                and not self._eof
                and dash_boundary.startswith(buffer[at:])
            ):
                return Signal.NEED_DATA  # too little to tell yet
            self._body_started = True
        end = buffer.find(self._delimiter, at)
        if end != -1:
            self._at = end + len(self._delimiter)
            if end == at:
                self._part_ended()
                return Signal.PART_END
            self._end_pending = True  # said once this piece is taken
            return buffer[at:end]
        # What could be the start of the delimiter waits for the bytes after it.
        safe = len(buffer) - _partial_match_at_end(buffer, self._delimiter, at)
        if safe > at:
            self._at = safe
            return buffer if at == 0 and safe == len(buffer) else buffer[at:safe]
        if self._eof:
            raise MalformedBodyError("the body ended inside a part")
        return Signal.NEED_DATA

    def _part_ended(self) -> None:
        if self._buffer.startswith(b"\r\n", self._at):  # as nearly every client sends it
            self._at += 2
            self._step = FormParser._headers_event
        else:
            self._step = FormParser._boundary_line_event

    def _boundary_line_event(self) -> Event | None:
        line = self._line(_MAX_OTHER_LINE)
        if line is None:
            return Signal.NEED_DATA
        rest = line.rstrip()
        if rest == b"":
            self._step = FormParser._headers_event
            return None
        if rest == b"--":
            self._step = FormParser._done
            return Signal.FORM_END
        raise MalformedBodyError("a boundary is followed by something other than a line end")

    # --- helpers -------------------------------------------------------------------------------

    def _line(self, limit: int) -> bytes | None:
        """The next line, its LF included; ``b""`` at the end of the body; None: not yet."""
        buffer, at = self._buffer, self._at
        end = buffer.find(b"\n", at, at + limit)
        if end == -1:
            if len(buffer) - at > limit:
                raise MalformedBodyError(f"a line of the body is longer than {limit} bytes")
            if not self._eof:
                return None
            end = len(buffer) - 1  # the last line, without its LF
        self._at = end + 1
        return buffer[at : end + 1]

    def _common_head(self) -> PartHead | None:
        """A part's headers when they are written exactly as the SDKs, curl and browsers write
        them (one regular expression over the buffer, no copy), else None."""
        found = _COMMON_HEAD.match(self._buffer, self._at)
        if found is None or found.end() - self._at > _MAX_PLAIN_HEADERS:
            return None
        name, filename, content_type = found.groups()
        try:
            head = self._part_head(
                name.decode(),
                filename.decode() if filename is not None else None,
                content_type.decode() if content_type is not None else None,
            )
        except UnicodeDecodeError:
            return None
        self._at = found.end()
        return head

    def _head(self, lines: list[bytes]) -> PartHead:
        """A part's headers read by aiohttp's own header parser (its errors are ours)."""
        try:
            headers, _ = HeadersParser(max_field_size=MAX_HEADER_LINE).parse_headers([*lines, b""])
        except HttpProcessingError as exc:
            raise MalformedBodyError(
                f"a part's headers are malformed: {str(exc.message)[:200]}"
            ) from None
        params = disposition_params(headers.get("Content-Disposition"))
        return self._part_head(
            content_disposition_filename(params, "name"),
            content_disposition_filename(params, "filename"),
            headers.get("Content-Type"),
            headers.get("Content-Transfer-Encoding", "").lower(),
        )

    def _part_head(
        self,
        name: str | None,
        filename: str | None,
        content_type: str | None,
        transfer_encoding: str = "",
    ) -> PartHead:
        charset, is_multipart = self._default_charset, False
        if content_type is not None:
            mimetype = parse_mimetype(content_type)
            charset = mimetype.parameters.get("charset", charset)
            is_multipart = mimetype.type == "multipart"
        return PartHead(name, filename, content_type, charset, is_multipart, transfer_encoding)

    def _read_charset(self, event: Event) -> None:
        """Take in the ``_charset_`` part: its value becomes the default charset."""
        value = self._charset_part
        assert value is not None
        if isinstance(event, bytes):
            value += event
            if len(value) > _MAX_CHARSET:
                raise MalformedBodyError("the _charset_ part is not the name of a charset")
            return
        assert event is Signal.PART_END  # nothing else comes inside a part
        self._charset_part = None
        try:
            # An empty one names none: the default stays (as aiohttp's get_charset has it).
            self._default_charset = bytes(value).strip().decode("ascii") or "utf-8"
        except UnicodeDecodeError:
            raise MalformedBodyError("the _charset_ part is not the name of a charset") from None


def disposition_params(header: str | None) -> dict[str, str]:
    """A Content-Disposition header's parameters, as aiohttp's parser gives them.

    aiohttp's parser costs more than the rest of a small form; the plainly
    written headers every client sends are read by a regular expression.
    """
    if header is not None and (params := plain_disposition_params(header)) is not None:
        return params
    return parse_content_disposition(header)[1]


def plain_disposition_params(header: str) -> dict[str, str] | None:
    """The parameters of a plainly written Content-Disposition, as aiohttp's parser gives them.

    ``None`` for a header that needs the full parser: one with escapes, a
    ``*`` parameter, a repeated parameter or anything but ``form-data``.
    """
    if not _PLAIN_DISPOSITION.fullmatch(header):
        return None
    pairs = _PLAIN_PARAMETER.findall(header)
    params = {key.lower(): value for key, value in pairs}
    return params if len(params) == len(pairs) else None


def _partial_match_at_end(data: bytes, delimiter: bytes, start: int) -> int:
    """The length of the longest end of ``data[start:]`` that is a proper start of ``delimiter``."""
    first = delimiter[:1]
    position = data.find(first, max(start, len(data) - len(delimiter) + 1))
    while position != -1:
        if delimiter.startswith(data[position:]):
            return len(data) - position
        position = data.find(first, position + 1)
    return 0
