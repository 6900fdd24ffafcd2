"""The embedded model at any length: window by window, as the upload arrives.

Real model, real speech: sentences spoken by espeak-ng, each with a word
only it has, so a recording that crosses window boundaries shows in its
text whether each sentence was heard once, and where (tests/helpers/speech.py).
The test sample said over again stands in where only the sound matters.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

pytest.importorskip("faster_whisper", reason="the local extra is not installed")

from proxy.audio.decoder import PCM_BYTES_PER_S, DecodingStopped
from proxy.providers.local.windows import PcmFeed, SeekWindows, SilenceWindows
from tests.helpers.client import URL, ProxyFactory, base_url, form, json_of, post
from tests.helpers.errors import assert_error
from tests.helpers.speech import SENTENCES, WORDS, espeak, pause, say, wav
from tests.helpers.spoken import encode_samples

needs_espeak = pytest.mark.skipif(
    espeak() is None, reason="espeak-ng is not installed (scripts/test installs it)"
)

SAMPLE = Path(__file__).parent / "data" / "sample.wav"
KEY_WORDS = ("weather", "sunny", "apple", "friday")
BOUNDARY = "local-windows"


def sample_samples() -> Any:
    with wave.open(str(SAMPLE)) as source:
        assert source.getframerate() == 16_000
        assert source.getnchannels() == 1
        return np.frombuffer(source.readframes(source.getnframes()), dtype=np.int16)


SAMPLE_S = len(sample_samples()) / 16_000


def wav_of(samples: Any) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setnchannels(1)
        target.setsampwidth(2)
        target.setframerate(16_000)
        target.writeframes(np.asarray(samples, dtype=np.int16).tobytes())
    return out.getvalue()


def said(times: int, *, gap_s: float = 0.0) -> Any:
    """The sample ``times`` over, ``gap_s`` of silence between."""
    gap = np.zeros(int(gap_s * 16_000), dtype=np.int16)
    pieces = []
    for _ in range(times):
        pieces += [sample_samples(), gap]
    return np.concatenate(pieces[:-1])


def counts(text: str) -> dict[str, int]:
    lowered = text.lower()
    return {word: lowered.count(word) for word in KEY_WORDS}


Spans = list[tuple[str, float, float]]


def meeting(sentences: int, *, pause_s: float = 0.0) -> tuple[bytes, Spans]:
    """The first ``sentences`` of the meeting as PCM, and each one's word and span in it."""
    pcm, spans = b"", []
    for sentence, word in zip(SENTENCES[:sentences], WORDS, strict=False):
        start = len(pcm) / PCM_BYTES_PER_S
        pcm += say(sentence)
        spans.append((word, start, len(pcm) / PCM_BYTES_PER_S))
        pcm += pause(pause_s)
    return pcm, spans


def heard_once_each(text: str, spans: Spans) -> None:
    lowered = text.lower()
    assert {w: lowered.count(w) for w, _, _ in spans} == {w: 1 for w, _, _ in spans}, text


async def local_proxy(make_proxy: ProxyFactory, **local: Any) -> TestServer:
    return await make_proxy({"providers": {"local": {}}, "proxy": {"local": local}})


def multipart(
    audio: bytes, fields: dict[str, str], *, filename: str = "a.wav", piece: int = 32 * 1024
) -> tuple[list[bytes], bytes, dict[str, str]]:
    """A model-first form: its head, the file in pieces, its tail, and its headers."""
    head = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    head += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    pieces = [head.encode()] + [audio[i : i + piece] for i in range(0, len(audio), piece)]
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return pieces, tail, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


# --- the feed and the windows, without the model ---------------------------------------------


def test_the_feed_hands_over_what_was_put_in_order_and_ends() -> None:
    feed = PcmFeed(max_bytes=1000)
    feed.put(b"ab")
    feed.put(b"cdef")
    assert feed.read(3) == b"abc"
    assert feed.read(1, wait=False) == b"d"
    feed.end()
    assert feed.read(100) == b"ef"  # the end comes before the size asked
    assert feed.read(100) == b""
    assert feed.ended
    assert feed.total_bytes == 6


def test_a_full_feed_holds_the_decoder_back_until_the_model_reads() -> None:
    feed = PcmFeed(max_bytes=4)
    feed.put(b"1234")
    put_done = threading.Event()

    def decoder() -> None:
        feed.put(b"5678")
        put_done.set()

    thread = threading.Thread(target=decoder)
    thread.start()
    assert not put_done.wait(0.2)  # full: the decoder waits
    assert feed.read(4) == b"1234"
    assert put_done.wait(5)
    thread.join()


def test_a_stopped_feed_stops_both_sides() -> None:
    feed = PcmFeed(max_bytes=2)
    feed.put(b"12")
    failures: list[BaseException] = []

    def blocked(action: Callable[[], object]) -> threading.Thread:
        def run() -> None:
            try:
                action()
            except DecodingStopped as exc:
                failures.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    waiting_put = blocked(lambda: feed.put(b"34"))
    other = PcmFeed(max_bytes=10)
    waiting_read = blocked(lambda: other.read(5))
    time.sleep(0.1)
    feed.stop()
    other.stop()
    waiting_put.join(5)
    waiting_read.join(5)
    assert len(failures) == 2


def test_seek_windows_start_where_the_last_pass_stopped_and_end_where_it_is_quiet() -> None:
    second = PCM_BYTES_PER_S
    loud = b"\x00\x30" * (70 * second // 2)
    quiet_at = (8.0, 34.0, 60.0)  # a fifth of a second of silence at each
    pcm = bytearray(loud)
    for at in quiet_at:
        pcm[int(at * second) : int((at + 0.2) * second)] = bytes(int(0.2 * second))
    feed = PcmFeed(max_bytes=100 * second)
    feed.put(bytes(pcm))
    feed.end()
    windows = SeekWindows(feed, first_s=10)

    first = windows.next()
    assert first is not None
    assert 8.0 <= len(first) / second <= 8.2  # 10 s at most, cut in the silence
    windows.advance(7 * second)  # the pass stopped at 7 s: an unfinished segment after it
    assert windows.start_byte == 7 * second
    second_window = windows.next()
    assert second_window is not None
    assert second_window == pcm[7 * second : 7 * second + len(second_window)]
    assert 34.0 <= 7 + len(second_window) / second <= 34.2  # at most 30 s, cut in silence
    windows.advance(len(second_window))
    third = windows.next()
    assert third is not None
    assert 60.0 <= windows.start_byte / second + len(third) / second <= 60.2
    windows.advance(len(third))
    rest = windows.next()
    assert rest == bytes(pcm[windows.start_byte :])  # the end: not cut
    assert windows.at_end
    windows.advance(len(rest))
    assert windows.next() is None


def test_silence_windows_take_what_is_there_and_wait_for_one() -> None:
    quiet, loud = bytes(2 * 1600), (b"\x00\x30" * 1600)  # 0.1 s each
    second = loud * 7 + quiet * 3
    feed = PcmFeed(max_bytes=1 << 30)
    feed.put(second * 95)  # 95 s: three full windows and a part of one
    windows = SilenceWindows(feed, first_s=10)
    batch = windows.next_batch(2)
    assert len(batch) == 2
    assert batch[0][0] == 0
    assert len(batch[0][1]) <= 10 * PCM_BYTES_PER_S
    assert batch[1][0] == len(batch[0][1])
    feed.end()
    while more := windows.next_batch(8):
        batch += more
    starts = [start for start, _ in batch]
    assert starts == [sum(len(pcm) for _, pcm in batch[:n]) for n in range(len(batch))]
    assert b"".join(pcm for _, pcm in batch) == second * 95  # nothing lost or doubled
    assert all(len(pcm) <= 30 * PCM_BYTES_PER_S for _, pcm in batch)


# --- the model, window by window ----------------------------------------------------------------


@needs_espeak
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_words_at_window_cuts_are_neither_lost_nor_doubled(
    make_proxy: ProxyFactory, stream: bool
) -> None:
    server = await local_proxy(make_proxy)
    pcm, spans = meeting(13)  # about 60 s, no pause between: cuts fall between words
    fields = {"model": "whisper-1", "response_format": "verbose_json"}
    fields |= {"timestamp_granularities[]": "word", "stream": str(stream).lower()}
    pieces, tail, headers = multipart(wav(pcm), fields)
    status, document = await _send(server, [*pieces, tail], headers, stream=stream)
    assert status == 200, document
    heard_once_each(document["text"], spans)
    if stream:
        return  # the done event carries the text; the times are the json answer's
    assert document["duration"] == pytest.approx(len(pcm) / PCM_BYTES_PER_S, abs=0.01)
    segments = document["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts)
    assert all(s["start"] < s["end"] <= document["duration"] + 0.05 for s in segments)
    assert segments[-1]["start"] > 30  # later windows' times are the recording's
    # Each sentence's own word is heard within that sentence's span.
    for word, start, end in spans:
        at = [w["start"] for w in document["words"] if word in w["word"].lower()]
        assert len(at) == 1, word
        assert start - 0.5 <= at[0] <= end + 0.5, (word, at, start, end)


async def _send(
    server: TestServer, parts: list[bytes], headers: dict[str, str], *, stream: bool
) -> tuple[int, dict[str, Any]]:
    """Send a body in pieces; the JSON answer, or a stream's done event."""

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url(server)}{URL}", data=body(), headers=headers) as response,
    ):
        if not stream or response.status != 200:
            return response.status, json_of(await response.read())
        events = [
            json_of(line[6:]) async for line in response.content if line.startswith(b"data: {")
        ]
    assert events[-1]["type"] == "transcript.text.done"
    return response.status, events[-1]


@needs_espeak
async def test_a_streamed_upload_gets_its_first_delta_before_its_last_byte(
    make_proxy: ProxyFactory,
) -> None:
    server = await local_proxy(make_proxy)
    pcm, spans = meeting(8, pause_s=0.5)  # about 40 s
    pieces, tail, headers = multipart(wav(pcm), {"model": "whisper-1", "stream": "true"})
    first_delta = asyncio.Event()
    sent_before_delta = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent_before_delta
        # The first half goes at once; the rest only once a caption has come back.
        for piece in pieces[: len(pieces) // 2]:
            sent_before_delta += len(piece)
            yield piece
        await asyncio.wait_for(first_delta.wait(), 120)
        for piece in pieces[len(pieces) // 2 :]:
            yield piece
        yield tail

    events: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url(server)}{URL}", data=body(), headers=headers) as response,
    ):
        assert response.status == 200
        async for line in response.content:
            if line.startswith(b"data: {"):
                events.append(json_of(line[6:]))
                if events[-1]["type"] == "transcript.text.delta":
                    first_delta.set()
    assert events[0]["type"] == "transcript.text.delta"
    assert events[-1]["type"] == "transcript.text.done"
    heard_once_each(events[-1]["text"], spans)
    assert sent_before_delta < sum(map(len, pieces)) // 2 + len(pieces[0])


async def test_a_client_gone_mid_upload_leaves_nothing_running(
    make_proxy: ProxyFactory, no_leaks: Callable[[], list[str]]
) -> None:
    server = await local_proxy(make_proxy, max_concurrent=1, max_queue=0)
    pieces, _, headers = multipart(wav_of(said(6)), {"model": "whisper-1", "stream": "true"})
    got_delta = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces[: len(pieces) // 2]:
            yield piece
        await asyncio.wait_for(got_delta.wait(), 120)  # mid-upload, mid-decode

    async def leave() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base_url(server)}{URL}", data=body(), headers=headers) as response,
        ):
            async for line in response.content:
                if line.startswith(b"data: {"):
                    got_delta.set()
                    return  # the session closes the connection with the body half sent

    await leave()
    # The decoder's thread ends, and the one decode slot is free again.
    for _ in range(200):
        if not any(t.name == "audio-decoder" for t in threading.enumerate()):
            break
        await asyncio.sleep(0.05)
    assert not any(t.name == "audio-decoder" for t in threading.enumerate())
    status, document, _ = await post(
        server, form(("model", "whisper-1"), ("file", wav_of(said(1))))
    )
    assert status == 200, document
    assert no_leaks() == []


async def test_an_mp4_is_spooled_then_decoded(make_proxy: ProxyFactory) -> None:
    server = await local_proxy(make_proxy)
    m4a = encode_samples(said(2), 16_000, "m4a")
    pieces, tail, headers = multipart(m4a, {"model": "whisper-1"}, filename="talk.m4a")

    async def body() -> AsyncIterator[bytes]:
        for piece in [*pieces, tail]:
            yield piece

    status, document, _ = await post(server, body(), headers)
    assert status == 200, document
    assert counts(document["text"]) == dict.fromkeys(KEY_WORDS, 2)


async def test_a_recording_damaged_halfway_keeps_what_came_before(
    make_proxy: ProxyFactory,
) -> None:
    server = await local_proxy(make_proxy)
    ogg = bytearray(encode_samples(said(4), 16_000, "ogg"))
    half = len(ogg) // 2
    ogg[half:] = os.urandom(len(ogg) - half)
    status, document, _ = await post(
        server,
        form(("model", "whisper-1"), ("response_format", "verbose_json"), ("file", bytes(ogg))),
    )
    assert status == 200, document
    heard = counts(document["text"])["apple"]
    assert 1 <= heard < 4, document["text"]
    # Its duration says where the decode stopped.
    assert document["duration"] < 3 * SAMPLE_S


async def test_nothing_readable_is_a_clear_400(make_proxy: ProxyFactory) -> None:
    server = await local_proxy(make_proxy)
    for audio in (wav_of([]), os.urandom(50_000)):
        status, body, _ = await post(server, form(("model", "whisper-1"), ("file", audio)))
        assert status == 400
        assert_error(body, status=400, code="invalid_audio", param="file")


async def test_vad_filter_skips_silence_and_keeps_the_times(make_proxy: ProxyFactory) -> None:
    server = await local_proxy(make_proxy, vad_filter=True)
    gap = 40.0  # a whole window of silence between two sayings
    status, document, _ = await post(
        server,
        form(
            ("model", "whisper-1"),
            ("response_format", "verbose_json"),
            ("file", wav_of(said(2, gap_s=gap))),
        ),
    )
    assert status == 200, document
    assert counts(document["text"]) == dict.fromkeys(KEY_WORDS, 2), document["text"]
    later = [s for s in document["segments"] if s["start"] > SAMPLE_S]
    assert later
    assert later[0]["start"] >= SAMPLE_S + gap - 1.0


@needs_espeak
async def test_batching_on_and_off_hear_the_same(make_proxy: ProxyFactory) -> None:
    pcm, spans = meeting(13, pause_s=0.5)
    for batch_size in (1, 4):
        server = await local_proxy(make_proxy, batch_size=batch_size)
        # File first: the whole upload is there, so windows are batched.
        status, document, _ = await post(
            server,
            form(("file", wav(pcm)), ("model", "whisper-1"), ("response_format", "verbose_json")),
        )
        assert status == 200, document
        heard_once_each(document["text"], spans)
        # A segment a sentence, in order, each where its sentence was said.
        segments = document["segments"]
        assert len(segments) == len(spans)
        for segment, (word, start, end) in zip(segments, spans, strict=True):
            assert word in segment["text"].lower()
            assert start - 0.5 <= segment["start"] < segment["end"] <= end + 0.7  # pause after
