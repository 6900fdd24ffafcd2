"""The streaming form reader: the client's multipart body in, fields and audio out.

The reader walks the parts in the order the client sent them. When the fields
that pick the route have arrived by the time the ``file`` part starts, it
stops there and hands out a :class:`LiveAudio` that reads the file straight
off the client socket (the rest of the form is read after the file, as the
upstream body is sent). When ``file`` comes first, the file is copied to a
:class:`SpooledAudio` on disk, never to memory, and the rest of the form read.
A small body that has already arrived whole is the exception: it is in
memory anyway, so its file becomes a :class:`BufferedAudio`, whatever the
order of its parts, and when it is plainly written it is split in one pass
(:mod:`.whole_form`) rather than walked part by part.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader

from ..audio.sources import BufferedAudio, ReplayableAudio, SpooledAudio
from ..audio.spool import Spool
from ..errors import (
    ClientGoneError,
    InvalidRequestError,
    MalformedBodyError,
    PayloadTooLargeError,
    ProxyError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)
from ..metrics import Metrics
from ..models import FormField, RequestFacts
from .fields import SINGULAR_FIELDS, validate_field
from .part_reader import StreamingMultipartReader
from .whole_form import WholePart, form_boundary, split_whole_form

log = logging.getLogger(__name__)

#: Largest piece of the file read and forwarded at once: asyncio receives
#: 256 KiB at a time. Measured with scripts/bench_upload.py, 1 MiB pieces
#: saved about a tenth of the CPU per GiB, with no throughput gain beyond the
#: noise, and added 2-4 MiB to every upload's working set; 64 KiB pieces cost
#: about twice the CPU of 1 MiB ones.
FILE_CHUNK_BYTES = 256 * 1024
#: A body at most this large that has arrived whole is taken from aiohttp's
#: buffer, where it already is, so the upstream request has a known length.
BUFFERED_BODY_BYTES = 1024 * 1024
_FIELD_CHUNK_BYTES = 16 * 1024
_DEFAULT_FILENAME = "audio"
_DEFAULT_FILE_TYPE = "application/octet-stream"
_IDENTITY_TRANSFER_ENCODINGS = frozenset({"", "binary", "8bit", "7bit"})


@dataclass(frozen=True)
class FormLimits:
    """The caps enforced while reading a form."""

    max_body_bytes: int
    max_fields: int = 64
    max_field_bytes: int = 64 * 1024
    spool_dir: str | None = None
    #: Past this many bytes a recorded upload can no longer be replayed.
    max_spool_bytes: int = 1024 * 1024 * 1024
    #: Longest wait for the next bytes of the body.
    body_idle_timeout_s: float = 30.0


@dataclass
class TranscriptionForm:
    """The form as far as it has been read.

    With :class:`LiveAudio`, ``fields`` holds the fields sent before the file
    and the audio's ``trailing_fields`` the rest, once the file is read.
    """

    fields: list[FormField] = field(default_factory=list)
    audio: LiveAudio | SpooledAudio | BufferedAudio | ReplayableAudio | None = None

    def all_fields(self) -> Sequence[FormField]:
        """Every text field the client sent, before and after the file."""
        if self.audio is None:
            return self.fields
        return [*self.fields, *self.audio.trailing_fields]


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
        raise _too_large(limits)


REPR_DIGEST_HEADER = "Repr-Digest"


def repr_digest_sha256(headers: Mapping[str, str]) -> bytes | None:
    """The file's sha-256 as the client declared it in ``Repr-Digest`` (RFC 9530), if it did.

    The header describes the audio file the form carries (not the multipart
    body around it, whose boundary is the client's random choice). Other
    algorithms are ignored; a malformed sha-256 member is a 400.
    """
    value = headers.get(REPR_DIGEST_HEADER)
    if value is None:
        return None
    for member in value.split(","):
        name, _, rest = member.partition("=")
        if name.strip().lower() != "sha-256":
            continue
        encoded = rest.split(";", 1)[0].strip()
        try:
            if len(encoded) < 2 or encoded[0] != ":" or encoded[-1] != ":":
                raise ValueError(encoded)
            digest = base64.b64decode(encoded[1:-1], validate=True)
        except (ValueError, binascii.Error):
            digest = b""
        if len(digest) != hashlib.sha256().digest_size:
            raise InvalidRequestError(
                f"{REPR_DIGEST_HEADER} must carry sha-256=:<base64 of 32 bytes>:",
                code="invalid_digest",
            )
        return digest
    return None


def _sendable_filename(filename: str | None) -> str:
    """The file part's name, as text that can be sent on.

    aiohttp keeps bytes that are not UTF-8 as lone surrogates; they become
    U+FFFD. Quotes and line breaks are escaped when the name is sent upstream.
    """
    name = filename or _DEFAULT_FILENAME
    return name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _too_large(limits: FormLimits) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is larger than the limit of {limits.max_body_bytes} bytes"
    )


class FieldChecks:
    """The rules a form's text fields keep, however the form is read: how many there
    are, how large each is, that each is text, that a singular one comes once."""

    def __init__(self, limits: FormLimits) -> None:
        self._limits = limits
        self._count = 0
        self._singular_seen: set[str] = set()

    def count(self, name: str) -> None:
        """One more field, named ``name``: refused past the limit."""
        self._count += 1
        if self._count > self._limits.max_fields:
            raise InvalidRequestError(
                f"too many form fields (at most {self._limits.max_fields})",
                code="too_many_fields",
                param=name,
            )

    def size(self, name: str, size: int) -> None:
        """``size`` bytes of the field have been read: refused past the limit."""
        if size > self._limits.max_field_bytes:
            raise InvalidRequestError(
                f"field {name} is larger than {self._limits.max_field_bytes} bytes",
                code="field_too_large",
                param=name,
            )

    def field(
        self, name: str, data: bytes | bytearray, charset: str, content_type: str | None
    ) -> FormField:
        """A field read whole: its text, checked."""
        try:
            value = data.decode(charset)
        except (UnicodeDecodeError, LookupError):
            raise InvalidRequestError(f"field {name} is not valid text", param=name) from None
        if name in SINGULAR_FIELDS:
            if name in self._singular_seen:
                raise InvalidRequestError(f"field {name} was sent more than once", param=name)
            self._singular_seen.add(name)
        result = FormField(name, value, content_type)
        validate_field(result)
        return result


class FileAccount:
    """What is kept of the file as it passes, however the form is read: its digest
    (checked against the client's), the bytes-in metric, the request's facts."""

    def __init__(
        self,
        metrics: Metrics,
        facts: RequestFacts | None,
        hash_audio: bool,
        expected_sha256: bytes | None,
    ) -> None:
        self._metrics = metrics
        self._facts = facts
        self._expected_sha256 = expected_sha256
        self._hasher = hashlib.sha256() if hash_audio or expected_sha256 is not None else None
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        """The file's sha256 in hex, once it has been read whole and hashed."""
        if self._sha256 is None:
            raise RuntimeError("the file has not been read whole and hashed")
        return self._sha256

    def took(self, chunk: bytes) -> None:
        """A piece of the file has been read."""
        if self._hasher is not None:
            self._hasher.update(chunk)
        self._metrics.audio_bytes_in.inc(len(chunk))
        if self._facts is not None:
            if not self._facts.audio_bytes:
                self._facts.audio_head = chunk[:64]
            self._facts.audio_bytes += len(chunk)

    def read_whole(self) -> None:
        """The file is read whole: its digest is known, and checked against the client's."""
        if self._hasher is None:
            return
        digest = self._hasher.digest()
        if self._expected_sha256 is not None and digest != self._expected_sha256:
            raise InvalidRequestError(
                f"the file's sha-256 does not match the {REPR_DIGEST_HEADER} header",
                code="digest_mismatch",
                param="file",
            )
        self._sha256 = digest.hex()


class FormReader:
    """Reads one transcription form, streaming or spooling its file.

    Use as an async context manager: leaving it removes any spool file.
    """

    def __init__(
        self,
        request: web.Request,
        limits: FormLimits,
        routing_fields: Collection[str] = ("model",),
        *,
        metrics: Metrics,
        facts: RequestFacts | None = None,
        hash_audio: bool = False,
        expected_sha256: bytes | None = None,
        split_whole_bodies: bool = True,
    ) -> None:
        """``split_whole_bodies``: a plainly written body that has arrived whole
        is split in one pass; off, every body is read part by part (which is
        what the fast way is tested against)."""
        self._request = request
        self._limits = limits
        self._metrics = metrics
        self._uploading = False
        self._routing_fields = frozenset(routing_fields)
        self._multipart: MultipartReader | None = None
        self._fields = FieldChecks(limits)
        self._form = TranscriptionForm()
        self._file = FileAccount(metrics, facts, hash_audio, expected_sha256)
        self._split_whole_bodies = split_whole_bodies
        #: Whether the body was split in one pass (known once it is read).
        self.split_whole: bool | None = None

    @property
    def audio_sha256(self) -> str:
        """The file's sha256 in hex, once it has been read whole (with ``hash_audio``)."""
        return self._file.sha256

    async def __aenter__(self) -> Self:
        self._uploading = True
        self._metrics.active_uploads.inc()
        return self

    def _upload_finished(self) -> None:
        if self._uploading:
            self._uploading = False
            self._metrics.active_uploads.dec()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        audio = self._form.audio
        if isinstance(audio, ReplayableAudio):
            await audio.aclose()
        elif isinstance(audio, SpooledAudio):
            audio.close()
        self._upload_finished()

    async def record(self, max_bytes: int | None = None) -> None:
        """Record a streaming upload as it is sent, so that it can be sent again.

        Only for a request that may be retried or fall back, or be cut into
        chunks: any other touches no disk at all. Past ``max_bytes`` (the
        spool limit by default) the recording stops.
        """
        live = self._form.audio
        if isinstance(live, LiveAudio):
            spool = await Spool.create(self._limits.spool_dir, written=self._metrics.spool_bytes)
            cap = self._limits.max_spool_bytes if max_bytes is None else max_bytes
            self._form.audio = ReplayableAudio(live, spool, cap)

    async def read(self) -> TranscriptionForm:
        """Read up to a streamable file part, or the whole form."""
        check_content_type(self._request)
        check_declared_length(self._request, self._limits)
        content = self._request.content
        if self._split_whole_bodies and self._body_received_whole():
            async with self._reading():  # its size check, and the upload counted as done
                body = await content.read()
            boundary = form_boundary(self._request.headers.get(hdrs.CONTENT_TYPE, ""))
            parts = split_whole_form(body, boundary) if boundary is not None else None
            self.split_whole = parts is not None
            if parts is not None:
                return self._read_whole(parts)
            # Declined: the streaming reader reads the same bytes, its own way.
            content = _stream_of(body, self._request)
        async with self._reading():
            self._multipart = StreamingMultipartReader(self._request.headers, content)
        form = self._form
        while (part := await self._next_part()) is not None:
            if part.name != "file":
                form.fields.append(await self._read_field(part))
            elif form.audio is not None:
                raise InvalidRequestError("only one file may be sent", param="file")
            elif self._body_received_whole():
                form.audio = await self._buffer(part)
            elif not self._routing_fields <= {f.name for f in form.fields}:
                form.audio = await self._spool(part)
            else:
                form.audio = LiveAudio(self, part)
                return form
        return form

    def _body_received_whole(self) -> bool:
        content = self._request.content
        return content.is_eof() and content.total_bytes <= BUFFERED_BODY_BYTES

    def _read_whole(self, parts: Sequence[WholePart]) -> TranscriptionForm:
        """The form from the parts of a body split in one pass.

        Every check is the streaming path's, made in the same order, so the
        same body gets the same form or the same error either way.
        """
        form = self._form
        for part in parts:
            if part.name != "file":
                form.fields.append(self._whole_field(part))
            elif form.audio is not None:
                raise InvalidRequestError("only one file may be sent", param="file")
            else:
                if part.data:
                    self._file.took(part.data)
                self._file.read_whole()
                form.audio = BufferedAudio(
                    part.data,
                    filename=_sendable_filename(part.filename),
                    content_type=part.content_type or _DEFAULT_FILE_TYPE,
                )
        return form

    def _whole_field(self, part: WholePart) -> FormField:
        self._fields.count(part.name)
        self._fields.size(part.name, len(part.data))
        return self._fields.field(part.name, part.data, part.charset("utf-8"), part.content_type)

    async def _buffer(self, part: BodyPartReader) -> BufferedAudio:
        pieces = [chunk async for chunk in self.file_chunks(part)]
        return BufferedAudio(
            b"".join(pieces),
            filename=_sendable_filename(part.filename),
            content_type=part.headers.get(hdrs.CONTENT_TYPE, _DEFAULT_FILE_TYPE),
        )

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """Time one read of the client's body and translate what can go wrong in it."""
        try:
            async with asyncio.timeout(self._limits.body_idle_timeout_s):
                yield
        except ProxyError:
            raise
        except TimeoutError:
            raise RequestTimeoutError(
                f"the client sent nothing for {self._limits.body_idle_timeout_s:g} s"
            ) from None
        except ConnectionError as exc:
            raise ClientGoneError("the client closed the connection") from exc
        except (ValueError, AssertionError, HttpProcessingError) as exc:
            transport = self._request.transport
            if transport is None or transport.is_closing():
                raise ClientGoneError("the client closed the connection") from exc
            # aiohttp's message may quote body bytes: enough to locate the
            # fault, not a dump of the upload.
            raise MalformedBodyError(f"malformed multipart body: {str(exc)[:200]}") from exc
        if self._request.content.total_bytes > self._limits.max_body_bytes:
            raise _too_large(self._limits)
        if self._request.content.is_eof():
            self._upload_finished()

    async def _next_part(self) -> BodyPartReader | None:
        assert self._multipart is not None
        async with self._reading():
            part = await self._multipart.next()
        if isinstance(part, MultipartReader):
            raise MalformedBodyError("nested multipart parts are not accepted")
        if part is not None:
            encoding = part.headers.get(hdrs.CONTENT_TRANSFER_ENCODING, "").lower()
            if encoding not in _IDENTITY_TRANSFER_ENCODINGS:
                raise MalformedBodyError(
                    f"Content-Transfer-Encoding {encoding!r} is not supported", param=part.name
                )
        return part

    async def _read_field(self, part: BodyPartReader) -> FormField:
        name = part.name
        if not name:
            raise MalformedBodyError("a form part has no name")
        self._fields.count(name)
        data = bytearray()
        while True:
            async with self._reading():
                chunk = await part.read_chunk(_FIELD_CHUNK_BYTES)
            if not chunk:
                break
            data += chunk
            self._fields.size(name, len(data))
        return self._fields.field(
            name, data, part.get_charset("utf-8"), part.headers.get(hdrs.CONTENT_TYPE)
        )

    async def file_chunks(self, part: BodyPartReader) -> AsyncIterator[bytes]:
        """The file part's bytes, straight off the client socket."""
        while True:
            async with self._reading():
                chunk = await part.read_chunk(FILE_CHUNK_BYTES)
            if not chunk:
                self._file.read_whole()
                return
            self._file.took(chunk)
            yield chunk

    async def read_rest(self) -> list[FormField]:
        """The text fields after a streamed file, up to the end of the form."""
        rest: list[FormField] = []
        while (part := await self._next_part()) is not None:
            if part.name == "file":
                raise InvalidRequestError("only one file may be sent", param="file")
            rest.append(await self._read_field(part))
        return rest

    async def _spool(self, part: BodyPartReader) -> SpooledAudio:
        spool = await Spool.create(self._limits.spool_dir, written=self._metrics.spool_bytes)
        audio = SpooledAudio(
            spool,
            filename=_sendable_filename(part.filename),
            content_type=part.headers.get(hdrs.CONTENT_TYPE, _DEFAULT_FILE_TYPE),
        )
        # Registered before the first write so that __aexit__ removes it
        # whatever happens while it fills.
        self._form.audio = audio
        async for chunk in self.file_chunks(part):
            await audio.write(chunk)
        return audio


def _stream_of(body: bytes, request: web.Request) -> StreamReader:
    """``body`` as a stream that has ended, for the streaming reader to read again."""
    stream = StreamReader(request.protocol, len(body) + 1, loop=asyncio.get_running_loop())
    stream.feed_data(body)
    stream.feed_eof()
    return stream


class LiveAudio:
    """The file part read straight off the client socket: one pass, no copy kept."""

    def __init__(self, reader: FormReader, part: BodyPartReader) -> None:
        self._reader = reader
        self._part = part
        self._trailing: list[FormField] = []
        self._started = False
        self.filename = _sendable_filename(part.filename)
        self.content_type = part.headers.get(hdrs.CONTENT_TYPE, _DEFAULT_FILE_TYPE)
        self.size: int | None = None

    @property
    def trailing_fields(self) -> Sequence[FormField]:
        """The fields sent after the file; complete once :meth:`chunks` ends."""
        return self._trailing

    @property
    def replayable(self) -> bool:
        """Never: nothing of it is kept."""
        return False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes as they arrive, then the rest of the form is read."""
        if self._started:
            raise RuntimeError("a live upload can be read only once")
        self._started = True
        async for chunk in self._reader.file_chunks(self._part):
            yield chunk
        self._trailing = await self._reader.read_rest()
