"""The shared audio pieces on their own: the streaming decoder and the silence cutter.

Long audio uses both today; the local model and realtime sessions are to
feed and read them the same way, so they are tested apart from any of them.
"""

from __future__ import annotations

import asyncio
import io
import math
import threading
import wave
from array import array
from collections.abc import AsyncGenerator, Iterator

import pytest

from proxy.audio.decoder import (
    PCM_BYTES_PER_S,
    SAMPLE_RATE,
    StreamingDecoder,
    UndecodableAudioError,
)
from proxy.audio.silence import CUT, Cut, SilenceCutter
from proxy.audio.sources import BufferedAudio, LiveAudio
from proxy.errors import InvalidRequestError

RATE = SAMPLE_RATE


def speech_like(pattern: list[tuple[float, bool]], rate: int = RATE) -> bytes:
    """16-bit mono PCM: stretches of tone (True) and silence (False) of the lengths given."""
    samples = array("h")
    for seconds, loud in pattern:
        count = int(seconds * rate)
        if loud:
            samples.extend(int(6000 * math.sin(2 * math.pi * 440 * n / rate)) for n in range(count))
        else:
            samples.extend([0] * count)
    return samples.tobytes()


def wav_of(pcm: bytes, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


def pieces_of(cutter: SilenceCutter, pcm: bytes, step: int) -> list[bytes]:
    """The pieces ``cutter`` makes of ``pcm`` fed ``step`` bytes at a time."""
    pieces, current = [], bytearray()

    def take(items: list[bytes | Cut]) -> None:
        nonlocal current
        for item in items:
            if item is CUT:
                if current:
                    pieces.append(bytes(current))
                current = bytearray()
            else:
                assert isinstance(item, bytes)
                current += item

    for start in range(0, len(pcm), step):
        take(cutter.feed(pcm[start : start + step]))
    take(cutter.end())
    return pieces


@pytest.mark.parametrize("step", [320, 4096, 100_000, 1 << 22])
def test_the_cutter_cuts_in_the_silences_however_the_pcm_is_fed(step: int) -> None:
    # 1 s of tone then 0.4 s of silence, five times: pieces of at most 2 s.
    pcm = speech_like([(1.0, True), (0.4, False)] * 5)
    pieces = pieces_of(SilenceCutter(max_s=2.0, search_s=1.0), pcm, step)
    assert b"".join(pieces) == pcm  # nothing lost, nothing doubled
    assert all(len(p) <= 2.0 * PCM_BYTES_PER_S for p in pieces)
    ends, position = [], 0
    for piece in pieces[:-1]:
        position += len(piece)
        ends.append(position / PCM_BYTES_PER_S % 1.4)
    # Each cut falls in a pause (1.0 to 1.4 s into its second-and-a-bit of sound).
    assert all(1.0 <= end <= 1.4 for end in ends), ends


def test_the_cutter_holds_back_only_the_stretch_a_cut_may_fall_in() -> None:
    cutter = SilenceCutter(max_s=600.0, search_s=30.0)
    pcm = speech_like([(60.0, True)])
    step = PCM_BYTES_PER_S // 10  # as a decoder gives it: a tenth of a second at a time
    out = [
        item
        for start in range(0, len(pcm), step)
        for item in cutter.feed(pcm[start : start + step])
    ]
    given = sum(len(item) for item in out if isinstance(item, bytes))
    # A minute in, all but the last 30 s (the stretch a cut may fall in) is given out.
    assert len(pcm) - given <= 30 * PCM_BYTES_PER_S + step
    assert CUT not in out


def test_a_recording_without_silence_is_cut_at_the_longest() -> None:
    pcm = speech_like([(5.0, True)])
    pieces = pieces_of(SilenceCutter(max_s=2.0, search_s=0.5), pcm, 32000)
    assert b"".join(pieces) == pcm
    assert all(len(p) <= 2 * PCM_BYTES_PER_S for p in pieces)
    assert len(pieces) == 3


def count_pcm(pcm: Iterator[bytes]) -> tuple[int, str]:
    """(thread side) How much PCM came, and from which thread."""
    return sum(len(piece) for piece in pcm), threading.current_thread().name


def live(data: bytes, piece: int = 4096) -> LiveAudio:
    async def client() -> AsyncGenerator[bytes, None]:
        for start in range(0, len(data), piece):
            yield data[start : start + piece]
            await asyncio.sleep(0)

    return LiveAudio(client(), filename="a.wav", content_type="audio/wav", trailing_fields=[])


@pytest.mark.parametrize("arriving", [False, True], ids=["whole", "arriving"])
async def test_the_decoder_gives_16_khz_mono_pcm_in_a_thread_of_its_own(arriving: bool) -> None:
    pytest.importorskip("av")
    pcm = speech_like([(1.5, True), (0.5, False)], rate=44_100)
    data = wav_of(pcm, rate=44_100)
    audio = live(data) if arriving else BufferedAudio(data, filename="a.wav", content_type="x")
    decoder = StreamingDecoder(audio, slots=asyncio.Semaphore(1))
    size, thread = await decoder.run(count_pcm)
    assert thread == "audio-decoder"
    assert abs(size / PCM_BYTES_PER_S - 2.0) < 0.02  # resampled to 16 kHz, still 2 s


async def test_what_is_not_audio_is_said_so() -> None:
    pytest.importorskip("av")
    decoder = StreamingDecoder(live(b"this is no audio file" * 500), slots=asyncio.Semaphore(1))
    with pytest.raises(UndecodableAudioError):
        await decoder.run(count_pcm)


async def test_a_check_once_the_upload_is_read_can_refuse_it() -> None:
    pytest.importorskip("av")

    def refuse() -> None:
        raise InvalidRequestError("no", code="fields_after_file")

    data = wav_of(speech_like([(0.5, True)]))
    decoder = StreamingDecoder(live(data), slots=asyncio.Semaphore(1), upload_read=refuse)
    with pytest.raises(InvalidRequestError):
        await decoder.run(count_pcm)


async def test_decoders_run_no_more_at_once_than_their_slots() -> None:
    pytest.importorskip("av")
    slots = asyncio.Semaphore(1)
    running, most = 0, 0
    lock = threading.Lock()

    def slow_count(pcm: Iterator[bytes]) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        total = sum(len(piece) for piece in pcm)
        with lock:
            running -= 1
        return total

    data = wav_of(speech_like([(3.0, True)]))
    decoders = [StreamingDecoder(live(data, 512), slots=slots) for _ in range(3)]
    sizes = await asyncio.gather(*(d.run(slow_count) for d in decoders))
    assert len(set(sizes)) == 1
    assert most == 1
