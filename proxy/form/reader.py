"""The form reader: the client's multipart body in, fields and audio out.

The reader walks the parts in the order the client sent them, with one
parser (:mod:`.parser`) however the body arrives. When the fields that pick
the route have arrived by the time the ``file`` part starts, it stops there
and hands out a :class:`~proxy.audio.sources.LiveAudio` that reads the file
straight off the client socket (the rest of the form is read after the file,
as the upstream body is sent). When ``file`` comes first, the file is copied
to a :class:`~proxy.audio.sources.SpooledAudio` on disk, never to memory,
and the rest of the form read. A small body that has already arrived whole
is in memory anyway: it is parsed in one pass and its file is a
:class:`~proxy.audio.sources.BufferedAudio`, whatever the order of its parts.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from aiohttp import hdrs, web

from ..audio.sources import BufferedAudio, LiveAudio, SpooledAudio
from ..audio.spool import Spool
from ..errors import ClientGoneError, InvalidRequestError, MalformedBodyError, ProxyError
from ..metrics import Metrics
from ..models import FormField, RequestFacts, Task
from .body import ClientBody
from .fields import FieldChecks
from .file import DEFAULT_FILE_TYPE, FileAccount, sendable_filename
from .limits import FormLimits, check_content_type, check_declared_length
from .parser import FormParser, PartHead, Signal, form_boundary

_IDENTITY_TRANSFER_ENCODINGS = frozenset({"", "binary", "8bit", "7bit"})


@dataclass
class TranscriptionForm:
    """The form as far as it has been read.

    With :class:`LiveAudio`, ``fields`` holds the fields sent before the file
    and the audio's ``trailing_fields`` the rest, once the file is read.
    """

    fields: list[FormField] = field(default_factory=list)
    audio: LiveAudio | SpooledAudio | BufferedAudio | None = None
    #: The file's sha256 in hex, once it has been read whole (when the reader hashes it).
    audio_sha256: str | None = None

    def all_fields(self) -> list[FormField]:
        """Every text field the client sent, before and after the file."""
        if self.audio is None:
            return self.fields
        return [*self.fields, *self.audio.trailing_fields]


class FormReader:
    """Reads one transcription form, streaming, spooling or buffering its file.

    Use as an async context manager: leaving it releases the file (a spool
    file, a live upload's reading).
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
        task: Task = "transcription",
    ) -> None:
        self._request = request
        self._limits = limits
        self._metrics = metrics
        self._routing_fields = frozenset(routing_fields)
        self._upload = _UploadGauge(metrics)
        self._body = ClientBody(request, limits, on_end=self._upload.ends)
        self._parser: FormParser  # made by read(), once the body's headers are checked
        #: Whether the parser has been fed the end of the body.
        self._fed_all = False
        self._fields = FieldChecks(limits, task)
        self._file = FileAccount(metrics, facts, hash_audio, expected_sha256)
        self._file_seen = False
        self._form = TranscriptionForm()
        self._trailing: list[FormField] = []

    async def __aenter__(self) -> Self:
        self._upload.begins()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._form.audio is not None:
            await self._form.audio.aclose()
        if (parser := getattr(self, "_parser", None)) is not None:
            parser.close()  # the bytes it holds go now, not when a cycle is collected
        self._upload.ends()

    async def read(self) -> TranscriptionForm:
        """Read up to a streamable file part, or the whole form."""
        check_content_type(self._request)
        check_declared_length(self._request, self._limits)
        self._parser = FormParser(form_boundary(self._request.headers[hdrs.CONTENT_TYPE]))
        try:
            return await self._read_to_the_file()
        except MalformedBodyError as exc:
            raise self._said_of(exc) from None

    async def _read_to_the_file(self) -> TranscriptionForm:
        self._take_whole_body()
        form = self._form
        while (head := await self._next_part()) is not None:
            if head.name != "file":
                form.fields.append(await self._field(head))
            elif self._take_whole_body():
                form.audio = await self._buffer(head)
            elif not self._routing_fields <= {f.name for f in form.fields}:
                form.audio = await self._spool(head)
            else:
                form.audio = LiveAudio(
                    self._file_data(then_the_rest=True),
                    filename=sendable_filename(head.filename),
                    content_type=_file_type(head),
                    trailing_fields=self._trailing,
                )
                return form
        return form

    # --- events from the parser, fed from the client --------------------------------------------

    def _take_whole_body(self) -> bool:
        """Feed the parser the rest of a small body that has arrived whole, in one piece."""
        if not self._fed_all and self._body.arrived_whole():
            self._parser.feed(self._body.read_rest())
            self._parser.feed_eof()
            self._fed_all = True
        return self._fed_all

    def _said_of(self, error: MalformedBodyError) -> ProxyError:
        """A body the client cut short by leaving is said to be that, not malformed."""
        if self._body.client_gone():
            return ClientGoneError("the client closed the connection")
        return error

    async def _feed_more(self) -> None:
        """Feed the parser what the client sends next."""
        data = await self._body.read()
        if data:
            self._parser.feed(data)
        else:
            self._parser.feed_eof()
            self._fed_all = True

    async def _to_the_end(self) -> None:
        """Read what follows the closing boundary, to the end of the body, and drop it.

        The form is complete, the request not yet: a body that stops short of
        its Content-Length is a client that went quiet, answered as such.
        """
        while not self._fed_all:
            if not await self._body.read():
                self._fed_all = True

    async def _next_part(self) -> PartHead | None:
        """The next part's head, checked; None after the last part."""
        # Here and below, the parser is asked directly and awaited only when
        # it needs more: the events of a body at hand cost no coroutine each.
        while (event := self._parser.next_event()) is Signal.NEED_DATA:
            await self._feed_more()
        if event is Signal.FORM_END:
            await self._to_the_end()
            return None
        assert isinstance(event, PartHead)
        if event.is_multipart:
            raise MalformedBodyError("nested multipart parts are not accepted")
        encoding = event.transfer_encoding
        if encoding not in _IDENTITY_TRANSFER_ENCODINGS:
            raise MalformedBodyError(
                f"Content-Transfer-Encoding {encoding!r} is not supported", param=event.name
            )
        if event.name == "file":
            if self._file_seen:
                raise InvalidRequestError("only one file may be sent", param="file")
            self._file_seen = True
        return event

    # --- text fields ---------------------------------------------------------------------------

    async def _field(self, head: PartHead) -> FormField:
        name = head.name
        if not name:
            raise MalformedBodyError("a form part has no name")
        self._fields.count(name)
        data = bytearray()
        while (event := self._parser.next_event()) is not Signal.PART_END:
            if event is Signal.NEED_DATA:
                await self._feed_more()
                continue
            assert isinstance(event, bytes)
            data += event
            self._fields.size(name, len(data))
        return self._fields.field(name, data, head.charset, head.content_type)

    async def _rest_of_form(self) -> list[FormField]:
        """The text fields after a streamed file, up to the end of the form."""
        rest = []
        while (head := await self._next_part()) is not None:
            rest.append(await self._field(head))
        return rest

    # --- the file, to wherever it goes ----------------------------------------------------------

    async def _file_data(self, *, then_the_rest: bool = False) -> AsyncGenerator[bytes, None]:
        """The file part's bytes as they come, counted and hashed; with ``then_the_rest``
        (a file streamed straight off the socket), the fields after it are read next."""
        account = self._file
        try:
            while (event := self._parser.next_event()) is not Signal.PART_END:
                if event is Signal.NEED_DATA:
                    await self._feed_more()
                    continue
                assert isinstance(event, bytes)
                account.took(event)
                yield event
            self._form.audio_sha256 = account.read_whole()
            if then_the_rest:
                self._trailing.extend(await self._rest_of_form())
        except MalformedBodyError as exc:
            raise self._said_of(exc) from None

    async def _buffer(self, head: PartHead) -> BufferedAudio:
        # The body is all at hand (it arrived whole): its file is one piece.
        (data,) = [piece async for piece in self._file_data()] or [b""]
        return BufferedAudio(
            data,
            filename=sendable_filename(head.filename),
            content_type=_file_type(head),
        )

    async def _spool(self, head: PartHead) -> SpooledAudio:
        spool = await Spool.create(self._limits.spool_dir, written=self._metrics.spool_bytes)
        audio = SpooledAudio(
            spool,
            filename=sendable_filename(head.filename),
            content_type=_file_type(head),
        )
        # Registered before the first write, so that leaving the reader
        # removes it whatever happens while it fills.
        self._form.audio = audio
        async for piece in self._file_data():
            await audio.write(piece)
        return audio


def _file_type(head: PartHead) -> str:
    """The file's Content-Type as the client gave it (even empty), else the default."""
    return head.content_type if head.content_type is not None else DEFAULT_FILE_TYPE


class _UploadGauge:
    """One upload on the active-uploads gauge: counted when its reading begins, until the
    end of its body or of its reader, whichever comes first."""

    def __init__(self, metrics: Metrics) -> None:
        self._gauge = metrics.active_uploads
        self._counted = False

    def begins(self) -> None:
        self._counted = True
        self._gauge.inc()

    def ends(self) -> None:
        if self._counted:
            self._counted = False
            self._gauge.dec()
