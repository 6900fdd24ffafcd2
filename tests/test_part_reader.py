"""The zero-copy part reader finds every part exactly, however the body is split on arrival."""

from __future__ import annotations

import asyncio
import random
import warnings

import pytest
from aiohttp import BodyPartReader, MultipartReader
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import parse_content_disposition
from multidict import CIMultiDict

from proxy.form.part_reader import (
    StreamingMultipartReader,
    StreamingPartReader,
    _partial_match_at_end,
)
from tests.helpers.forms import new_stream

BOUNDARY = "xYz-boundary"
DELIMITER = f"\r\n--{BOUNDARY}".encode()

# Bytes that look like the delimiter, or parts of it, without being it.
TRICKY = [
    b"",
    b"\r",
    b"\r\n",
    b"\r\n-",
    b"\r\n--",
    b"\r\n--xYz-bound",
    b"\r\n--xYz-boundar",
    b"--xYz-boundary",  # the boundary without its CRLF is plain data
    b"\r\r\n\r\n--xYz",
    b"\n--xYz-boundary",
    b"\r\n--xYz-boundarZ",
]


def body_of(parts: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"preamble is ignored\r\n")
    for name, value in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        if name == "file":
            out += b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n'.encode()
        out += b"\r\n" + value + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


async def parse(
    body: bytes, splits: list[int], reader_cls: type[MultipartReader], chunk: int
) -> list[tuple[str, bytes]]:
    stream = new_stream()

    async def feed() -> None:
        start = 0
        for end in [*splits, len(body)]:
            stream.feed_data(body[start:end])
            start = end
            await asyncio.sleep(0)  # let the reader see each piece on its own
        stream.feed_eof()

    feeding = asyncio.create_task(feed())
    headers = CIMultiDict({"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    reader = reader_cls(headers, stream)
    parts = []
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        value = bytearray()
        while piece := await part.read_chunk(chunk):
            assert len(piece) <= chunk
            value += piece
        parts.append((part.name or "", bytes(value)))
    await feeding
    return parts


def random_parts(rng: random.Random) -> list[tuple[str, bytes]]:
    def value() -> bytes:
        while True:
            pieces = [rng.choice(TRICKY) + rng.randbytes(rng.randrange(0, 300)) for _ in range(5)]
            candidate = b"".join(pieces) + rng.choice(TRICKY)
            # A valid body never holds its own delimiter inside a part.
            if DELIMITER not in b"\r\n" + candidate:
                return candidate

    return [("model", b"whisper-1"), ("file", value()), ("prompt", value()), ("file", value())]


@pytest.mark.parametrize("seed", range(200))
async def test_matches_the_original_parts_and_aiohttp(seed: int) -> None:
    rng = random.Random(seed)
    parts = random_parts(rng)
    body = body_of(parts)
    splits = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randrange(0, 40))))
    chunk = rng.choice([64, 100, 4096, 1 << 20])
    ours = await parse(body, splits, StreamingMultipartReader, chunk)
    assert ours == parts
    assert ours == await parse(body, splits, MultipartReader, max(chunk, 64))


@pytest.mark.parametrize("split", range(1, 60))
async def test_delimiter_split_at_every_position(split: int) -> None:
    parts = [("file", b"audio\r\n--xYz-boundarQ" + b"\r" * 20), ("model", b"whisper-1")]
    body = body_of(parts)
    at = body.index(DELIMITER, body.index(b"audio")) - 30 + split
    assert await parse(body, [at], StreamingMultipartReader, 1 << 20) == parts


@pytest.mark.parametrize("byte_at_a_time", [True, False])
async def test_empty_file_part(byte_at_a_time: bool) -> None:
    parts = [("file", b""), ("model", b"whisper-1"), ("file", b"")]
    body = body_of(parts)
    splits = list(range(1, len(body))) if byte_at_a_time else []
    assert await parse(body, splits, StreamingMultipartReader, 1 << 20) == parts


async def test_unsplit_pieces_pass_through_as_the_same_objects() -> None:
    stream = new_stream()
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"\r\n\r\nfirst'.encode()
    stream.feed_data(head)
    headers = CIMultiDict({"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    part = await StreamingMultipartReader(headers, stream).next()
    assert isinstance(part, BodyPartReader)
    assert await part.read_chunk(1 << 20) == b"first"
    piece = b"A" * 100_000
    stream.feed_data(piece)
    assert await part.read_chunk(1 << 20) is piece


async def test_body_ending_inside_a_part_is_an_error() -> None:
    body = body_of([("file", b"audio")])
    cut = body.index(b"audio") + 3
    with pytest.raises(ValueError, match="ended inside a part"):
        await parse(body[:cut], [], StreamingMultipartReader, 1 << 20)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"abc", 0),
        (b"abc\r", 1),
        (b"abc\r\n", 2),
        (b"abc\r\n--xYz-boundar", len(DELIMITER) - 1),
        (b"abc\r\n--xYz-boundary", 0),  # a whole delimiter is found, not held back
        (b"\r\n-\r", 1),
        (b"\r", 1),
    ],
)
def test_partial_match_at_end(data: bytes, expected: int) -> None:
    assert _partial_match_at_end(data, DELIMITER) == expected


DISPOSITIONS = [
    'form-data; name="model"',
    'form-data; name="file"; filename="a.wav"',
    'form-data;name="file";filename="r\u00e9union Q3.wav"',
    'form-data; name="file"; filename="take %222%22.mp3"',
    'form-data; name="file"; filename="/etc/passwd"',
    'form-data; name="file"; filename="..\\\\secret.wav"',
    'form-data; name="file"; filename="a\\"b.wav"',
    "form-data; name=\"file\"; filename*=UTF-8''r%C3%A9union.wav",
    'form-data; name="file"; filename="x.wav"; filename*=UTF-8\'\'y.wav',
    'form-data; name="a"; name="b"',
    'form-data; NAME="upper"',
    "form-data; name=token",
    'form-data; name = "spaced"',
    'form-data; name=""',
    'form-data; name="a;b"',
    'form-data; name="trailing";',
    'form-data; name="x "  ',
    'attachment; name="other"',
    "form-data",
    "",
]


@pytest.mark.parametrize("header", DISPOSITIONS)
async def test_name_and_filename_agree_with_aiohttp(header: str) -> None:
    async def read(reader_cls: type[MultipartReader]) -> tuple[str | None, str | None]:
        stream = new_stream()
        stream.feed_data(
            f"--{BOUNDARY}\r\nContent-Disposition: {header}\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()
        )
        stream.feed_eof()
        headers = CIMultiDict({"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        part = await reader_cls(headers, stream).next()
        assert isinstance(part, BodyPartReader)
        return part.name, part.filename

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # aiohttp warns about the malformed ones
        assert await read(StreamingMultipartReader) == await read(MultipartReader)


@pytest.mark.parametrize("header", DISPOSITIONS)
async def test_disposition_params_are_aiohttps(header: str) -> None:
    """The fast parse of plain headers gives exactly what aiohttp's full parser gives."""
    part = StreamingPartReader(
        BOUNDARY.encode(), CIMultiDict({"Content-Disposition": header}), new_stream()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert part.disposition_params == parse_content_disposition(header or None)[1]


@pytest.mark.parametrize(
    "names",
    [
        ["_charset_", "prompt", "file"],
        ["prompt", "_charset_", "file"],
        ["model", "prompt", "file"],
        ["_charset_", "_charset_", "prompt"],
    ],
)
async def test_charset_parts_are_read_as_aiohttp_reads_them(names: list[str]) -> None:
    values = {"_charset_": b"iso-8859-1", "prompt": "caf\u00e9".encode("latin-1"), "file": b"RIFF"}
    body = body_of([(name, values.get(name, b"whisper-1")) for name in names])

    async def read(reader_cls: type[MultipartReader]) -> list[tuple[str | None, str, bytes]]:
        stream = new_stream()
        stream.feed_data(body)
        stream.feed_eof()
        headers = CIMultiDict({"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        reader = reader_cls(headers, stream)
        seen = []
        try:
            while (part := await reader.next()) is not None:
                assert isinstance(part, BodyPartReader)
                seen.append((part.name, part.get_charset("utf-8"), await part.read()))
        except (ValueError, HttpProcessingError) as exc:  # the same failure, at the same place
            seen.append((None, type(exc).__name__, str(exc).encode()))
        return seen

    assert await read(StreamingMultipartReader) == await read(MultipartReader)
