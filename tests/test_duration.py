"""DurationReader: an upload's duration, read from its container as the bytes pass.

Every file is made here from a known number of samples: WAVs by hand or with the
wave module, the rest with PyAV (an optional extra: those tests skip without it)
and Ogg Vorbis with sox. Each is fed whole and in many chunkings, down to single
bytes, since a relay splits an upload anywhere.
"""

from __future__ import annotations

import functools
import io
import random
import shutil
import struct
import subprocess
import tracemalloc
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.audio.duration import DurationReader
from proxy.audio.duration.buffers import HEAD_BYTES, TAIL_BYTES
from proxy.audio.duration.webm import CLUSTER_ID, EBML_ID

#: How far off a duration may be, codecs' priming and padding included.
TOLERANCE = 0.05

Step = int | str


def pieces(data: bytes, step: Step) -> Iterator[bytes]:
    """``data`` whole, in pieces of ``step`` bytes, or in pieces of random sizes (seeded)."""
    if step == "whole":
        yield data
        return
    rng = random.Random(len(data))
    i = 0
    while i < len(data):
        size = step if isinstance(step, int) else rng.choice((1, 2, 5, rng.randint(1, 70_000)))
        yield data[i : i + size]
        i += size


def steps(data: bytes) -> list[Step]:
    """The chunkings a file is fed in: the finest only for the small ones, to stay quick."""
    fine: list[Step] = [7] if len(data) < 600_000 else []
    return ["whole", 4096, 65536, "random", *fine, *([1] if len(data) < 80_000 else [])]


def read(data: bytes, step: Step = "whole", **hints: str) -> DurationReader:
    reader = DurationReader(**hints)
    for piece in pieces(data, step):
        reader.feed(piece)
    return reader


def measure(data: bytes, step: Step = "whole", **hints: str) -> float | None:
    return read(data, step, **hints).finish()


def assert_lasts(data: bytes, seconds: float, container: str, **hints: str) -> None:
    """``data`` measures ``seconds`` and sniffs as ``container``, however it is fed."""
    for step in steps(data):
        reader = read(data, step, **hints)
        assert reader.finish() == pytest.approx(seconds, abs=TOLERANCE), f"fed in steps of {step}"
        assert reader.container == container


# Making audio -----------------------------------------------------------------------------


def tone(rate: int, seconds: float) -> Any:
    """A tone with some noise: ``round(rate * seconds)`` mono int16 samples."""
    np = pytest.importorskip("numpy")
    count = round(rate * seconds)
    t = np.arange(count) / rate
    noise = np.random.default_rng(count).standard_normal(count)
    return ((0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * noise) * 32767).astype(np.int16)


def mux(
    target: io.BytesIO | str,
    fmt: str,
    codec: str,
    rate: int,
    seconds: float,
    options: dict[str, str],
    bit_rate: int = 0,
    vbr: bool = False,
) -> None:
    av = pytest.importorskip("av")
    samples = tone(rate, seconds)
    with av.open(target, "w", format=fmt, options=options) as container:
        stream: Any = container.add_stream(codec, rate=rate, layout="mono")
        if bit_rate:
            stream.bit_rate = bit_rate
        if vbr:  # what -q:a 4 sets
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = 4 * 118
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for start in range(0, len(samples), 4000):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + 4000], format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    container.mux(packet)
        for resampled in resampler.resample(None):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@functools.cache
def encode(
    fmt: str,
    codec: str,
    rate: int,
    seconds: float,
    options: tuple[tuple[str, str], ...] = (),
    bit_rate: int = 0,
    vbr: bool = False,
) -> bytes:
    """``seconds`` of tone at ``rate`` encoded with PyAV, kept for the other tests."""
    out = io.BytesIO()
    mux(out, fmt, codec, rate, seconds, dict(options), bit_rate, vbr)
    return out.getvalue()


def mp3(rate: int, seconds: float, **options: str) -> bytes:
    return encode("mp3", "libmp3lame", rate, seconds, tuple(options.items()))


#: An MP3 with no tags and no Xing header: nothing but frames.
BARE_MP3 = {"write_xing": "0", "id3v2_version": "0"}


def wave_file(rate: int, seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(random.Random(rate).randbytes(round(rate * seconds) * 2))
    return out.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    """A RIFF chunk, padded to an even length."""
    return kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def id3v2(size: int) -> bytes:
    """An ID3v2.4 tag of ``size`` bytes of frames: a title, then padding."""
    title = b"TIT2" + struct.pack(">I", 6) + b"\0\0\x03tune"
    synchsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + synchsafe + title + b"\0" * (size - len(title))


def sox(*args: str) -> bytes:
    if shutil.which("sox") is None:
        pytest.skip("needs sox")
    return subprocess.run(["sox", *args], capture_output=True, check=True).stdout


# WAV --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "seconds"), [(16_000, 2.0), (24_000, 7.3), (48_000, 2.0), (16_000, 61.0)]
)
def test_wav(rate: int, seconds: float) -> None:
    assert_lasts(wave_file(rate, seconds), seconds, "wav")


def test_wav_with_chunks_before_data_and_extensible_fmt() -> None:
    rate, seconds = 48_000, 7.3
    data = random.Random(0).randbytes(round(rate * seconds) * 2 * 3)  # stereo, 24-bit
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 2, rate, rate * 6, 6, 24, 22, 24, 3)
    fmt += bytes.fromhex("0100000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_PCM
    body = b"WAVE" + chunk(b"fmt ", fmt) + chunk(b"LIST", b"INFOISFT\x05\0\0\0tool\0")
    body += chunk(b"junk", b"\0" * 70_001) + chunk(b"data", data)
    assert_lasts(b"RIFF" + struct.pack("<I", len(body)) + body, seconds, "wav")


def test_a_wav_that_lies_lasts_as_long_as_its_data() -> None:
    truthful = wave_file(16_000, 2.0)
    lying = bytearray(truthful)
    struct.pack_into("<I", lying, 40, 3600 * 16_000 * 2)  # the data chunk claims an hour
    struct.pack_into("<I", lying, 4, 36 + 3600 * 16_000 * 2)
    assert_lasts(bytes(lying), 2.0, "wav")


@pytest.mark.parametrize("declared", [0, 0xFFFFFFFF])
def test_a_streamed_wav_lasts_as_long_as_its_data(declared: int) -> None:
    streamed = bytearray(wave_file(24_000, 7.3))
    struct.pack_into("<I", streamed, 40, declared)
    struct.pack_into("<I", streamed, 4, declared)
    assert_lasts(bytes(streamed), 7.3, "wav")


def test_rf64() -> None:
    rate, seconds = 16_000, 7.3
    data = random.Random(1).randbytes(round(rate * seconds) * 2)
    ds64 = struct.pack("<QQQI", 0, len(data), len(data) // 2, 0)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = chunk(b"ds64", ds64) + chunk(b"fmt ", fmt) + b"data\xff\xff\xff\xff" + data
    assert_lasts(b"RF64\xff\xff\xff\xffWAVE" + body, seconds, "wav")


# MP3 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "seconds"), [(16_000, 2.0), (24_000, 7.3), (48_000, 7.3), (24_000, 61.0)]
)
def test_mp3_with_a_lame_info_header(rate: int, seconds: float) -> None:
    data = mp3(rate, seconds)
    assert b"Info" in data[:200]
    assert_lasts(data, seconds, "mp3")


@pytest.mark.parametrize(("rate", "seconds"), [(16_000, 2.0), (24_000, 7.3), (48_000, 61.0)])
def test_vbr_mp3(rate: int, seconds: float) -> None:
    data = encode("mp3", "libmp3lame", rate, seconds, vbr=True)
    assert b"Xing" in data[:200]
    assert_lasts(data, seconds, "mp3")


@pytest.mark.parametrize(("rate", "seconds"), [(16_000, 2.0), (24_000, 7.3), (48_000, 7.3)])
def test_cbr_mp3_without_a_header_is_timed_by_its_bytes(rate: int, seconds: float) -> None:
    data = mp3(rate, seconds, **BARE_MP3)
    # Frame sync, then the version (MPEG-1 at 32 kHz and up, MPEG-2 below), layer III, no CRC.
    assert data[:2] == (b"\xff\xfb" if rate >= 32_000 else b"\xff\xf3")
    assert_lasts(data, seconds, "mp3")


def test_mp3_between_id3v2_and_id3v1_and_ape_tags() -> None:
    frames = mp3(24_000, 7.3, id3v2_version="3", write_xing="0")
    assert frames[:3] == b"ID3"
    id3v1 = b"TAG" + b"tune".ljust(30, b"\0") + bytes(95)
    assert_lasts(frames + id3v1, 7.3, "mp3")
    cover = random.Random(2).randbytes(20_000)  # 5 s of these frames, were it counted
    items = struct.pack("<II", len(cover), 2) + b"Cover Art (Front)\0" + cover
    size = len(items) + 32
    ape = b"APETAGEX" + struct.pack("<IIII", 2000, size, 1, 0xA0000000) + bytes(8) + items
    ape += b"APETAGEX" + struct.pack("<IIII", 2000, size, 1, 0x80000000) + bytes(8)
    assert_lasts(frames + ape + id3v1, 7.3, "mp3")


def test_an_id3v2_tag_longer_than_the_head_and_the_tail() -> None:
    cover = id3v2(1_000_000)
    assert_lasts(cover + mp3(16_000, 7.3, **BARE_MP3), 7.3, "mp3")
    assert_lasts(cover + mp3(16_000, 7.3), 7.3, "mp3")


def test_mp3_after_junk() -> None:
    data = bytes(300) + mp3(24_000, 7.3)
    assert measure(data) == pytest.approx(7.3, abs=TOLERANCE)
    assert measure(data, filename="talk.mp3") == pytest.approx(7.3, abs=TOLERANCE)
    assert measure(data, content_type="audio/mpeg; charset=binary") == pytest.approx(
        7.3, abs=TOLERANCE
    )


def test_mp2() -> None:
    assert_lasts(encode("mp2", "mp2", 48_000, 7.3), 7.3, "mp3")


def test_a_lying_xing_header_is_held_to_the_bytes_sent() -> None:
    data = bytearray(mp3(16_000, 7.3))
    at = data.index(b"Info") + 8
    struct.pack_into(">I", data, at, 10_000_000)  # ten million frames: about 100 hours
    seconds = measure(bytes(data))
    assert seconds is not None
    assert 7.3 < seconds <= len(data) * 8 / 8000


def test_an_mp3_cut_short_lasts_as_long_as_what_came() -> None:
    data = encode("mp3", "libmp3lame", 24_000, 61.0, vbr=True)
    assert measure(data[: len(data) // 2]) == pytest.approx(30.5, abs=1.0)


# Ogg --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "seconds"), [(16_000, 2.0), (48_000, 7.3), (24_000, 61.0)])
def test_ogg_opus(rate: int, seconds: float) -> None:
    assert_lasts(encode("ogg", "libopus", rate, seconds), seconds, "ogg")


def test_ogg_flac() -> None:
    assert_lasts(encode("ogg", "flac", 16_000, 7.3), 7.3, "ogg")


@pytest.mark.parametrize(("rate", "seconds"), [(16_000, 7.3), (48_000, 2.0)])
def test_ogg_vorbis(rate: int, seconds: float) -> None:
    data = sox(
        "-n", "-r", str(rate), "-c", "1", "-t", "ogg", "-", "synth", str(seconds), "sine", "440"
    )
    assert b"\x01vorbis" in data[:100]
    assert_lasts(data, seconds, "ogg")


def test_an_ogg_cut_mid_page_lasts_to_its_last_whole_page() -> None:
    data = encode("ogg", "libopus", 48_000, 61.0)
    assert measure(data[: len(data) // 2 + 101]) == pytest.approx(30.5, abs=1.5)


# WebM -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "seconds"), [(48_000, 2.0), (16_000, 7.3), (24_000, 61.0)])
def test_webm_with_a_duration(rate: int, seconds: float) -> None:
    data = encode("webm", "libopus", rate, seconds)
    assert b"\x44\x89" in data[:1000]
    assert_lasts(data, seconds, "webm")


def test_webm_without_a_duration() -> None:
    data = encode("webm", "libopus", 48_000, 7.3, (("live", "1"),))
    assert b"\x44\x89" not in data[:1000]
    assert_lasts(data, 7.3, "webm")


def test_webm_whose_one_cluster_outgrows_the_tail() -> None:
    options = (
        ("live", "1"),
        ("cluster_size_limit", "100000000"),
        ("cluster_time_limit", "100000000"),
    )
    data = encode("webm", "libopus", 48_000, 30.0, options, bit_rate=256_000)
    assert data.count(CLUSTER_ID) == 1
    assert len(data) > 2 * TAIL_BYTES
    assert_lasts(data, 30.0, "webm")


def element(ident: int, body: bytes = b"", *, unknown: bool = False) -> bytes:
    """An EBML element, its size 4 bytes wide or unknown."""
    size = (
        b"\x01\xff\xff\xff\xff\xff\xff\xff"
        if unknown
        else (0x10000000 | len(body)).to_bytes(4, "big")
    )
    return ident.to_bytes((ident.bit_length() + 7) // 8, "big") + size + body


def recording(clusters: int, blocks: int, *, codec: bytes = b"A_OPUS", payload: int = 60) -> bytes:
    """A WebM as MediaRecorder streams one, of ``clusters`` clusters of ``blocks`` packets.

    Its Segment and Clusters have no size and its Info no Duration; each packet is 20 ms.
    """
    rng = random.Random(clusters * blocks)
    track = element(0xD7, b"\x01") + element(0x83, b"\x02") + element(0x86, codec)
    out = element(0x1A45DFA3, element(0x4282, b"webm")) + element(0x18538067, unknown=True)
    out += element(0x1549A966, element(0x2AD7B1, (1_000_000).to_bytes(3, "big")))
    out += element(0x1654AE6B, element(0xAE, track))
    for cluster in range(clusters):
        body = element(0xE7, (cluster * blocks * 20).to_bytes(4, "big"))
        for block in range(blocks):
            packet = b"\xf8" + rng.randbytes(payload)  # TOC: CELT fullband, one 20 ms frame
            body += element(0xA3, b"\x81" + struct.pack(">hB", block * 20, 0x80) + packet)
        out += element(0x1F43B675, body, unknown=True)
    return out


def test_a_mediarecorder_webm_of_unknown_sizes() -> None:
    assert_lasts(recording(3, 50), 3.0, "webm")
    assert_lasts(recording(1, 7), 0.14, "webm")


def test_a_mediarecorder_webm_whose_cluster_outgrows_the_tail() -> None:
    data = recording(2, 1500, payload=300)
    assert len(data) // 2 > 2 * TAIL_BYTES
    assert_lasts(data, 60.0, "webm")


def test_a_cluster_id_split_where_the_tail_lets_go_of_it() -> None:
    data = recording(2, 1500, payload=300)
    second = data.rindex(CLUSTER_ID)
    for split in range(second - 12, second + 13):
        reader = DurationReader()
        reader.feed(data[:split])  # longer than the tail: the tail's first piece ends here
        for at in range(split, len(data), 65536):
            reader.feed(data[at : at + 65536])
        assert reader.finish() == pytest.approx(60.0, abs=TOLERANCE), split


def test_a_webm_ending_in_cues_and_a_block_group() -> None:
    data = recording(2, 10)
    last = element(0xA1, b"\x81" + struct.pack(">hB", 200, 0) + b"\xf8\0") + element(0x9B, b"\x07")
    data += element(0xA0, last)
    cues = element(0x1C53BB6B, element(0xBB, element(0xB3, b"\0") + element(0xB7, b"\xf7\x81")))
    assert_lasts(data + cues, 0.407, "webm")


def test_a_webm_of_another_codec_takes_its_blocks_rhythm() -> None:
    assert_lasts(recording(2, 25, codec=b"A_VORBIS"), 1.0, "webm")


def test_a_webm_cut_short_lasts_as_long_as_what_came() -> None:
    data = encode("webm", "libopus", 48_000, 61.0)
    assert measure(data[: len(data) // 2]) == pytest.approx(30.5, abs=1.5)


# FLAC -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "seconds"), [(16_000, 2.0), (24_000, 7.3), (16_000, 61.0)])
def test_flac(rate: int, seconds: float) -> None:
    assert_lasts(encode("flac", "flac", rate, seconds), seconds, "flac")


def with_total(flac: bytes, total: int) -> bytes:
    """``flac`` with STREAMINFO's count of samples set to ``total``."""
    data = bytearray(flac)
    packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1) | total
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def test_flac_after_an_id3v2_tag() -> None:
    assert_lasts(id3v2(4000) + encode("flac", "flac", 16_000, 7.3), 7.3, "flac")


def test_flac_streamed_with_no_count_of_samples() -> None:
    assert_lasts(with_total(encode("flac", "flac", 24_000, 7.3), 0), 7.3, "flac")


def test_flac_that_lies_or_is_cut_lasts_to_its_last_frame() -> None:
    data = encode("flac", "flac", 16_000, 61.0)
    assert_lasts(with_total(data, 3600 * 16_000), 61.0, "flac")
    assert measure(data[: len(data) // 2]) == pytest.approx(30.5, abs=0.5)


# MP4 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "rate", "seconds"), [("mp4", 16_000, 2.0), ("ipod", 24_000, 7.3), ("mp4", 48_000, 61.0)]
)
def test_mp4_with_moov_after_mdat(fmt: str, rate: int, seconds: float) -> None:
    data = encode(fmt, "aac", rate, seconds)
    assert data.index(b"mdat") < data.index(b"moov")
    assert_lasts(data, seconds, "mp4")


def test_mp4_with_moov_first(tmp_path: Path) -> None:
    target = tmp_path / "faststart.m4a"
    mux(str(target), "ipod", "aac", 24_000, 7.3, {"movflags": "faststart"})
    data = target.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")
    assert_lasts(data, 7.3, "mp4")


def test_mp4_with_a_64_bit_mdat() -> None:
    data = encode("mp4", "aac", 16_000, 7.3)
    at = data.index(b"mdat") - 4
    size = int.from_bytes(data[at : at + 4], "big")
    assert_lasts(
        data[:at] + struct.pack(">I4sQ", 1, b"mdat", size + 8) + data[at + 8 :], 7.3, "mp4"
    )


def test_an_mp4_without_its_moov_has_no_duration() -> None:
    data = encode("mp4", "aac", 16_000, 7.3)
    assert measure(data[: data.index(b"moov") - 4]) is None
    at = data.index(b"mdat") - 4
    assert measure(data[:at] + b"\0\0\0\0" + data[at + 4 :]) is None  # an mdat to the end


# Garbage ----------------------------------------------------------------------------------

GARBAGE = [
    b"",
    b"\0",
    b"ID3",
    b"ID3\x04\0\0\0\0\0\x10",
    b"RIFF",
    b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0",
    b"RIFF\x24\0\0\0WAVEdata\0\0\0\0" + bytes(100),
    b"OggS" + bytes(60),
    b"fLaC" + bytes(60),
    b"fLaC\0\0\0\x22" + bytes(34),
    EBML_ID + bytes(60),
    b"\0\0\0\x18ftypisom" + bytes(100),
    b"\xff\xfb\x90",
    b"%PDF-1.7\n" + b"x" * 5000,
    random.Random(7).randbytes(100_000),
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_has_no_duration(data: bytes) -> None:
    for step in ("whole", 1, "random"):
        assert measure(data, step) is None
    assert measure(data, filename="a.mp3", content_type="audio/mpeg") is None


def samples_of_each() -> list[bytes]:
    return [
        wave_file(16_000, 2.0),
        mp3(16_000, 2.0),
        encode("mp3", "libmp3lame", 16_000, 2.0, vbr=True),
        encode("ogg", "libopus", 48_000, 2.0),
        encode("webm", "libopus", 48_000, 2.0),
        recording(2, 20),
        encode("flac", "flac", 16_000, 2.0),
        encode("mp4", "aac", 16_000, 2.0),
    ]


@pytest.mark.parametrize(
    ("index", "container"),
    list(enumerate(["wav", "mp3", "mp3", "ogg", "webm", "webm", "flac", "mp4"])),
)
def test_the_container_is_known_from_the_first_bytes(index: int, container: str) -> None:
    reader = DurationReader()
    for piece in pieces(samples_of_each()[index][:200], 1):
        reader.feed(piece)
    assert reader.container == container


#: The shortest header that tells a length: FLAC's magic and STREAMINFO block (4 + 4 + 34
#: bytes). A file cut before it has no length to tell, whatever its container.
SHORTEST_HEADER = 42


def test_cut_or_corrupted_files_never_raise() -> None:
    """A damaged file measures the same however a relay splits it (fed whole is the
    reference), a cut one never more than the whole file."""
    rng = random.Random(3)
    for data in samples_of_each():
        whole = measure(data)
        assert whole is not None
        cuts: list[tuple[int, Step]] = [(cut, 3) for cut in range(80)]
        cuts += [(rng.randrange(len(data)), "random") for _ in range(40)]
        for cut, step in cuts:
            expected = measure(data[:cut])
            assert measure(data[:cut], step) == expected, (cut, step)
            if cut < SHORTEST_HEADER:
                assert expected is None, cut
            elif expected is not None:
                assert expected <= whole + TOLERANCE, cut
        for _ in range(150):
            broken = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                where = rng.randrange(min(len(broken), 2000) if rng.random() < 0.7 else len(broken))
                broken[where] = rng.randrange(256)
            assert measure(bytes(broken), "random") == measure(bytes(broken))


# Cost -------------------------------------------------------------------------------------


def test_a_long_upload_keeps_only_its_head_and_tail() -> None:
    single = mp3(48_000, 7.3, **BARE_MP3)
    blob = single * (1024 * 1024 // len(single) + 1)
    blob = blob[: len(blob) // len(single) * len(single)]  # whole files, one after another
    per_file = measure(single)
    assert per_file is not None
    view, reader, size = memoryview(blob), DurationReader(), 0
    tracemalloc.start()
    try:
        while size < 64 * 1024 * 1024:
            for at in range(0, len(view), 65536):
                piece = view[at : at + 65536]
                reader.feed(piece)  # a memoryview: the reader must copy what it keeps
                size += len(piece)
            assert reader._tail_bytes <= TAIL_BYTES + 65536
            assert len(reader._head) <= HEAD_BYTES
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
    copies = size // len(single)
    # Counted by bytes, the copies' frames add up: only one copy's priming is taken off.
    assert reader.finish() == pytest.approx(copies * per_file, rel=0.01)


def test_a_buffer_reused_by_the_caller() -> None:
    data, buffer, reader = wave_file(16_000, 7.3), bytearray(4096), DurationReader()
    for at in range(0, len(data), 4096):
        piece = data[at : at + 4096]
        buffer[: len(piece)] = piece
        reader.feed(memoryview(buffer)[: len(piece)])
        reader.feed(bytearray())
    buffer[:] = bytes(4096)
    assert reader.finish() == pytest.approx(7.3, abs=TOLERANCE)
