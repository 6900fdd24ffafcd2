"""Long audio: an upload past a provider's limit, cut at silence, transcribed in parallel, stitched.

OpenAI and Azure refuse uploads over 25 MB. An upload over the smallest
limit among a request's routes is decoded as it arrives (:mod:`.chunker`,
in a worker thread), cut into chunks of at most ``proxy.chunking.max_chunk_s``
seconds, and each chunk is sent through the request's routes as an ordinary
request of its own (its own retries and fallbacks), ``max_parallel`` at once.
Answers are given out in order as soon as a chunk and every chunk before it
are done, then stitched into one (:mod:`.stitch`).

Memory stays flat: the upload passes through a few pieces at a time, and
chunks live in unnamed spool files, at most ``max_parallel + 1`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from aiohttp import web

from ..answers.events import DELTA, deltas_of, final_answer
from ..audio.sources import BufferedAudio, PassThroughAudio, SpooledAudio
from ..audio.spool import Spool, open_unnamed
from ..config import ChunkingSettings
from ..dispatch import Dispatch
from ..errors import (
    InvalidAudioError,
    InvalidRequestError,
    PayloadTooLargeError,
    ProxyError,
    UploadOverLimitError,
)
from ..form.fields import first_value
from ..metrics import Metrics
from ..models import AudioSource, FormField, TranscriptDelta, TranscriptDone, TranscriptEvent
from ..router import Route
from .chunker import (
    CHUNK_FORMATS,
    PCM_BYTES_PER_S,
    Chunker,
    ChunkerStopped,
    CutChunk,
    Pipe,
    UndecodableAudioError,
    long_audio_installed,
)
from .stitch import ChunkAnswer, chunk_text, stitch

log = logging.getLogger(__name__)

#: A chunk stays this far under the limit, as if it were PCM (no format is larger).
_LIMIT_MARGIN = 0.9
#: The end of the previous chunk's text sent as the next one's prompt.
_PROMPT_TAIL_CHARS = 400
#: Longest wait for the decoding thread to notice a stop.
_THREAD_STOP_S = 10.0
#: MP4 and its kin keep their index where a stream cannot reach without seeking.
_SEEK_ONLY_BRANDS = (b"ftyp",)

_T = TypeVar("_T")


def upload_limit(routes: Sequence[Route]) -> int | None:
    """The smallest upload limit among ``routes`` (any of them may end up serving it)."""
    limits = [r.provider.upload_limit for r in routes if r.provider.upload_limit is not None]
    return min(limits) if limits else None


def over_limit(request: web.BaseRequest, audio: AudioSource, limit: int) -> bool | None:
    """Whether the upload is over ``limit``: None while that cannot be known yet."""
    if isinstance(audio, SpooledAudio | BufferedAudio) and audio.size is not None:
        return audio.size > limit
    declared = request.content_length
    if declared is not None:
        return declared > limit  # the body: the file and a few hundred bytes of fields
    return None


def refuse_without_extra(route: Route, limit: int) -> PayloadTooLargeError:
    """The 413 of an install that cannot cut audio."""
    return PayloadTooLargeError(
        f"the upload is larger than provider {route.provider.name}'s limit of "
        f"{limit / 1024 / 1024:g} MiB; cutting long audio into chunks needs the long-audio "
        "extra: pip install 'transcription-proxy[long-audio]'",
        code="upload_over_provider_limit",
        param="file",
    )


class LimitedAudio(PassThroughAudio):
    """An upload of unknown length that stops with :class:`UploadOverLimitError` past ``limit``.

    It stands in for the upload on the plain path, so an upload that turns
    out too long is abandoned upstream before it is complete.
    """

    def __init__(self, inner: AudioSource, limit: int) -> None:
        super().__init__(inner)
        self._limit = limit

    async def chunks(self) -> AsyncIterator[bytes]:
        """The upload, up to the limit."""
        sent = 0
        async for chunk in self._inner.chunks():
            sent += len(chunk)
            if sent > self._limit:
                raise UploadOverLimitError(f"the upload is larger than {self._limit} bytes")
            yield chunk


@dataclass(frozen=True)
class _Decoded:
    """The decoder reached the end of the recording."""

    seconds: float


class LongAudio:
    """One long upload's way through the routes, chunk by chunk.

    It answers to the handler like :class:`~proxy.router.Dispatch`: ``events()``
    yields deltas then one stitched :class:`TranscriptDone`; ``route`` and
    ``attempt_facts`` say who served it.
    """

    def __init__(
        self,
        routes: Sequence[Route],
        fields: Sequence[FormField],
        audio: AudioSource,
        *,
        settings: ChunkingSettings,
        limit: int,
        spool_dir: str | None,
        decoders: asyncio.Semaphore,
        metrics: Metrics,
        request_id: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self._routes = routes
        self._fields = fields
        self._audio = audio
        self._settings = settings
        self._decoders = decoders
        self._spool_dir = spool_dir
        self._metrics = metrics
        self._request_id = request_id
        self._api_key = api_key
        self._max_chunk_s = min(settings.max_chunk_s, limit * _LIMIT_MARGIN / PCM_BYTES_PER_S)
        self._parallel = 1 if settings.carry_prompt else settings.max_parallel
        self._format = CHUNK_FORMATS[settings.format]
        #: Chunk files on disk at once: those being sent, and one being made.
        self._room = threading.Semaphore(self._parallel + 1)
        self._stopped = threading.Event()
        self._ready: asyncio.Queue[CutChunk | _Decoded | BaseException] = asyncio.Queue()
        self._pipe: Pipe | None = None
        self._thread_done = asyncio.Event()
        #: The route that served the first chunk.
        self.route = routes[0]
        #: How many chunks the recording was cut into (known at the end).
        self.chunk_count = 0
        self._attempts: list[dict[str, Any]] = []

    @property
    def fell_back(self) -> bool:
        """Whether any chunk was answered by other than its primary's first try."""
        return bool(self._attempts)

    @property
    def attempt_facts(self) -> list[dict[str, Any]]:
        """Every attempt of every chunk that needed more than one, each naming its chunk."""
        return self._attempts

    async def events(self) -> AsyncGenerator[TranscriptEvent, None]:
        """Each chunk's transcript as deltas, in order, then the stitched answer."""
        launched: asyncio.Queue[tuple[CutChunk, asyncio.Task[TranscriptDone]] | None] = (
            asyncio.Queue()
        )
        tasks: list[asyncio.Task[Any]] = []
        decoding = asyncio.ensure_future(self._decode())
        launcher = asyncio.ensure_future(self._launch(launched, tasks))
        answers: list[ChunkAnswer] = []
        response_format = first_value(self._fields, "response_format") or "json"
        try:
            while True:
                item = await _first_of(launched.get(), launcher)
                if item is None:
                    break
                chunk, task = item
                done = await task
                answers.append(ChunkAnswer(chunk.start_s, chunk.end_s, done))
                for delta in _deltas(done, first=len(answers) == 1):
                    yield delta
            self.chunk_count = len(answers)
            if not answers:
                raise InvalidAudioError("the file holds no audio")
            yield stitch(answers, response_format=response_format, duration_s=answers[-1].end_s)
        finally:
            await self._stop(decoding, launcher, tasks)

    # --- decoding (the client's bytes into the chunker's thread) ------------------------------

    async def _decode(self) -> None:
        """Run the chunker over the upload; its chunks and its end go to ``_ready``."""
        source: IO[bytes] | Pipe | None = None
        spool: Spool | None = None
        feeder: asyncio.Task[None] | None = None
        decoded: asyncio.Future[float] | None = None
        try:
            audio = self._audio
            if isinstance(audio, SpooledAudio | BufferedAudio):
                source = audio.open_reader()
            else:
                pieces = aiter(audio.chunks())
                first = await anext(pieces, b"")
                if first[4:8] in _SEEK_ONLY_BRANDS:
                    # An MP4 is decodable only with its index, often at its end:
                    # the whole file goes to the spool and is decoded from there.
                    spool = await Spool.create(self._spool_dir, written=self._metrics.spool_bytes)
                    await spool.append(first)
                    async for piece in pieces:
                        await spool.append(piece)
                    await self._no_trailing_fields()
                    source = spool.open_reader()
                else:
                    source = self._pipe = Pipe()
                    feeder = asyncio.ensure_future(self._feed(self._pipe, first, pieces))
            chunker = Chunker(
                max_chunk_s=self._max_chunk_s,
                cut_search_s=self._settings.cut_search_s,
                chunk_format=self._format,
                open_file=lambda: open_unnamed(self._spool_dir),
                emit=self._emit_threadsafe(),
                wait_for_room=self._wait_for_room,
            )
            await self._decoders.acquire()  # released once the thread is done
            decoded = self._in_thread(chunker.run, source)
            if feeder is not None:
                await asyncio.wait((feeder, decoded), return_when=asyncio.FIRST_COMPLETED)
                if decoded.done() and not feeder.done():
                    decoded.result()  # a decoding failure ends the request here
                    # The recording ended before the body did (its header said
                    # so): the rest is read, for the form's end, not decoded.
                    self._pipe.discard()  # type: ignore[union-attr]
                await feeder  # the client's failures (gone, too slow) end it too
            self._ready.put_nowait(_Decoded(await decoded))
        except UndecodableAudioError as exc:
            log.info("long audio could not be decoded: %s", exc)
            self._ready.put_nowait(InvalidAudioError())
        except ChunkerStopped:
            pass
        except Exception as exc:
            self._ready.put_nowait(exc)
        finally:
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(BaseException):
                    await feeder
            if self._pipe is not None:
                self._pipe.abort()  # a thread still reading stops
            if decoded is not None:
                # The thread may still be writing a chunk or reading the source.
                await self._after_thread()
                if decoded.done() and not decoded.cancelled():
                    decoded.exception()  # a stopped thread's end is nobody's news
                self._decoders.release()
            if source is not None and not isinstance(source, Pipe):
                source.close()
            if spool is not None:
                spool.close()

    async def _feed(self, pipe: Pipe, first: bytes, rest: AsyncIterator[bytes]) -> None:
        """Pass the client's bytes to the decoding thread as they arrive."""
        if first:
            await pipe.put(first)
        async for piece in rest:
            await pipe.put(piece)
        await self._no_trailing_fields()
        pipe.end()

    async def _no_trailing_fields(self) -> None:
        trailing = self._audio.trailing_fields
        if trailing:
            names = ", ".join(sorted({f.name for f in trailing}))
            raise InvalidRequestError(
                f"fields after the file ({names}) cannot apply to a long upload, whose chunks "
                "are sent as it arrives: send every field before the file",
                code="fields_after_file",
                param=trailing[0].name,
            )

    def _in_thread(self, function: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """``function(*args)`` in a thread of its own (a decode can run for minutes)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def settle(result: Any, failure: BaseException | None) -> None:
            self._thread_done.set()
            if future.done():
                return
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(result)

        def run() -> None:
            try:
                result, failure = function(*args), None
            except BaseException as exc:
                result, failure = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(settle, result, failure)

        threading.Thread(target=run, name="long-audio", daemon=True).start()
        return future

    async def _after_thread(self) -> None:
        """Wait (a bounded time) for the decoding thread to stop using its files."""
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(_THREAD_STOP_S):
                await asyncio.shield(self._thread_done.wait())

    def _emit_threadsafe(self) -> Callable[[CutChunk], None]:
        loop = asyncio.get_running_loop()

        def receive(chunk: CutChunk) -> None:
            if self._stopped.is_set():
                chunk.file.close()
                self._room.release()
            else:
                self._ready.put_nowait(chunk)

        def emit(chunk: CutChunk) -> None:
            loop.call_soon_threadsafe(receive, chunk)

        return emit

    def _wait_for_room(self) -> None:
        """Block the decoding thread until another chunk file may be made."""
        while not self._room.acquire(timeout=0.1):
            if self._stopped.is_set():
                raise ChunkerStopped()
        if self._stopped.is_set():
            self._room.release()
            raise ChunkerStopped()

    # --- sending (chunks through the routes) --------------------------------------------------

    async def _launch(
        self,
        launched: asyncio.Queue[tuple[CutChunk, asyncio.Task[TranscriptDone]] | None],
        tasks: list[asyncio.Task[Any]],
    ) -> None:
        """Start each chunk's request as it is cut, ``max_parallel`` at a time, in order."""
        parallel = asyncio.Semaphore(self._parallel)
        previous: asyncio.Task[TranscriptDone] | None = None
        while True:
            item = await self._ready.get()
            if isinstance(item, _Decoded):
                launched.put_nowait(None)
                return
            if isinstance(item, BaseException):
                raise item
            try:
                await parallel.acquire()
                prompt = None
                if self._settings.carry_prompt and previous is not None:
                    prompt = _prompt_tail(chunk_text(await previous))
            except BaseException:
                item.file.close()
                self._room.release()
                raise
            task = asyncio.ensure_future(self._transcribe(item, prompt))
            task.add_done_callback(lambda _: parallel.release())
            tasks.append(task)
            launched.put_nowait((item, task))
            previous = task

    async def _transcribe(self, chunk: CutChunk, prompt: str | None) -> TranscriptDone:
        """One chunk through the routes, with their retries and fallbacks."""
        spool = Spool.adopt(chunk.file, written=self._metrics.spool_bytes)
        try:
            audio = SpooledAudio(
                spool,
                filename=f"chunk-{chunk.index:04d}.{self._format.extension}",
                content_type=self._format.content_type,
            )
            dispatch = Dispatch(
                self._routes,
                self._chunk_fields(prompt),
                audio,
                metrics=self._metrics,
                request_id=f"{self._request_id}.{chunk.index}" if self._request_id else None,
                api_key=self._api_key,
            )
            try:
                async with aclosing(dispatch.events()) as events:
                    done = await final_answer(events)
            except ProxyError as exc:
                exc.message = (
                    f"the audio from {chunk.start_s:.1f} s to {chunk.end_s:.1f} s "
                    f"(chunk {chunk.index}) could not be transcribed: {exc.message}"
                )
                raise
            if chunk.index == 0:
                self.route = dispatch.route
            if dispatch.fell_back:
                where = {"chunk": chunk.index, "start": chunk.start_s, "end": chunk.end_s}
                self._attempts.extend({**a.as_dict(), **where} for a in dispatch.attempts)
            return done
        finally:
            spool.close()
            self._room.release()

    def _chunk_fields(self, prompt: str | None) -> list[FormField]:
        """The client's fields for one chunk: answered whole, perhaps with a carried prompt."""
        fields = [f for f in self._fields if f.name != "stream"]
        if prompt:
            own = first_value(fields, "prompt")
            fields = [f for f in fields if f.name != "prompt"]
            fields.append(FormField("prompt", f"{own} {prompt}" if own else prompt))
        return fields

    async def _stop(
        self,
        decoding: asyncio.Task[None],
        launcher: asyncio.Task[None],
        tasks: list[asyncio.Task[Any]],
    ) -> None:
        """End everything the request started: threads, requests, spool files."""
        self._stopped.set()
        if self._pipe is not None:
            self._pipe.abort()
        running = [decoding, launcher, *tasks]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        while not self._ready.empty():
            item = self._ready.get_nowait()
            if isinstance(item, CutChunk):
                item.file.close()
                self._room.release()


def _deltas(done: TranscriptDone, *, first: bool) -> list[TranscriptDelta]:
    """One chunk's transcript as delta events; later chunks' text starts with a space."""
    if done.document is not None:
        deltas = list(deltas_of(done))
    else:
        text = chunk_text(done)
        deltas = [TranscriptDelta({"type": DELTA, "delta": text})] if text else []
    if deltas and not first:
        head = str(deltas[0].event.get("delta", ""))
        if head and not head[0].isspace():
            deltas[0] = TranscriptDelta({**deltas[0].event, "delta": " " + head})
    return deltas


def _prompt_tail(text: str) -> str:
    """The end of a chunk's text, from a word boundary."""
    if len(text) <= _PROMPT_TAIL_CHARS:
        return text
    tail = text[-_PROMPT_TAIL_CHARS:]
    return tail.split(" ", 1)[1] if " " in tail else tail


async def _first_of(waiting: Awaitable[_T], launcher: asyncio.Task[None]) -> _T:
    """``waiting``'s result, unless ``launcher`` fails first (then its error)."""
    getting = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait((getting, launcher), return_when=asyncio.FIRST_COMPLETED)
        if getting.done():
            return getting.result()
        if launcher.exception() is not None:
            raise launcher.exception()  # type: ignore[misc]
        return await getting
    finally:
        getting.cancel()


__all__ = [
    "LimitedAudio",
    "LongAudio",
    "long_audio_installed",
    "over_limit",
    "refuse_without_extra",
    "upload_limit",
]
