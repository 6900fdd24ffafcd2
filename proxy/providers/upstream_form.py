"""Framing of the multipart/form-data body the proxy sends upstream."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from ..errors import ProxyError
from ..form.fields import forwarded
from ..models import FormField, UpstreamCall

CRLF = b"\r\n"

#: Pieces smaller than this are gathered into one write: each write is a
#: send and a wake-up of the upstream, which is what a small request pays for.
COALESCE_BYTES = 64 * 1024

# The WHATWG form-data encoding: these three characters cannot stand in a
# quoted header parameter, everything else is sent as UTF-8.
_QUOTE = str.maketrans({'"': "%22", "\r": "%0D", "\n": "%0A"})


def _quoted(value: str) -> str:
    return '"' + value.translate(_QUOTE) + '"'


class MultipartEncoder:
    """Builds the pieces of one multipart body around a fresh random boundary."""

    def __init__(self, boundary: str | None = None) -> None:
        self.boundary = boundary or f"proxy-{secrets.token_hex(16)}"
        self._delimiter = f"--{self.boundary}\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        """The Content-Type header value naming this body's boundary."""
        return f"multipart/form-data; boundary={self.boundary}"

    def field(self, field: FormField) -> bytes:
        """One complete text part."""
        head = f"Content-Disposition: form-data; name={_quoted(field.name)}\r\n"
        if field.content_type:
            head += f"Content-Type: {field.content_type}\r\n"
        return self._delimiter + head.encode() + CRLF + field.value.encode() + CRLF

    def fields(self, fields: Sequence[FormField]) -> bytes:
        """Several complete text parts, in order."""
        return b"".join(self.field(f) for f in fields)

    def file_head(self, name: str, filename: str, content_type: str) -> bytes:
        """The delimiter and headers of a file part; its bytes follow."""
        head = (
            f"Content-Disposition: form-data; name={_quoted(name)}; "
            f"filename={_quoted(filename)}\r\n"
            f"Content-Type: {content_type}\r\n\r\n"
        )
        return self._delimiter + head.encode()

    def closing(self) -> bytes:
        """The final delimiter that ends the body."""
        return f"--{self.boundary}--\r\n".encode("ascii")


class Pacer(Protocol):
    """Told who the body is waiting for, so only the upstream's silences are timed."""

    def waiting_for_client(self) -> None:
        """The next bytes must come from the client (or the spool)."""

    def waiting_for_upstream(self) -> None:
        """Bytes are being handed to the upstream."""

    def sent(self, size: int) -> None:
        """The whole body, ``size`` bytes of it audio, is with the upstream."""


class _Unpaced:
    def waiting_for_client(self) -> None:
        pass

    def waiting_for_upstream(self) -> None:
        pass

    def sent(self, size: int) -> None:
        pass


class UpstreamBody:
    """The body of one upstream request: ``model``, the other fields, the file.

    Text fields the client sent after a file that was already streaming go
    after the file: reordering them would mean buffering the audio.
    """

    def __init__(
        self,
        call: UpstreamCall,
        encoder: MultipartEncoder | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self._call = call
        self._encoder = encoder or MultipartEncoder()
        self._pacer = pacer or _Unpaced()
        #: Why the body could not be completed, when the cause is on the
        #: client's side (the HTTP client reports only a broken request).
        self.failure: ProxyError | None = None
        #: Audio bytes handed over so far.
        self.audio_bytes = 0
        audio = call.audio
        self._head = self._encoder.fields(
            [FormField("model", call.model), *forwarded(call.fields, call.task)]
        ) + self._encoder.file_head("file", audio.filename, audio.content_type)

    @property
    def content_type(self) -> str:
        """The Content-Type header for this body."""
        return self._encoder.content_type

    @property
    def length(self) -> int | None:
        """The byte count when the audio's size is known, for a Content-Length header.

        A live upload's size is known once a pass has read it whole (a retry
        or a fallback sends it again), and so are the fields that follow it.
        """
        audio = self._call.audio
        if audio.size is None:
            return None
        trailing = self._encoder.fields(forwarded(audio.trailing_fields, self._call.task))
        return (
            len(self._head) + audio.size + len(CRLF) + len(trailing) + len(self._encoder.closing())
        )

    async def stream(self) -> AsyncIterator[bytes]:
        """The body's bytes, reading the audio as it goes.

        Large pieces of audio pass through as they are; small ones are
        gathered, so that a small upload goes upstream in a single write.
        """
        audio = self._call.audio
        pacer = self._pacer
        gathered = [self._head]
        size = len(self._head)
        self.audio_bytes = 0
        try:
            pacer.waiting_for_client()
            async for piece in audio.pieces():
                self.audio_bytes += len(piece)
                if size + len(piece) < COALESCE_BYTES:
                    gathered.append(piece)
                    size += len(piece)
                    continue
                pacer.waiting_for_upstream()
                if gathered:
                    yield b"".join(gathered)
                if len(piece) >= COALESCE_BYTES:
                    yield piece
                    gathered, size = [], 0
                else:
                    gathered, size = [piece], len(piece)
                pacer.waiting_for_client()
        except ProxyError as exc:
            self.failure = exc
            raise
        trailing = forwarded(audio.trailing_fields, self._call.task)
        gathered.append(CRLF + self._encoder.fields(trailing))
        gathered.append(self._encoder.closing())
        pacer.waiting_for_upstream()
        yield b"".join(gathered)
        pacer.sent(self.audio_bytes)
