"""aiohttp's multipart reader with a boundary scan that does not copy the file's bytes.

aiohttp finds the end of a part by joining each piece it reads onto the
previous one and searching the join: one extra copy of every byte uploaded.
:class:`StreamingPartReader` searches each piece where it lies and holds back
only a suffix that could begin the delimiter. Audio almost never ends a piece
that way, so nearly every piece is passed on as the very object read from the
socket buffer. Everything else (part headers, text fields, the boundary lines
between parts) is aiohttp's own code.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, hdrs
from aiohttp.helpers import reify
from aiohttp.multipart import content_disposition_filename, parse_content_disposition
from aiohttp.streams import StreamReader

# ``form-data`` and plain quoted parameters: what browsers, curl and the SDKs
# send. Values with a backslash, a leading slash or a ``*`` parameter name go
# to aiohttp's full parser, which handles (and sanitises) them.
_PLAIN_DISPOSITION = re.compile(r'form-data(?:\s*;\s*[A-Za-z0-9_-]+="[^"\\/;][^"\\;]*")*\s*')
_PLAIN_PARAMETER = re.compile(r'([A-Za-z0-9_-]+)="([^"]*)"')


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


class StreamingPartReader(BodyPartReader):
    """A body part whose :meth:`read_chunk` passes pieces through uncopied."""

    def __init__(self, boundary: bytes, *args: Any, **kwargs: Any) -> None:
        super().__init__(boundary, *args, **kwargs)
        self._delimiter = b"\r\n" + boundary
        self._held = b""
        self._started = False

    @reify
    def disposition_params(self) -> dict[str, str]:
        """The Content-Disposition header's parameters, as aiohttp's parser gives them."""
        # aiohttp parses the header anew for each of name and filename, and
        # each parse costs more than the rest of a small request's form.
        header = self.headers.get(hdrs.CONTENT_DISPOSITION)
        if header is not None and (params := plain_disposition_params(header)) is not None:
            return params
        return parse_content_disposition(header)[1]

    @reify
    def name(self) -> str | None:
        """The part's ``name`` from its Content-Disposition header."""
        return content_disposition_filename(self.disposition_params, "name")

    @reify
    def filename(self) -> str | None:
        """The part's ``filename`` from its Content-Disposition header."""
        return content_disposition_filename(self.disposition_params, "filename")

    async def read_chunk(self, size: int = BodyPartReader.chunk_size) -> bytes:
        """The next piece of the part's body, at most ``size`` bytes; ``b""`` at its end."""
        if self._at_eof:
            return b""
        if self._length is not None or self.headers.get(hdrs.CONTENT_TRANSFER_ENCODING):
            return await super().read_chunk(size)
        # Room for a held-back partial delimiter plus at least one new byte.
        size = max(size, len(self._delimiter))
        if self._started:
            data = await self._next_data(size)
        else:
            self._started = True
            data = await self._first_data(size)
            if self._at_eof:
                return b""
        while not (piece := self._scan(data)) and not self._at_eof:
            data = await self._next_data(size)
        return piece

    async def _next_data(self, size: int) -> bytes:
        data = await self._content.read(size - len(self._held))
        if not data:
            raise ValueError("the body ended inside a part")
        if self._held:
            data, self._held = self._held + data, b""
        return data

    async def _first_data(self, size: int) -> bytes:
        # The blank line ending the part's headers has been read, so an empty
        # part is followed directly by the boundary, without a CRLF before it.
        boundary = self._boundary
        data = b""
        while len(data) < len(boundary) and boundary.startswith(data):
            more = await self._content.read(size - len(data))
            if not more:
                raise ValueError("the body ended inside a part")
            data += more
        if data.startswith(boundary):
            self._push_back(data)
            self._at_eof = True
            return b""
        return data

    def _scan(self, data: bytes) -> bytes:
        end = data.find(self._delimiter)
        if end != -1:
            # The CRLF belongs to the delimiter; the boundary line and what
            # follows go back for the multipart reader to parse.
            self._push_back(data[end + 2 :])
            self._at_eof = True
            return data[:end]
        keep = _partial_match_at_end(data, self._delimiter)
        if keep:
            self._held = data[-keep:]
            return data[:-keep]
        return data

    def _push_back(self, data: bytes) -> None:
        content: StreamReader = self._content
        with warnings.catch_warnings():
            # aiohttp's own part reader pushes back the same way.
            warnings.simplefilter("ignore", DeprecationWarning)
            content.unread_data(data)


def _partial_match_at_end(data: bytes, delimiter: bytes) -> int:
    """The length of the longest end of ``data`` that is a proper start of ``delimiter``."""
    first = delimiter[:1]
    position = data.find(first, max(0, len(data) - len(delimiter) + 1))
    while position != -1:
        if delimiter.startswith(data[position:]):
            return len(data) - position
        position = data.find(first, position + 1)
    return 0


class StreamingMultipartReader(MultipartReader):
    """A multipart reader whose parts are :class:`StreamingPartReader`s."""

    part_reader_cls = StreamingPartReader

    async def next(self) -> MultipartReader | BodyPartReader | None:
        """The next part, or ``None`` after the last.

        aiohttp's own steps, but for its check for a ``_charset_`` part
        (RFC 7578, 4.6): aiohttp parses each part's Content-Disposition
        again for it, with the parser that costs more than the rest of a
        small form; here the part's own parse, done once, is asked.
        """
        if self._at_eof:
            return None
        await self._maybe_release_last_part()
        if self._at_bof:
            await self._read_until_first_boundary()
            self._at_bof = False
        else:
            await self._read_boundary()
        if self._at_eof:
            return None
        part = await self.fetch_next_part()
        # aiohttp releases the last part before this check, so, as there,
        # any part named _charset_ sets the charset, not only the first.
        if (
            self._last_part is None
            and self._mimetype.subtype == "form-data"
            and isinstance(part, StreamingPartReader)
            and part.disposition_params.get("name") == "_charset_"
        ):
            # The longest encoding name in the WHATWG list is 19 characters.
            charset = await part.read_chunk(32)
            if len(charset) > 31:
                raise RuntimeError("Invalid default charset")
            self._default_charset = charset.strip().decode()
            part = await self.fetch_next_part()
        self._last_part = part
        return part
