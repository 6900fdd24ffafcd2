"""Synthetic speech whose every second can be recognised, and an upstream that recognises it.

Second ``k`` of a recording holds one "word": a tone of ``word_hz(k)`` for
0.6 s, then 0.4 s of silence. The listening upstream decodes whatever audio
it is sent, finds the tones and answers with one segment per word (``w{k}``,
timed where it heard it), so a test can prove that every second of a long
recording was transcribed exactly once, in order, at the right time.
"""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np
from aiohttp import web

from tests.helpers.upstream import ReceivedRequest

WORD_S = 0.6
_BASE_HZ = 300.0
_STEP_HZ = 40.0
_ANALYSIS_RATE = 16_000
_FRAME = _ANALYSIS_RATE // 100

#: Container, codec and sample rate for each format the tests upload.
FORMATS: dict[str, tuple[str, str, int, str]] = {
    "wav": ("wav", "pcm_s16le", 16_000, "audio/wav"),
    "mp3": ("mp3", "libmp3lame", 44_100, "audio/mpeg"),
    "ogg": ("ogg", "libopus", 48_000, "audio/ogg"),
    "flac": ("flac", "flac", 16_000, "audio/flac"),
    "m4a": ("mp4", "aac", 44_100, "audio/mp4"),
}


def word_hz(k: int) -> float:
    return _BASE_HZ + _STEP_HZ * (k % 80)


def speech(words: int, rate: int = 16_000) -> Any:
    """``words`` seconds of synthetic speech as int16 samples."""
    t = np.arange(int(WORD_S * rate)) / rate
    silence = np.zeros(int((1 - WORD_S) * rate))
    pieces = []
    for k in range(words):
        tone = 0.5 * np.sin(2 * np.pi * word_hz(k) * t)
        pieces += [tone, silence]
    return (np.concatenate(pieces) * 32767).astype(np.int16)


def encode(words: int, fmt: str) -> bytes:
    """``words`` seconds of synthetic speech as a file in ``fmt`` (a key of FORMATS)."""
    return encode_samples(speech(words, FORMATS[fmt][2]), FORMATS[fmt][2], fmt)


def encode_samples(samples: Any, rate: int, fmt: str) -> bytes:
    """Mono int16 ``samples`` at ``rate`` as a file in ``fmt`` (resampled to its rate)."""
    container_format, codec, codec_rate, _ = FORMATS[fmt]
    out = io.BytesIO()
    with av.open(out, mode="w", format=container_format) as container:
        stream: Any = container.add_stream(codec, rate=codec_rate, layout="mono")
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=codec_rate)
        for start in range(0, len(samples), rate):  # one second per frame
            frame = av.AudioFrame.from_ndarray(
                samples[start : start + rate].reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = rate
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    container.mux(packet)
        for resampled in resampler.resample(None):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def decode(data: bytes) -> Any:
    """Any audio file as 16 kHz mono float samples."""
    container: Any
    with av.open(io.BytesIO(data)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=_ANALYSIS_RATE)
        pieces = [
            out.to_ndarray().reshape(-1)
            for frame in container.decode(container.streams.audio[0])
            for out in resampler.resample(frame)
        ]
        pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(pieces).astype(np.float64) / 32768


def heard(samples: Any) -> list[tuple[int, float, float]]:
    """The words in ``samples``: (k, start s, end s) for each tone burst."""
    frames = len(samples) // _FRAME
    energy = (samples[: frames * _FRAME].reshape(frames, _FRAME) ** 2).mean(axis=1)
    loud = energy > 0.01
    words = []
    start = None
    for index, on in enumerate([*loud, False]):
        if on and start is None:
            start = index
        elif not on and start is not None:
            burst = samples[start * _FRAME : index * _FRAME]
            spectrum = np.abs(np.fft.rfft(burst * np.hanning(len(burst))))
            hz = float(np.argmax(spectrum)) * _ANALYSIS_RATE / len(burst)
            k = round((hz - _BASE_HZ) / _STEP_HZ)
            words.append((k, start * _FRAME / _ANALYSIS_RATE, index * _FRAME / _ANALYSIS_RATE))
            start = None
    return words


def _clock(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    hours, minutes, whole = ms // 3600000, ms // 60000 % 60, ms // 1000 % 60
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{separator}{ms % 1000:03d}"


async def listening(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
    """An OpenAI-shaped answer naming the words in the audio it was sent."""
    assert received.file.data is not None, "set upstream.keep_files"
    samples = decode(received.file.data)
    words = heard(samples)
    duration = len(samples) / _ANALYSIS_RATE
    text = " ".join(f"w{k}" for k, _, _ in words)
    fmt = received.field("response_format") or "json"
    if fmt == "text":
        return web.Response(text=text + "\n", content_type="text/plain")
    if fmt in ("srt", "vtt"):
        sep = "," if fmt == "srt" else "."
        cues = [
            f"{n}\n{_clock(s, sep)} --> {_clock(e, sep)}\nw{k}\n\n"
            for n, (k, s, e) in enumerate(words, 1)
        ]
        body = "".join(cues) if fmt == "srt" else "WEBVTT\n\n" + "".join(cues)
        return web.Response(text=body, content_type="text/plain")
    usage = {"type": "duration", "seconds": round(duration)}
    if fmt == "verbose_json":
        segments = [
            {"id": n, "seek": 0, "start": s, "end": e, "text": f" w{k}"}
            for n, (k, s, e) in enumerate(words)
        ]
        document: dict[str, Any] = {
            "task": "transcribe",
            "language": "english",
            "duration": duration,
            "text": text,
            "segments": segments,
            "usage": usage,
        }
        if received.field("timestamp_granularities[]") == "word":
            document["words"] = [{"word": f"w{k}", "start": s, "end": e} for k, s, e in words]
        return web.json_response(document)
    return web.json_response({"text": text, "usage": usage})
