"""What an upload's container declares before the rest has come, and the floor its bytes set.

A request reserves, before it sends anything upstream, the length its upload's header
declares (``DurationReader.declared()`` after the first ``HEAD_BYTES``), and is never
charged less than its bytes can hold at the codec's highest rate (``floor()``). Files
are made at run time as in tests/test_duration.py, then made to lie as an attacker's
would: a WAV or a FLAC declaring far more than it sends, an MP3 whose Xing header counts
one frame, an Ogg, WebM, MP4 or FLAC claiming a fraction of a second.
"""

from __future__ import annotations

import functools
import math
import random
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.audio.duration import DurationReader
from proxy.audio.duration.buffers import HEAD_BYTES
from tests.helpers.declared_audio import (
    flac_with_picture,
    mpeg_layer1,
    mvhd_timescale,
    ogg_vorbis,
    silent_flac,
    wav_declaring,
    wav_header,
    with_last_granule,
    with_mehd,
    with_mvhd_duration,
    with_webm_duration,
    with_xing_frames,
)
from tests.test_duration import (
    BARE_MP3,
    GARBAGE,
    chunk,
    encode,
    id3v2,
    mp3,
    mux,
    samples_of_each,
    wave_file,
    with_total,
)

#: The highest byte rates: MPEG-1 layer III, II and I; Opus in Ogg or WebM; ALAC in MP4,
#: and PCM at 48 kHz 16-bit stereo for what is unknown; the most PCM a header may declare.
MP3, MP2, MP1, OPUS, MP4, UNKNOWN = 40_000, 48_000, 56_000, 64_000, 192_000, 192_000
PCM_CAP = 8 * 192_000 * 4


def reader(data: bytes, size: int | None = None) -> DurationReader:
    """A reader fed the first ``size`` bytes of ``data`` (all of it by default), 4 KiB at a time."""
    fed, length = DurationReader(), len(data) if size is None else size
    for at in range(0, length, 4096):
        fed.feed(data[at : min(at + 4096, length)])
    return fed


def head(data: bytes) -> DurationReader:
    """A reader fed only what the owner reads ahead before sending anything: the head."""
    return reader(data, HEAD_BYTES)


# Files ------------------------------------------------------------------------------------


def vbr_mp3() -> bytes:
    """30 s of VBR MP3 at 48 kHz, with a Xing header and no ID3v2 tag."""
    return encode("mp3", "libmp3lame", 48_000, 30.0, (("id3v2_version", "0"),), vbr=True)


def opus_webm() -> bytes:
    return encode("webm", "libopus", 48_000, 30.0)


def opus_ogg() -> bytes:
    return encode("ogg", "libopus", 48_000, 30.0)


def flac() -> bytes:
    return encode("flac", "flac", 16_000, 10.0)


def aac_mp4() -> bytes:
    """30 s of AAC in an MP4 whose moov comes after its mdat."""
    return encode("mp4", "aac", 16_000, 30.0)


def fragmented_mp4() -> bytes:
    """A fragmented MP4: its mvhd says 0, it has no mehd, its length is in no header."""
    flags = (("movflags", "frag_keyframe+empty_moov+default_base_moof"),)
    return encode("mp4", "aac", 16_000, 30.0, flags)


def with_mehd_of(seconds: int) -> bytes:
    data = fragmented_mp4()
    return with_mehd(data, seconds * mvhd_timescale(data))


@functools.cache
def faststart_m4a() -> bytes:
    """30 s of AAC in an M4A whose moov comes first (the muxer needs a file to seek in)."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "faststart.m4a"
        mux(str(target), "ipod", "aac", 24_000, 30.0, {"movflags": "faststart"})
        return target.read_bytes()


def rf64(rate: int, seconds: float, *, with_ds64: bool = True) -> bytes:
    """A mono 16-bit RF64: its data chunk's size is all ones, the real one in ds64."""
    data = random.Random(1).randbytes(round(rate * seconds) * 2)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    ds64 = chunk(b"ds64", struct.pack("<QQQI", 0, len(data), len(data) // 2, 0))
    body = (ds64 if with_ds64 else b"") + chunk(b"fmt ", fmt) + b"data\xff\xff\xff\xff" + data
    return b"RF64\xff\xff\xff\xffWAVE" + body


def extensible_wav(rate: int, seconds: float, junk: int) -> bytes:
    """A stereo 24-bit WAVE_FORMAT_EXTENSIBLE WAV, its data after ``junk`` bytes of junk."""
    data = random.Random(0).randbytes(round(rate * seconds) * 6)
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 2, rate, rate * 6, 6, 24, 22, 24, 3)
    fmt += bytes.fromhex("0100000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_PCM
    body = b"WAVE" + chunk(b"fmt ", fmt) + chunk(b"junk", bytes(junk)) + chunk(b"data", data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def streamed_wav(size: int) -> bytes:
    """10 s of WAV whose data chunk's size was left at ``size``, as a streaming writer does."""
    data = bytearray(wave_file(16_000, 10.0))
    struct.pack_into("<I", data, 40, size)
    return bytes(data)


def pcm_wav(rate: int, channels: int, bits: int, *, tag: int = 1) -> bytes:
    """A WAV whose fmt declares this PCM, and 200 kB of data."""
    return wav_header(rate, channels, bits, 200_000, tag=tag, byte_rate=0) + bytes(200_000)


def with_streaminfo(data: bytes, rate: int, channels: int, bits: int) -> bytes:
    """A FLAC with the rate, channels and bits of its STREAMINFO set as given."""
    out = bytearray(data)
    packed = int.from_bytes(out[18:26], "big") & (1 << 36) - 1
    packed |= rate << 44 | (channels - 1) << 41 | (bits - 1) << 36
    out[18:26] = packed.to_bytes(8, "big")
    return bytes(out)


def flac_frames_at(data: bytes) -> int:
    """Where a FLAC made by FFmpeg has its first frame: its first frame sync."""
    return data.index(b"\xff\xf8")


# What the head declares -------------------------------------------------------------------

#: Files that declare their length in a header in their first bytes: each made, its true
#: length, and how far the declaration may be off: a frame of its codec.
DECLARING: dict[str, tuple[Callable[[], bytes], float, float]] = {
    "mp3 with a Xing header": (vbr_mp3, 30.0, 1152 / 48_000),
    "mp3 with a LAME Info header": (lambda: mp3(24_000, 30.0), 30.0, 576 / 24_000),
    "webm with a Duration": (opus_webm, 30.0, 0.020),
    "flac": (flac, 10.0, 0.0),
    "wav": (lambda: wave_file(16_000, 10.0), 10.0, 0.0),
    "wav extensible after junk": (lambda: extensible_wav(48_000, 7.3, 1000), 7.3, 0.0),
    "rf64": (lambda: rf64(16_000, 7.3), 7.3, 0.0),
    "m4a with its moov first": (faststart_m4a, 30.0, 1024 / 24_000),
    "fragmented mp4 with a mehd": (lambda: with_mehd_of(30), 30.0, 0.0),
}


@pytest.mark.parametrize("name", DECLARING)
def test_the_head_declares_the_length(name: str) -> None:
    make, seconds, frame = DECLARING[name]
    data = make()
    assert len(data) > HEAD_BYTES  # else the head would be the whole file
    declared = head(data).declared()
    assert declared == pytest.approx(seconds, abs=frame + 1e-9)
    # However many bytes have followed, the header says the same.
    assert reader(data, len(data) // 2).declared() == declared
    whole = reader(data)
    assert whole.declared() == declared
    assert whole.finish() == pytest.approx(seconds, abs=max(frame, 0.001))


#: Files that declare no length, though their length can be measured at the end.
SILENT: dict[str, tuple[Callable[[], bytes], float]] = {
    "ogg opus": (opus_ogg, 30.0),
    "ogg vorbis": (lambda: ogg_vorbis(44_100, 30.0), 30.0),
    "webm as streamed, without a Duration": (
        lambda: encode("webm", "libopus", 48_000, 30.0, (("live", "1"),)),
        30.0,
    ),
    "mp3 without a VBR header": (lambda: mp3(16_000, 30.0, **BARE_MP3), 30.0),
    "wav whose data size is 0": (lambda: streamed_wav(0), 10.0),
    "wav whose data size is all ones": (lambda: streamed_wav(0xFFFFFFFF), 10.0),
    "flac whose total samples are 0": (lambda: with_total(flac(), 0), 10.0),
}


@pytest.mark.parametrize("name", SILENT)
def test_containers_that_declare_no_length(name: str) -> None:
    make, seconds = SILENT[name]
    data = make()
    assert len(data) > HEAD_BYTES
    assert head(data).declared() is None
    whole = reader(data)
    assert whole.declared() is None
    assert whole.finish() == pytest.approx(seconds, abs=0.05)  # a readable file all the same


def test_an_mp4_declares_its_length_only_once_its_moov_has_come() -> None:
    data = aac_mp4()
    assert data.index(b"moov") > HEAD_BYTES
    assert head(data).declared() is None
    assert reader(data).declared() == pytest.approx(30.0, abs=1024 / 16_000)
    # Fragmented, its moov declares nothing: mvhd says 0 and there is no mehd.
    assert reader(fragmented_mp4()).declared() is None


def test_nothing_is_declared_before_the_header_has_come() -> None:
    assert DurationReader().declared() is None
    assert reader(wave_file(16_000, 10.0), 11).declared() is None  # not yet sniffed
    assert reader(wave_file(16_000, 10.0), 40).declared() is None  # no data chunk yet
    assert reader(flac(), 30).declared() is None  # STREAMINFO cut
    assert reader(vbr_mp3(), 40).declared() is None  # the Xing header cut
    # A WAV's data chunk past the head: its size is not known before it comes. Its fmt
    # is, and with it the floor, which for PCM is the length (until the data chunk is
    # found, the chunks before it count too).
    data = extensible_wav(48_000, 7.3, 70_000)
    assert head(data).declared() is None
    assert head(data).floor(len(data)) == len(data) / 288_000
    assert reader(data).declared() == 7.3
    assert reader(data).floor(len(data)) == 7.3
    # Its fmt after the head too: as any upload of unknown kind, until the fmt comes.
    body = b"WAVE" + chunk(b"junk", bytes(70_000)) + data[12:]
    data = b"RIFF" + struct.pack("<I", len(body)) + body
    assert head(data).floor(len(data)) == len(data) / UNKNOWN
    assert reader(data).floor(len(data)) == 7.3
    assert reader(flac(), 41).floor(64_000) == (64_000 - 42) / UNKNOWN  # STREAMINFO cut


def test_an_rf64_without_its_ds64_declares_nothing() -> None:
    assert head(rf64(16_000, 7.3, with_ds64=False)).declared() is None


# Headers that declare more than is sent ----------------------------------------------------


def test_a_wav_declaring_1000_s_with_1_s_sent() -> None:
    data = wav_declaring(16_000, 1000.0, 1.0)
    assert head(data).declared() == 1000.0  # what is reserved before anything is sent
    whole = reader(data)
    assert whole.declared() == 1000.0
    assert whole.finish() == 1.0  # what was sent, and what is charged
    assert whole.floor(len(data)) == (len(data) - 44) / 32_000 == 1.0


def test_a_flac_of_silence_declaring_two_hours() -> None:
    data = silent_flac(16_000, 7200)
    assert 1_000_000 < len(data) < 1_500_000  # the attack's file: 1.34 MB
    assert head(data).declared() == 7200.0
    whole = reader(data)
    # Its bytes alone would have reserved under a minute; its frames do last two hours.
    assert whole.floor(len(data)) == (len(data) - flac_frames_at(data)) / 32_000
    assert whole.floor(len(data)) < 60
    assert whole.finish() == 7200.0


# Headers that declare less than the bytes hold ---------------------------------------------


def test_an_mp3_whose_xing_header_counts_one_frame() -> None:
    honest = vbr_mp3()
    data = with_xing_frames(honest, 1)
    declared = head(data).declared()
    assert declared is not None
    assert 0 < declared <= 1152 / 48_000  # one frame: about 0.02 s
    whole = reader(data)
    floor = whole.floor(len(data))
    assert floor == len(data) / MP3  # the file has no tags: all of it is frames
    finish = whole.finish()
    assert finish is not None
    assert finish >= floor  # finish() itself holds the claim to the floor
    settled = max(finish, floor)
    assert settled == len(data) / MP3
    assert settled > 100 * declared
    # The honest file is charged as it lasts: the floor is below it.
    assert reader(honest).finish() == pytest.approx(30.0, abs=1152 / 48_000)


#: A real file, the same made to claim next to nothing in its header (or last page),
#: and how long the file lasts.
LYING: dict[str, tuple[Callable[[], bytes], Callable[[bytes], bytes], float]] = {
    "mp3 xing counting 1 frame": (vbr_mp3, lambda data: with_xing_frames(data, 1), 30.0),
    "flac total of 1600 samples": (flac, lambda data: with_total(data, 1600), 10.0),
    "ogg last granule of 960": (opus_ogg, lambda data: with_last_granule(data, 960), 30.0),
    "webm duration of 1 ms": (opus_webm, lambda data: with_webm_duration(data, 1.0), 30.0),
    "mp4 mvhd of 1 tick": (aac_mp4, lambda data: with_mvhd_duration(data, 1), 30.0),
}


@pytest.mark.parametrize("name", LYING)
def test_finish_is_never_below_the_floor_for_a_compressed_container(name: str) -> None:
    make, lie, seconds = LYING[name]
    honest = make()
    data = lie(honest)
    whole = reader(data)
    floor = whole.floor(len(data))
    assert 1.0 < floor < seconds
    assert whole.finish() == floor  # the claim was lower: the bytes decide
    # The floor leaves the honest file alone.
    assert reader(honest).finish() == pytest.approx(seconds, abs=0.05)


def test_a_wav_hiding_audio_in_a_second_data_chunk() -> None:
    """finish() reads a WAV's first data chunk; the floor counts the one after it."""
    pcm = random.Random(5).randbytes(9 * 32_000)
    data = wav_declaring(16_000, 1.0, 1.0) + chunk(b"data", pcm)
    whole = reader(data)
    assert whole.finish() == 1.0
    settled = max(whole.finish() or 0.0, whole.floor(len(data)))
    assert settled == (len(data) - 44) / 32_000
    assert settled == pytest.approx(10.0, abs=0.001)


# The floor --------------------------------------------------------------------------------

#: A file, the byte rate its floor is at, and how many of its first bytes are not audio.
FLOORS: dict[str, tuple[Callable[[], bytes], int, Callable[[bytes], int]]] = {
    "wav 16 kHz mono 16-bit": (lambda: wave_file(16_000, 10.0), 32_000, lambda d: 44),
    "wav 48 kHz stereo 24-bit after junk": (
        lambda: extensible_wav(48_000, 7.3, 1000),
        288_000,
        lambda d: d.index(b"data") + 8,
    ),
    "rf64 16 kHz mono 16-bit": (lambda: rf64(16_000, 7.3), 32_000, lambda d: d.index(b"data") + 8),
    "wav 8 channels 192 kHz 32-bit": (lambda: pcm_wav(192_000, 8, 32), PCM_CAP, lambda d: 44),
    "wav declaring 16 channels at 384 kHz": (
        lambda: pcm_wav(384_000, 16, 32),
        PCM_CAP,
        lambda d: 44,
    ),
    "wav declaring a rate of 0": (lambda: pcm_wav(0, 1, 16), PCM_CAP, lambda d: 44),
    "wav of mp3 frames, 0 bits a sample": (
        lambda: pcm_wav(44_100, 2, 0, tag=0x55),
        PCM_CAP,
        lambda d: 44,
    ),
    "flac 16 kHz mono 16-bit": (flac, 32_000, flac_frames_at),
    "flac declaring 48 kHz stereo 24-bit": (
        lambda: with_streaminfo(flac(), 48_000, 2, 24),
        288_000,
        flac_frames_at,
    ),
    "flac declaring 8 channels at 655 kHz": (
        lambda: with_streaminfo(flac(), 655_350, 8, 32),
        PCM_CAP,
        flac_frames_at,
    ),
    "flac declaring a rate of 0": (
        lambda: with_streaminfo(flac(), 0, 1, 16),
        PCM_CAP,
        flac_frames_at,
    ),
    "mp3": (vbr_mp3, MP3, lambda d: 0),
    "mp3 after an id3v2 tag": (
        lambda: id3v2(4000) + mp3(16_000, 30.0, **BARE_MP3),
        MP3,
        lambda d: 4010,
    ),
    "mp3 after junk, found by its frames": (
        lambda: bytes(300) + mp3(16_000, 30.0, **BARE_MP3),
        MP3,
        lambda d: 0,
    ),
    "mp2 (layer II)": (lambda: encode("mp2", "mp2", 48_000, 7.3), MP2, lambda d: 0),
    "mpeg layer I": (lambda: mpeg_layer1(200), MP1, lambda d: 0),
    "ogg opus": (opus_ogg, OPUS, lambda d: 0),
    "ogg vorbis": (lambda: ogg_vorbis(44_100, 30.0), OPUS, lambda d: 0),
    "webm": (opus_webm, OPUS, lambda d: 0),
    "mp4": (aac_mp4, MP4, lambda d: 0),
    "m4a with its moov first": (faststart_m4a, MP4, lambda d: 0),
    "a pdf": (lambda: b"%PDF-1.7\n" + b"x" * 100_000, UNKNOWN, lambda d: 0),
    "random bytes": (lambda: random.Random(7).randbytes(100_000), UNKNOWN, lambda d: 0),
}


@pytest.mark.parametrize("name", FLOORS)
def test_the_floor_is_the_audio_bytes_over_the_codecs_top_rate(name: str) -> None:
    make, rate, lead = FLOORS[name]
    data = make()
    expected = (len(data) - lead(data)) / rate
    # Known from the head, as a reservation needs it, and the same at the end.
    assert head(data).floor(len(data)) == expected
    whole = reader(data)
    assert whole.floor(len(data)) == expected
    whole.finish()
    assert whole.floor(len(data)) == expected


def test_the_floor_before_the_container_is_known() -> None:
    assert DurationReader().floor(192_000) == 1.0
    assert reader(b"RIF").floor(384_000) == 2.0  # not yet sniffed
    assert DurationReader().floor(0) == 0.0
    # An ID3v2 tag longer than the head: until what follows it comes, all of it counts.
    data = id3v2(1_000_000) + mp3(16_000, 7.3, **BARE_MP3)
    assert head(data).floor(len(data)) == len(data) / UNKNOWN
    assert reader(data).floor(len(data)) == (len(data) - 1_000_010) / MP3


def test_a_tag_or_a_picture_before_the_audio_does_not_raise_the_floor() -> None:
    frames = mp3(16_000, 7.3, **BARE_MP3)
    tagged = id3v2(1_000_000) + frames  # a megabyte of cover art: 25 s at 320 kbit/s
    assert reader(tagged).floor(len(tagged)) == reader(frames).floor(len(frames))
    assert reader(tagged).finish() == pytest.approx(7.3, abs=0.05)
    plain = flac()
    pictured = flac_with_picture(plain, 500_000)  # 15.6 s at this FLAC's PCM rate
    # The blocks after the picture lie past the head: only they may count.
    plain_floor, metadata = reader(plain).floor(len(plain)), flac_frames_at(plain) - 42
    pictured_floor = reader(pictured).floor(len(pictured))
    assert plain_floor <= pictured_floor <= plain_floor + metadata / 32_000 + 1e-9
    assert reader(pictured).finish() == 10.0


# Nothing to read --------------------------------------------------------------------------


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_declares_nothing(data: bytes) -> None:
    hinted = DurationReader(filename="a.mp3", content_type="audio/mpeg")
    hinted.feed(data)
    for fed in (head(data), reader(data), hinted):
        assert fed.declared() is None
        floor = fed.floor(len(data))
        assert math.isfinite(floor)
        assert floor >= 0


@pytest.mark.parametrize(
    "data",
    [b"", b"\0", b"ID3", b"\xff\xfb\x90", b"%PDF-1.7\n" + b"x" * 5000, GARBAGE[-1]],
    ids=range(6),
)
def test_garbage_is_floored_as_unknown(data: bytes) -> None:
    fed = reader(data)
    assert fed.container is None
    assert fed.floor(len(data)) == len(data) / UNKNOWN
    assert fed.finish() is None  # and finishing finds nothing to change that
    assert fed.floor(len(data)) == len(data) / UNKNOWN


def test_cut_or_corrupted_heads_never_raise() -> None:
    rng = random.Random(11)
    for data in samples_of_each():
        for cut in [*range(0, 80, 3), *(rng.randrange(len(data)) for _ in range(20))]:
            fed = reader(data, cut)
            declared, floor = fed.declared(), fed.floor(len(data))
            assert declared is None or (math.isfinite(declared) and declared >= 0)
            assert math.isfinite(floor)
            assert floor >= 0
        for _ in range(60):
            broken = bytearray(data[:HEAD_BYTES])
            for _ in range(rng.randint(1, 8)):
                broken[rng.randrange(min(len(broken), 2000))] = rng.randrange(256)
            fed = reader(bytes(broken))
            declared, floor = fed.declared(), fed.floor(len(data))
            assert declared is None or (math.isfinite(declared) and declared >= 0)
            assert math.isfinite(floor)
            assert floor >= 0
