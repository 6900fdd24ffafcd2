"""Long audio: an upload past a provider's limit, cut at silence, transcribed in parallel, stitched.

OpenAI and Azure refuse uploads over 25 MB. An upload over the smallest
limit among a request's routes is decoded as it arrives (the shared
:class:`~proxy.audio.decoder.StreamingDecoder`, in a thread of its own), cut
into chunks of at most ``proxy.chunking.max_chunk_s`` seconds
(:mod:`.chunker`), and each chunk is sent through the request's routes as an
ordinary request of its own (a :class:`~proxy.dispatch.RouteDispatch`, with
its own retries and fallbacks), ``max_parallel`` at once. Answers are given
out in order as soon as a chunk and every chunk before it are done, then
stitched into one (:mod:`.stitch`).

Memory stays flat: the upload passes through a few pieces at a time, and
chunks live in unnamed spool files, at most ``max_parallel + 1`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..answers.events import DELTA, deltas_of, final_answer
from ..answers.formats import transcript_text
from ..audio.decoder import (
    PCM_BYTES_PER_S,
    DecodingStopped,
    StreamingDecoder,
    UndecodableAudioError,
    decoder_installed,
)
from ..audio.sources import SpooledAudio
from ..audio.spool import Spool, open_unnamed
from ..config import ChunkingSettings
from ..dispatch import Dispatch, RouteDispatch, Served, TranscriptionJob
from ..errors import InvalidAudioError, InvalidRequestError, PayloadTooLargeError, ProxyError
from ..form.fields import first_value
from ..metrics import Metrics
from ..models import FormField, TranscriptDelta, TranscriptDone, TranscriptEvent
from .chunker import Chunker, CutChunk
from .encoding import CHUNK_ENCODINGS
from .stitch import ChunkAnswer, stitch

log = logging.getLogger(__name__)

#: A chunk stays this far under the limit, as if it were PCM (no format is larger).
_LIMIT_MARGIN = 0.9
#: The end of the previous chunk's text sent as the next one's prompt.
_PROMPT_TAIL_CHARS = 400

_T = TypeVar("_T")


@dataclass(frozen=True)
class LongAudio:
    """Cuts uploads past their routes' limit: the ``cut`` of :class:`~proxy.dispatch.Dispatcher`.

    ``decoders`` bounds the long uploads decoded at once in this process.
    """

    settings: ChunkingSettings
    decoders: asyncio.Semaphore
    metrics: Metrics
    spool_dir: str | None = None

    def cut(self, job: TranscriptionJob, limit: int) -> Dispatch:
        """The way of ``job``, whose upload is over ``limit`` bytes (413 without PyAV)."""
        if not decoder_installed():
            raise PayloadTooLargeError(
                f"the upload is larger than provider {job.routes[0].provider.name}'s limit of "
                f"{limit / 1024 / 1024:g} MiB; cutting long audio into chunks needs the "
                "long-audio extra: pip install 'transcription-proxy[long-audio]'",
                code="upload_over_provider_limit",
                param="file",
            )
        return LongAudioDispatch(job, limit, self)


@dataclass(frozen=True)
class _Decoded:
    """The decoder reached the end of the recording."""

    seconds: float


class LongAudioDispatch:
    """One long upload's way through the routes, chunk by chunk (a :class:`Dispatch`)."""

    def __init__(self, job: TranscriptionJob, limit: int, long_audio: LongAudio) -> None:
        settings = long_audio.settings
        self._job = job
        self._settings = settings
        self._metrics = metrics = long_audio.metrics
        self._spool_dir = spool_dir = long_audio.spool_dir
        self._max_chunk_s = min(settings.max_chunk_s, limit * _LIMIT_MARGIN / PCM_BYTES_PER_S)
        self._parallel = 1 if settings.carry_prompt else settings.max_parallel
        self._format = CHUNK_ENCODINGS[settings.format]
        self._decoder = StreamingDecoder(
            job.audio,
            slots=long_audio.decoders,
            spool_dir=spool_dir,
            spooled=metrics.spool_bytes,
            upload_read=self._no_trailing_fields,
        )
        #: Chunk files on disk at once: those being sent, and one being made.
        self._room = threading.Semaphore(self._parallel + 1)
        self._stopped = threading.Event()
        self._ready: asyncio.Queue[CutChunk | _Decoded | BaseException] = asyncio.Queue()
        #: The route that served the first chunk.
        self._route = job.routes[0]
        #: How many chunks the recording was cut into (known at the end).
        self._chunk_count: int | None = None
        self._attempts: list[dict[str, Any]] = []

    @property
    def served(self) -> Served:
        """The route that served the first chunk, each chunk's attempts where it needed
        more than one, and the number of chunks, once known."""
        return Served(self._route, self._attempts or None, self._chunk_count)

    async def events(self) -> AsyncGenerator[TranscriptEvent, None]:
        """Each chunk's transcript as deltas, in order, then the stitched answer."""
        launched: asyncio.Queue[tuple[CutChunk, asyncio.Task[TranscriptDone]] | None] = (
            asyncio.Queue()
        )
        tasks: list[asyncio.Task[Any]] = []
        decoding = asyncio.ensure_future(self._decode())
        launcher = asyncio.ensure_future(self._launch(launched, tasks))
        answers: list[ChunkAnswer] = []
        response_format = first_value(self._job.fields, "response_format") or "json"
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
            self._chunk_count = len(answers)
            if not answers:
                raise InvalidAudioError("the file holds no audio")
            yield stitch(answers, response_format=response_format, duration_s=answers[-1].end_s)
        finally:
            await self._stop(decoding, launcher, tasks)

    # --- decoding (the client's bytes, through the decoder, into chunks) ---------------------

    async def _decode(self) -> None:
        """Run the chunker over the upload's PCM; its chunks and its end go to ``_ready``."""
        chunker = Chunker(
            max_chunk_s=self._max_chunk_s,
            cut_search_s=self._settings.cut_search_s,
            chunk_format=self._format,
            open_file=lambda: open_unnamed(self._spool_dir),
            emit=self._emit_threadsafe(),
            wait_for_room=self._wait_for_room,
        )
        try:
            self._ready.put_nowait(_Decoded(await self._decoder.run(chunker.run)))
        except UndecodableAudioError as exc:
            log.info("long audio could not be decoded: %s", exc)
            self._ready.put_nowait(InvalidAudioError())
        except DecodingStopped:
            pass
        except Exception as exc:
            self._ready.put_nowait(exc)

    def _no_trailing_fields(self) -> None:
        trailing = self._job.audio.trailing_fields
        if trailing:
            names = ", ".join(sorted({f.name for f in trailing}))
            raise InvalidRequestError(
                f"fields after the file ({names}) cannot apply to a long upload, whose chunks "
                "are sent as it arrives: send every field before the file",
                code="fields_after_file",
                param=trailing[0].name,
            )

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
                raise DecodingStopped()
        if self._stopped.is_set():
            self._room.release()
            raise DecodingStopped()

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
                # Before the chunk goes: a recording that decodes far longer than its
                # bytes promised stops at its budget, or the server's cap.
                await self._job.hooks.on_audio(item.end_s)
                await parallel.acquire()
                prompt = None
                if self._settings.carry_prompt and previous is not None:
                    prompt = _prompt_tail(transcript_text(await previous))
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
            job = self._job
            dispatch = RouteDispatch(
                replace(
                    job,
                    fields=self._chunk_fields(prompt),
                    audio=audio,
                    request_id=f"{job.request_id}.{chunk.index}" if job.request_id else None,
                ),
                chunk=(chunk.index, chunk.start_s, chunk.end_s),
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
                self._route = dispatch.route
            if dispatch.fell_back:
                where = {"chunk": chunk.index, "start": chunk.start_s, "end": chunk.end_s}
                self._attempts.extend({**a.as_dict(), **where} for a in dispatch.attempts)
            return done
        finally:
            spool.close()
            self._room.release()

    def _chunk_fields(self, prompt: str | None) -> list[FormField]:
        """The client's fields for one chunk: answered whole, perhaps with a carried prompt."""
        fields = [f for f in self._job.fields if f.name != "stream"]
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
        self._decoder.stop()
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
        text = transcript_text(done)
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
