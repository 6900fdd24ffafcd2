"""One recording transcribed window by window (in the model's thread).

Each window is decoded as Whisper decodes a 30 s stretch of a whole file:
the text before it (the client's prompt, then the last 223 tokens of what
was heard) as its prompt, unless a window needed a high temperature (a
sign of a bad decode, which Whisper does not carry either); the language
heard in the first window for every later one, unless the client named it.
Timestamps and word times come out in the whole recording's time.

With ``vad_filter`` each window's silences are cut out first (Silero VAD,
shipped with faster-whisper) and its times put back; a window with no
speech is not decoded at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ...answers.formats import Segment, Word
from ...audio.decoder import PCM_BYTES_PER_S, SAMPLE_BYTES, SAMPLE_RATE
from ...config import LocalSettings
from ...form.fields import first_value, parse_temperature
from ...models import FormField
from .model import pass_end, reset_pass_end

#: Whisper conditions on at most this many tokens of earlier text.
PROMPT_TOKENS = 223
#: A batch's prompt: the end of the previous batch's text, in characters.
_BATCH_PROMPT_CHARS = 600
#: What ends a sentence, where a batched window is split into segments.
_SENTENCE_ENDS = (".", "?", "!", "\u3002", "\uff1f", "\uff01")  # and the CJK full stops
#: A window decoded at a higher temperature than this is not carried as a prompt.
_PROMPT_RESET_TEMPERATURE = 0.5
#: Whisper's mel frames per second (a segment's ``seek`` counts them).
_FRAMES_PER_S = 100


@dataclass(frozen=True)
class DecodeOptions:
    """What the client's form asks of the model."""

    beam_size: int
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    word_timestamps: bool = False
    vad_filter: bool = False
    #: Whisper's ``task``: ``transcribe``, or ``translate`` (into English).
    task: str = "transcribe"

    @classmethod
    def of(
        cls, fields: Sequence[FormField], settings: LocalSettings, *, translate: bool = False
    ) -> DecodeOptions:
        """The options the form's fields and the settings give."""
        language = first_value(fields, "language")
        temperature = first_value(fields, "temperature")
        granularities = {
            f.value
            for f in fields
            if f.name in ("timestamp_granularities[]", "timestamp_granularities")
        }
        return cls(
            beam_size=settings.beam_size,
            language=_language_code(language),
            prompt=first_value(fields, "prompt") or None,
            temperature=parse_temperature(temperature) if temperature is not None else None,
            word_timestamps="word" in granularities,
            vad_filter=settings.vad_filter,
            task="translate" if translate else "transcribe",
        )

    @classmethod
    def for_turn(cls, *, beam_size: int, language: str | None, prompt: str | None) -> DecodeOptions:
        """The options for a realtime turn: its session's language and prompt."""
        return cls(beam_size=beam_size, language=_language_code(language), prompt=prompt)


def _language_code(language: str | None) -> str | None:
    """The language Whisper is told: ``en-US`` as ``en``."""
    return language.split("-")[0].lower() if language else None


@dataclass(frozen=True)
class _Window:
    """One window's audio as the model gets it, and how to put its times back."""

    #: Where the window starts in the recording, in seconds.
    start_s: float
    #: Float samples, its silences cut out when ``speech`` is set.
    audio: Any
    #: The VAD's map from the cut audio's time back to the window's, if cut.
    speech: Any = None

    def time(self, seconds: float, *, is_end: bool = False) -> float:
        """A time in the model's audio as a time in the whole recording."""
        if self.speech is not None:
            seconds = self.speech.get_original_time(seconds, is_end=is_end)
        return self.start_s + seconds


class RecordingDecode:
    """One recording's decode, window after window: the state carried between them."""

    def __init__(self, whisper: Any, options: DecodeOptions) -> None:
        self._whisper = whisper
        self._options = options
        #: The language every window is decoded in, once known.
        self.language = options.language
        #: Tokens of the text so far, for the next window's prompt (None: not begun).
        self._history: list[int] | None = None
        self._batched: Any = None
        self._batch_prompt = options.prompt

    def window(self, pcm: bytes, start_byte: int) -> tuple[list[Segment], int]:
        """Decode one window; its segments, and how many of its bytes they account for
        (the rest, after the last complete segment, begins the next window)."""
        window = self._window(pcm, start_byte)
        if window is None:
            return [], len(pcm)
        reset_pass_end(self._whisper)
        raw, info = self._whisper.transcribe(
            window.audio, initial_prompt=self._prompt(), **self._decode_kwargs()
        )
        raw = list(raw)  # the decode runs as it is iterated
        self.language = self.language or info.language
        self._carry(raw)
        return [_segment(r, window) for r in raw], self._consumed(raw, window, len(pcm))

    def batch(self, windows: Sequence[tuple[int, bytes]]) -> list[Segment]:
        """Decode several windows at once (faster-whisper's batched pipeline).

        A batched window has no next pass to finish what it leaves
        unfinished, so it is decoded as the pipeline decodes its clips:
        without timestamps, all of its speech in one piece. Its words are
        timed, and it is split into sentences at their ends.
        """
        import numpy as np
        from faster_whisper import BatchedInferencePipeline

        if self._batched is None:
            self._batched = BatchedInferencePipeline(self._whisper)
        decoded = [w for w in (self._window(p, s) for s, p in windows) if w is not None]
        if not decoded:
            return []
        clips, at = [], 0.0
        for window in decoded:
            length = len(window.audio) / SAMPLE_RATE
            clips.append({"start": at, "end": at + length})
            at += length
        raw, info = self._batched.transcribe(
            np.concatenate([w.audio for w in decoded]),
            clip_timestamps=clips,
            batch_size=len(decoded),
            vad_filter=False,
            initial_prompt=self._batch_prompt,
            **{**self._decode_kwargs(), "word_timestamps": True},
        )
        raw = list(raw)
        self.language = self.language or info.language
        segments = []
        for r in raw:
            index = max(i for i, clip in enumerate(clips) if clip["start"] <= r.start + 1e-3)
            segments += self._sentences(_segment(r, decoded[index], shift=-clips[index]["start"]))
        text = "".join(s.text for s in segments).strip()
        if text:
            tail = text[-_BATCH_PROMPT_CHARS:]
            self._batch_prompt = tail.split(" ", 1)[-1] if len(text) > len(tail) else tail
        return segments

    def _sentences(self, window: Segment) -> list[Segment]:
        """A window decoded in one piece, as one segment per sentence (by its words' ends)."""
        if not window.words:
            return [window]
        groups: list[list[Word]] = [[]]
        for word in window.words:
            groups[-1].append(word)
            if word.word.rstrip().endswith(_SENTENCE_ENDS):
                groups.append([])
        tokenizer = self._tokenizer()
        keep_words = self._options.word_timestamps
        return [
            replace(
                window,
                start=group[0].start,
                end=group[-1].end,
                text=(text := "".join(w.word for w in group)),
                tokens=tuple(tokenizer.encode(text)),
                words=tuple(group) if keep_words else (),
            )
            for group in groups
            if group
        ]

    def _decode_kwargs(self) -> dict[str, Any]:
        options = self._options
        kwargs: dict[str, Any] = {
            "beam_size": options.beam_size,
            "language": self.language,
            "word_timestamps": options.word_timestamps,
            "task": options.task,
        }
        if options.temperature is not None:
            kwargs["temperature"] = options.temperature
        return kwargs

    def _window(self, pcm: bytes, start_byte: int) -> _Window | None:
        """The window as float samples (its silences cut with ``vad_filter``); None when
        the VAD finds no speech in it."""
        import numpy as np

        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        start_s = start_byte / PCM_BYTES_PER_S
        if not self._options.vad_filter:
            return _Window(start_s, audio)
        from faster_whisper.vad import SpeechTimestampsMap, get_speech_timestamps

        chunks = get_speech_timestamps(audio)
        if not chunks:
            return None
        speech = np.concatenate([audio[c["start"] : c["end"]] for c in chunks])
        return _Window(start_s, speech, SpeechTimestampsMap(chunks, SAMPLE_RATE))

    def _prompt(self) -> str | list[int] | None:
        if self._history is None:
            return self._options.prompt
        return self._history[-PROMPT_TOKENS:] or None

    def _carry(self, raw: Sequence[Any]) -> None:
        """Keep what this window heard as the next one's prompt, as Whisper does."""
        if self._history is None:
            self._history = self._prompt_tokens()
        if any((r.temperature or 0.0) > _PROMPT_RESET_TEMPERATURE for r in raw):
            self._history = []
        else:
            self._history.extend(t for r in raw for t in r.tokens)
        del self._history[:-PROMPT_TOKENS]

    def _prompt_tokens(self) -> list[int]:
        prompt = self._options.prompt
        return list(self._tokenizer().encode(" " + prompt.strip())) if prompt else []

    def _tokenizer(self) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        whisper = self._whisper
        return Tokenizer(whisper.hf_tokenizer, whisper.model.is_multilingual)

    def _consumed(self, raw: Sequence[Any], window: _Window, size: int) -> int:
        """Bytes of the window the pass accounts for: up to where Whisper would go on."""
        end = pass_end(self._whisper)
        if end is None or end.complete:
            return size
        resume_s = end.resume / _FRAMES_PER_S
        if self._options.word_timestamps:
            # Whisper goes on from the last word heard, not the last timestamp.
            last_word = max((w.end for r in raw for w in r.words or ()), default=0.0)
            if last_word > 0:
                resume_s = last_word
        if window.speech is not None:
            resume_s = window.speech.get_original_time(resume_s)
        consumed = math.floor(resume_s * SAMPLE_RATE) * SAMPLE_BYTES
        # A pass that moved nowhere would be decoded again forever: take it all.
        return consumed if 0 < consumed < size else size


def _segment(raw: Any, window: _Window, *, shift: float = 0.0) -> Segment:
    """A faster-whisper segment in the recording's time (plain Python numbers: the
    decoder hands some out as numpy scalars)."""
    words = tuple(
        Word(
            str(w.word),
            window.time(float(w.start) + shift),
            window.time(float(w.end) + shift, is_end=True),
        )
        for w in raw.words or ()
    )
    return Segment(
        id=0,
        seek=round((window.start_s + shift) * _FRAMES_PER_S) + int(raw.seek),
        start=window.time(float(raw.start) + shift),
        end=window.time(float(raw.end) + shift, is_end=True),
        text=str(raw.text),
        tokens=tuple(int(t) for t in raw.tokens),
        temperature=float(raw.temperature or 0.0),
        avg_logprob=float(raw.avg_logprob),
        compression_ratio=float(raw.compression_ratio),
        no_speech_prob=float(raw.no_speech_prob),
        words=words,
    )
