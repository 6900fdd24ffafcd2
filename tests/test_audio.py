"""The shared audio pieces on their own: the streaming decoder and the silence cutter.

Long audio uses both today; the local model and realtime sessions are to
feed and read them the same way, so they are tested apart from any of them.
"""

from __future__ import annotations

import asyncio
import threading
from array import array
from collections.abc import Iterator

import pytest

from proxy.audio.decoder import (
    PCM_BYTES_PER_S,
    SAMPLE_RATE,
    StreamingDecoder,
    UndecodableAudioError,
)
from proxy.audio.silence import CUT, Cut, SilenceCutter
from proxy.audio.sources import BufferedAudio
from proxy.errors import InvalidRequestError
from tests.helpers.sources import in_pieces, live_audio
from tests.helpers.spoken import encode, speech

RATE = SAMPLE_RATE


def pcm_of(words: int) -> bytes:
    """``words`` seconds of synthetic speech (each a 0.6 s tone, then 0.4 s of silence)."""
    return bytes(speech(words).tobytes())


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
    pcm = pcm_of(7)
    pieces = pieces_of(SilenceCutter(max_s=2.0, search_s=1.0), pcm, step)
    assert b"".join(pieces) == pcm  # nothing lost, nothing doubled
    assert all(len(p) <= 2.0 * PCM_BYTES_PER_S for p in pieces)
    ends, position = [], 0
    for piece in pieces[:-1]:
        position += len(piece)
        ends.append(position / PCM_BYTES_PER_S % 1.0)
    # Each cut falls in a pause (0.6 to 1.0 s into its second).
    assert len(ends) >= 3
    assert all(0.6 <= end <= 1.0 for end in ends), ends


@pytest.mark.parametrize("step", [320, 100_000])
def test_a_shorter_first_piece_then_full_ones(step: int) -> None:
    pcm = pcm_of(9)
    pieces = pieces_of(SilenceCutter(max_s=3.0, search_s=1.0, first_max_s=1.5), pcm, step)
    assert b"".join(pieces) == pcm
    assert len(pieces[0]) <= 1.5 * PCM_BYTES_PER_S
    # The later pieces are as long as allowed, each still ending in a pause.
    assert all(2.0 * PCM_BYTES_PER_S < len(p) <= 3.0 * PCM_BYTES_PER_S for p in pieces[1:-1])
    assert len(pieces) >= 4


def test_the_cutter_holds_back_only_the_stretch_a_cut_may_fall_in() -> None:
    cutter = SilenceCutter(max_s=600.0, search_s=30.0)
    pcm = pcm_of(60)
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
    pcm = array("h", [3000]).tobytes() * (5 * RATE)  # no quieter place than another
    pieces = pieces_of(SilenceCutter(max_s=2.0, search_s=0.5), pcm, 32000)
    assert b"".join(pieces) == pcm
    assert all(len(p) <= 2 * PCM_BYTES_PER_S for p in pieces)
    assert len(pieces) == 3


def count_pcm(pcm: Iterator[bytes]) -> tuple[int, str]:
    """(thread side) How much PCM came, and from which thread."""
    return sum(len(piece) for piece in pcm), threading.current_thread().name


@pytest.mark.parametrize("arriving", [False, True], ids=["whole", "arriving"])
async def test_the_decoder_gives_16_khz_mono_pcm_in_a_thread_of_its_own(arriving: bool) -> None:
    pytest.importorskip("av")
    data = encode(2, "mp3")  # 44.1 kHz
    audio = (
        live_audio(*in_pieces(data, 4096), pause=True)
        if arriving
        else BufferedAudio(data, filename="a.mp3", content_type="audio/mpeg")
    )
    decoder = StreamingDecoder(audio, slots=asyncio.Semaphore(1))
    size, thread = await decoder.run(count_pcm)
    assert thread == "audio-decoder"
    assert abs(size / PCM_BYTES_PER_S - 2.0) < 0.02  # resampled to 16 kHz, still 2 s


async def test_what_is_not_audio_is_said_so() -> None:
    pytest.importorskip("av")
    decoder = StreamingDecoder(
        live_audio(b"this is no audio file" * 500), slots=asyncio.Semaphore(1)
    )
    with pytest.raises(UndecodableAudioError):
        await decoder.run(count_pcm)


async def test_a_check_once_the_upload_is_read_can_refuse_it() -> None:
    pytest.importorskip("av")

    def refuse() -> None:
        raise InvalidRequestError("no", code="fields_after_file")

    data = encode(1, "wav")
    decoder = StreamingDecoder(
        live_audio(*in_pieces(data, 4096)), slots=asyncio.Semaphore(1), upload_read=refuse
    )
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

    data = encode(3, "wav")
    decoders = [
        StreamingDecoder(live_audio(*in_pieces(data, 512), pause=True), slots=slots)
        for _ in range(3)
    ]
    sizes = await asyncio.gather(*(d.run(slow_count) for d in decoders))
    assert len(set(sizes)) == 1
    assert most == 1
