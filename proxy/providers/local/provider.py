"""``local``: the embedded model, transcribing an upload window by window as it arrives.

The upload goes through the shared streaming decoder (16 kHz mono PCM, in
a thread of its own) into a :class:`~.windows.PcmFeed`; the model's thread
takes it out a window at a time and decodes it (:mod:`.passes`), and each
window's segments reach the client as soon as they are decoded, while the
rest of the upload is still arriving. Memory holds the model, a few
windows of PCM and the decoder's pipe, whatever the recording's length; a
client faster than the model is held back by its socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from ...answers.events import DELTA
from ...answers.formats import RESPONSE_FORMATS, Segment, transcript
from ...audio.decoder import (
    PCM_BYTES_PER_S,
    DecodingStopped,
    StreamingDecoder,
    UndecodableAudioError,
)
from ...config import LocalSettings, NetworkConfig
from ...errors import (
    InvalidAudioError,
    InvalidRequestError,
    ProxyError,
    ServiceUnavailableError,
    UpstreamError,
)
from ...form.fields import first_value
from ...metrics import Metrics
from ...models import AudioSource, TranscriptDelta, TranscriptEvent, UpstreamCall
from ..base import Capabilities, LivePasses, LivePassOptions, SpokenTurn
from .heap import cap_arenas, trim_heap
from .live_passes import TurnPasses
from .model import Model
from .passes import DecodeOptions, RecordingDecode
from .windows import WINDOW_S, PcmFeed, SeekWindows, SilenceWindows

#: Freed memory goes back to the system once the model has been idle this long.
TRIM_AFTER_IDLE_S = 3.0
#: One window of PCM, in bytes.
WINDOW_BYTES = int(WINDOW_S * PCM_BYTES_PER_S)

log = logging.getLogger(__name__)


class _DecodeSlots:
    """At most ``size`` decodes at once, ``queue`` more waiting; past that, refuse.

    A freed slot is handed straight to the longest waiter, so no newcomer
    takes it first.
    """

    def __init__(self, size: int, queue: int) -> None:
        self._size = size
        self._queue = queue
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def full(self) -> bool:
        """Whether every slot is taken (another decode would wait)."""
        return self._running >= self._size

    @property
    def idle(self) -> bool:
        """Whether no decode is running or waiting."""
        return not self._running and not self._waiters

    def try_acquire(self) -> bool:
        """A slot now, if one is free; never a wait."""
        if self.full:
            return False
        self._running += 1
        return True

    async def acquire(self) -> None:
        """A slot, waiting for one; 503 when ``queue`` others wait already."""
        if self.try_acquire():
            return
        if len(self._waiters) >= self._queue:
            raise ServiceUnavailableError(
                "the local model is busy; try again shortly",
                code="local_model_busy",
                headers={"Retry-After": "1"},
                retryable=True,
            )
        handed = asyncio.get_running_loop().create_future()
        self._waiters.append(handed)
        try:
            await handed
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled():
                self.release()  # handed over just as the wait was cancelled: pass it on
            else:
                self._waiters.remove(handed)
            raise

    def release(self) -> None:
        """Free a slot: to the longest waiter, if any."""
        while self._waiters:
            handed = self._waiters.popleft()
            if not handed.done():
                handed.set_result(None)
                return
        self._running -= 1


class LocalProvider:
    """``local``: transcription by the embedded model."""

    def __init__(self, settings: LocalSettings, *, spool_dir: str | None, metrics: Metrics) -> None:
        self._settings = settings
        self._spool_dir = spool_dir
        self._metrics = metrics
        if settings.return_memory:
            cap_arenas()  # before the model's threads are made
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.max_concurrent + 1, thread_name_prefix="local-model"
        )
        self._model = Model(settings, self._executor)
        self._slots = _DecodeSlots(settings.max_concurrent, settings.max_queue)
        self._trim: asyncio.TimerHandle | None = None
        # Bounds the streaming decoders; a request takes a decode slot before
        # its decoder starts, so this one never makes it wait.
        self._decoders = asyncio.Semaphore(settings.max_concurrent)
        #: Realtime sessions transcribed live here now.
        self._live_sessions = 0

    @property
    def name(self) -> str:
        return "local"

    @property
    def network(self) -> NetworkConfig:
        return NetworkConfig(base_url="")

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            streams=True,
            live_passes=True,
            # The packaged tiny.en is English-only; another model may translate, and
            # says so when it is loaded (answering 400 when it cannot).
            translates=self._settings.model_path is not None,
            max_upload=None,  # it reads any length where it is
        )

    @property
    def sends_back_raw_response(self) -> bool:
        return False

    def lists(self, model: str) -> bool:
        return model == self._model.name

    def serves(self, model: str) -> bool:
        return True  # whatever the client names, the embedded model answers

    def deployment_of(self, model: str) -> str:
        return self._model.name

    def listed_models(self) -> list[str]:
        return [self._model.name]

    @property
    def busy(self) -> bool:
        """Whether a decode started now would wait for another to finish."""
        return self._slots.full

    async def start(self) -> None:
        """Load the model now when ``preload`` says so, rather than on the first request."""
        if self._settings.preload:
            await self._model.get()

    async def aclose(self) -> None:
        """Stop the decoding threads once their work is done."""
        if self._trim is not None:
            self._trim.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def transcribe_pcm(
        self, pcm: bytes, options: DecodeOptions, *, wait: bool = True, whole: bool = True
    ) -> str | None:
        """16 kHz mono PCM already at hand (a realtime turn), transcribed; its text.

        Without ``wait``, None rather than a wait when the model is busy (a
        partial caption is not worth one). Not ``whole``: one pass only, its
        unfinished last segment left out (the words a speaker is still saying).
        """
        whisper = await self._model.get()
        if wait:
            await self._slots.acquire()
        elif not self._slots.try_acquire():
            return None
        loop = asyncio.get_running_loop()
        try:
            job = self._executor.submit(
                _heard, RecordingDecode(whisper, options), pcm, one_pass=not whole
            )
        except BaseException:
            self._done()
            raise
        try:
            segments = await asyncio.wrap_future(job)
        except Exception as exc:
            raise _model_error(exc) from exc
        finally:
            if job.done():
                self._done()
            else:  # cancelled mid-pass: the slot is free once the pass is
                job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._done))
        return "".join(s.text for s in segments).strip()

    def open_live_passes(
        self, turn: SpokenTurn, options: LivePassOptions, emit: Callable[[str], None]
    ) -> LivePasses:
        """Passes over a realtime turn while it is spoken (:mod:`.live_passes`)."""

        def decode(beam_size: int) -> DecodeOptions:
            return DecodeOptions.for_turn(
                beam_size=beam_size, language=options.language, prompt=options.prompt
            )

        return TurnPasses(
            self,
            turn,
            partial=decode(options.partial_beam_size),
            whole=decode(options.beam_size),
            interval_s=options.interval_s,
            emit=emit,
        )

    def take_live_seat(self) -> bool:
        """Room for one more live session, up to ``max_live_sessions``."""
        if self._live_sessions >= self._settings.max_live_sessions:
            return False
        self._live_sessions += 1
        return True

    def give_back_live_seat(self) -> None:
        """A live session has ended here, or moved off."""
        self._live_sessions -= 1

    def _done(self) -> None:
        """A decode is over: its slot is free, and once none is left for a while, so is
        its memory. Not at once: trimming holds malloc's locks, and a realtime session's
        next pass comes within a second."""
        self._slots.release()
        if self._slots.idle and self._settings.return_memory:
            if self._trim is not None:
                self._trim.cancel()
            self._trim = asyncio.get_running_loop().call_later(
                TRIM_AFTER_IDLE_S, self._trim_if_idle
            )

    def _trim_if_idle(self) -> None:
        self._trim = None
        if self._slots.idle:
            asyncio.get_running_loop().run_in_executor(self._executor, trim_heap)

    async def transcribe(self, call: UpstreamCall) -> AsyncGenerator[TranscriptEvent, None]:
        fields = [*call.fields]
        response_format = first_value(fields, "response_format") or "json"
        if RESPONSE_FORMATS[response_format].diarized:
            raise InvalidRequestError(
                f"the local model cannot tell speakers apart ({response_format})",
                param="response_format",
            )
        translating = call.task == "translation"
        options = DecodeOptions.of(fields, self._settings, translate=translating)
        streaming = (first_value(fields, "stream") or "").lower() == "true"
        whisper = await self._model.get()
        if translating and not whisper.model.is_multilingual:
            # Answered as an upstream that cannot serve the model would be: a
            # fallback the client named may translate instead.
            raise UpstreamError(
                400,
                "the local model is English-only and cannot translate; set "
                "proxy.local.model_path to a multilingual Whisper model (CTranslate2 format, "
                "for example a conversion of openai/whisper-small) to translate locally",
                code="model_cannot_translate",
                param="model",
            )
        decode = _WindowedDecode(
            call.audio,
            RecordingDecode(whisper, options),
            settings=self._settings,
            first_window_s=self._settings.first_window_s if streaming else WINDOW_S,
            executor=self._executor,
            on_audio=call.on_audio,
            decoder=StreamingDecoder(
                call.audio,
                slots=self._decoders,
                spool_dir=self._spool_dir,
                spooled=self._metrics.spool_bytes,
            ),
        )
        segments: list[Segment] = []
        await self._slots.acquire()
        started = time.monotonic()
        try:
            async with contextlib.aclosing(decode.batches()) as batches:
                async for batch in batches:
                    if not segments and batch:
                        self._metrics.upstream_ttfb.labels(provider=self.name).observe(
                            time.monotonic() - started
                        )
                    for segment in batch:
                        segments.append(replace(segment, id=len(segments)))
                        yield TranscriptDelta({"type": DELTA, "delta": segment.text})
        finally:
            self._metrics.audio_bytes_out.labels(provider=self.name).inc(decode.bytes_in)
            decode.when_done(self._done)
        yield transcript(
            segments,
            response_format=response_format,
            # A translation is English, whatever it was spoken in (as OpenAI reports it).
            language="en" if translating else decode.language,
            duration=decode.seconds,
            with_words=options.word_timestamps,
        )


def _heard(transcription: RecordingDecode, pcm: bytes, *, one_pass: bool) -> list[Segment]:
    """``pcm`` transcribed window by window (the model's thread); with ``one_pass``, only
    what the first pass hears."""
    segments: list[Segment] = []
    start = 0
    while start < len(pcm):
        heard, consumed = transcription.window(pcm[start : start + WINDOW_BYTES], start)
        segments += heard
        start += consumed
        if one_pass:
            break
    return segments


class _WindowedDecode:
    """One upload's decode: the streaming decoder filling a feed, the model's thread
    emptying it a window (or a batch of windows) at a time (loop side)."""

    def __init__(
        self,
        audio: AudioSource,
        transcription: RecordingDecode,
        *,
        settings: LocalSettings,
        first_window_s: float,
        executor: concurrent.futures.Executor,
        decoder: StreamingDecoder,
        on_audio: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._transcription = transcription
        self._on_audio = on_audio
        self._executor = executor
        self._decoder = decoder
        self._batch_size = settings.batch_size
        self._feed = PcmFeed(max_bytes=max(1, self._batch_size) * WINDOW_BYTES)
        self._windows: SeekWindows | SilenceWindows
        if self._batch_size > 1:
            self._windows = SilenceWindows(self._feed, first_s=first_window_s)
        else:
            self._windows = SeekWindows(self._feed, first_s=first_window_s)
        #: The model thread's job now running, if any.
        self._job: concurrent.futures.Future[list[Segment] | None] | None = None

    @property
    def bytes_in(self) -> int:
        """Bytes of the upload read so far."""
        return self._decoder.bytes_in

    @property
    def seconds(self) -> float:
        """The length of the recording decoded so far."""
        return self._feed.total_bytes / PCM_BYTES_PER_S

    @property
    def language(self) -> str:
        """The language the recording was decoded in."""
        return self._transcription.language or "en"

    async def batches(self) -> AsyncGenerator[list[Segment], None]:
        """Each window's (or batch's) segments, in order, as they are decoded."""
        decoding = asyncio.ensure_future(self._decoder.run(self._feed.fill))
        decoding.add_done_callback(self._decoded)
        try:
            while True:
                if self._on_audio is not None:
                    # What is decoded so far, before the model hears it: the decoder runs
                    # at most a batch of windows ahead of the model.
                    await self._on_audio(self.seconds)
                self._job = self._executor.submit(self._next)
                try:
                    batch = await asyncio.wrap_future(self._job)
                except DecodingStopped:
                    await _decoder_failure(decoding)
                    raise
                except Exception as exc:
                    raise _model_error(exc) from exc
                if batch is None:
                    break
                yield batch
            await _decoder_failure(decoding)
            if not self._feed.total_bytes:
                raise InvalidAudioError("the file holds no audio")
        finally:
            self._feed.stop()
            self._decoder.stop()
            decoding.cancel()
            with contextlib.suppress(BaseException):
                await decoding

    def when_done(self, release: Callable[[], None]) -> None:
        """Call ``release`` (on the loop) once the model's thread is done with this decode."""
        job = self._job
        if job is None or job.done():
            release()
            return
        loop = asyncio.get_running_loop()
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(release))

    def _decoded(self, decoding: asyncio.Future[Any]) -> None:
        """The decoder is done: the feed ends, or stops on a failure."""
        if decoding.cancelled() or decoding.exception() is not None:
            self._feed.stop()
        else:
            self._feed.end()

    def _next(self) -> list[Segment] | None:
        """The next window's (or batch's) segments; None at the end (the model's thread)."""
        windows, transcription = self._windows, self._transcription
        if isinstance(windows, SilenceWindows):
            batch = windows.next_batch(self._batch_size)
            return transcription.batch(batch) if batch else None
        pcm = windows.next()
        if pcm is None:
            return None
        segments, consumed = transcription.window(pcm, windows.start_byte)
        windows.advance(consumed)
        return segments


async def _decoder_failure(decoding: asyncio.Future[Any]) -> None:
    """Raise what ended the decoder, if anything did (as the client should hear it)."""
    try:
        await asyncio.shield(decoding)
    except UndecodableAudioError as exc:
        log.info("local model could not decode an upload: %s", exc)
        raise InvalidAudioError() from exc
    except DecodingStopped:
        pass


def _model_error(exc: BaseException) -> ProxyError:
    if isinstance(exc, ProxyError):
        return exc
    log.error("local model failed", exc_info=exc)
    return ServiceUnavailableError("the local model failed to transcribe the audio")
