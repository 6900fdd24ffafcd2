"""The sans-IO form parser finds every part exactly, however the body is split as it is fed.

aiohttp's own ``MultipartReader`` is the reference: the same body gives the
same parts (names, filenames, bytes), whether it is fed whole, in random
pieces or a byte at a time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from aiohttp import BodyPartReader, MultipartReader
from aiohttp.multipart import parse_content_disposition
from multidict import CIMultiDict

from proxy.errors import MalformedBodyError
from proxy.form.parser import (
    FormParser,
    PartHead,
    Signal,
    _partial_match_at_end,
    disposition_params,
    form_boundary,
)
from tests.helpers.forms import new_stream

# aiohttp warns of the malformed Content-Disposition headers, then reads them its way.
pytestmark = [
    pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionHeader"),
    pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionParam"),
]

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


def events_of(body: bytes, splits: Sequence[int] = (), boundary: str = BOUNDARY) -> list[object]:
    """Every event the parser gives for ``body`` fed in the pieces ``splits`` makes,
    pieces of a part's body joined (NEED_DATA left out)."""
    parser = FormParser(boundary.encode())
    pieces = [body[a:b] for a, b in zip([0, *splits], [*splits, len(body)], strict=True)]
    events: list[object] = []
    while True:
        event = parser.next_event()
        if event is Signal.NEED_DATA:
            if pieces:
                parser.feed(pieces.pop(0))
            else:
                parser.feed_eof()
            continue
        if isinstance(event, bytes) and events and isinstance(events[-1], bytes):
            events[-1] += event
        else:
            events.append(event)
        if event is Signal.FORM_END:
            return events


def parts_of(events: list[object]) -> list[tuple[str, bytes]]:
    """(name, body) of each part in ``events``."""
    parts: list[tuple[str, bytes]] = []
    for event in events:
        if isinstance(event, PartHead):
            parts.append((event.name or "", b""))
        elif isinstance(event, bytes):
            parts[-1] = (parts[-1][0], parts[-1][1] + event)
    return parts


async def aiohttp_parts(body: bytes) -> list[tuple[str, bytes]]:
    stream = new_stream()
    stream.feed_data(body)
    stream.feed_eof()
    headers = CIMultiDict({"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    reader = MultipartReader(headers, stream)
    parts = []
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        parts.append((part.name or "", bytes(await part.read())))
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
    assert parts_of(events_of(body, splits)) == parts
    assert parts_of(events_of(body)) == parts
    assert await aiohttp_parts(body) == parts


@pytest.mark.parametrize("split", range(1, 60))
def test_delimiter_split_at_every_position(split: int) -> None:
    parts = [("file", b"audio\r\n--xYz-boundarQ" + b"\r" * 20), ("model", b"whisper-1")]
    body = body_of(parts)
    at = body.index(DELIMITER, body.index(b"audio")) - 30 + split
    assert parts_of(events_of(body, [at])) == parts


@pytest.mark.parametrize("byte_at_a_time", [True, False])
def test_empty_file_part(byte_at_a_time: bool) -> None:
    parts = [("file", b""), ("model", b"whisper-1"), ("file", b"")]
    body = body_of(parts)
    splits = list(range(1, len(body))) if byte_at_a_time else []
    assert parts_of(events_of(body, splits)) == parts


def test_the_events_of_a_form_in_order() -> None:
    events = events_of(body_of([("model", b"whisper-1"), ("file", b"")]))
    kinds = [type(e).__name__ if not isinstance(e, Signal) else e.name for e in events]
    assert kinds == ["PartHead", "bytes", "PART_END", "PartHead", "PART_END", "FORM_END"]


def test_unsplit_pieces_pass_through_as_the_same_objects() -> None:
    parser = FormParser(BOUNDARY.encode())
    parser.feed(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"\r\n\r\n'.encode())
    assert isinstance(parser.next_event(), PartHead)
    piece = b"A" * 100_000
    parser.feed(piece)
    assert parser.next_event() is piece
    assert parser.next_event() is Signal.NEED_DATA
    # A piece that ends as the delimiter could begin is passed on less that end.
    parser.feed(b"B" * 10 + b"\r\n--xYz")
    assert parser.next_event() == b"B" * 10
    parser.feed(b"-boundary--\r\n")
    assert parser.next_event() is Signal.PART_END
    assert parser.next_event() is Signal.FORM_END


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (body_of([("file", b"audio")]).partition(b"aud")[0] + b"aud", "ended inside a part"),
        (b"no boundary here\r\n", "does not begin with its multipart boundary"),
        (body_of([("model", b"x")]).replace(b"--\r\n", b"--x\r\n"), "followed by something"),
        (f"--{BOUNDARY}\r\nNo colon\r\n\r\nx\r\n".encode(), "headers are malformed"),
        (f"--{BOUNDARY}\r\nX: {'p' * 8190}\r\n\r\nx\r\n".encode(), "longer than 8190"),
        (f"--{BOUNDARY}\r\n".encode() + b"X: y\r\n" * 129 + b"\r\nx\r\n", "more than 128 header"),
    ],
    ids=["cut", "no boundary", "after the boundary", "no colon", "long line", "many headers"],
)
def test_broken_bodies_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(MalformedBodyError, match=message):
        events_of(body)


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
    assert _partial_match_at_end(data, DELIMITER, 0) == expected
    assert _partial_match_at_end(b"xx" + data, DELIMITER, 2) == expected


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
    body = f"--{BOUNDARY}\r\nContent-Disposition: {header}\r\n\r\nx\r\n--{BOUNDARY}--\r\n"
    (head, *_) = events_of(body.encode())
    stream = new_stream()
    stream.feed_data(body.encode())
    stream.feed_eof()
    headers = CIMultiDict({"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    part = await MultipartReader(headers, stream).next()
    assert isinstance(head, PartHead)
    assert isinstance(part, BodyPartReader)
    assert (head.name, head.filename) == (part.name, part.filename)


@pytest.mark.parametrize("header", DISPOSITIONS)
def test_disposition_params_are_aiohttps(header: str) -> None:
    """The fast parse of plain headers gives exactly what aiohttp's full parser gives."""
    assert disposition_params(header) == parse_content_disposition(header or None)[1]


@pytest.mark.parametrize(
    ("names", "prompt_charset"),
    [
        (["_charset_", "prompt", "file"], "iso-8859-1"),
        (["prompt", "_charset_", "file"], "utf-8"),  # it sets the charset of what follows
        (["model", "prompt", "file"], "utf-8"),
        (["_charset_", "_charset_", "prompt"], "iso-8859-1"),
    ],
)
def test_a_charset_part_sets_the_default_charset(names: list[str], prompt_charset: str) -> None:
    """RFC 7578 section 4.6: a ``_charset_`` part names the charset of the text parts
    after it that name none of their own; it is not a part of the form itself."""
    values = {"_charset_": b" iso-8859-1 ", "prompt": "caf\u00e9".encode("latin-1")}
    events = events_of(body_of([(name, values.get(name, b"whisper-1")) for name in names]))
    heads = [e for e in events if isinstance(e, PartHead)]
    assert [h.name for h in heads] == [n for n in names if n != "_charset_"]
    (prompt,) = [h for h in heads if h.name == "prompt"]
    assert prompt.charset == prompt_charset


@pytest.mark.parametrize("value", [b"", b"  "])
def test_an_empty_charset_part_names_no_charset(value: bytes) -> None:
    body = body_of([("_charset_", value), ("prompt", b"x")])
    (head,) = [e for e in events_of(body) if isinstance(e, PartHead)]
    assert head.charset == "utf-8"


def test_a_part_s_own_charset_wins() -> None:
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="_charset_"\r\n\r\nlatin-1\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="prompt"\r\n'
        f"Content-Type: text/plain; charset=utf-16\r\n\r\nx\r\n--{BOUNDARY}--\r\n"
    ).encode()
    (head,) = [e for e in events_of(body) if isinstance(e, PartHead)]
    assert head.charset == "utf-16"


def test_a_charset_part_that_is_no_charset_is_refused() -> None:
    body = body_of([("_charset_", b"x" * 40), ("model", b"whisper-1")])
    with pytest.raises(MalformedBodyError, match="_charset_"):
        events_of(body)


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('multipart/form-data; boundary="a b:c"', b"a b:c"),
        ("multipart/form-data; boundary=" + "x" * 70, b"x" * 70),
    ],
)
def test_form_boundary(content_type: str, boundary: bytes) -> None:
    assert form_boundary(content_type) == boundary


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=" + "x" * 71,
    ],
)
def test_form_boundary_refused(content_type: str) -> None:
    with pytest.raises(MalformedBodyError):
        form_boundary(content_type)


COMMON_HEADS = [
    'Content-Disposition: form-data; name="model"',
    'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav',
    'Content-Disposition: form-data; name="file"; filename="r\u00e9union Q3.wav"',
    'Content-Disposition: form-data; name="prompt"\r\nContent-Type: text/plain; charset=latin-1',
    'Content-Disposition: form-data; name="file"; filename="x.ogg"\r\nContent-Type: audio/ogg  ',
    'Content-Disposition: form-data; name="a;b"',
    'Content-Disposition: form-data; name="/etc"',
    'Content-Disposition: form-data; name=""',
    'Content-Disposition: form-data; name="multipart"\r\nContent-Type: multipart/mixed; b=1',
]


@pytest.mark.parametrize("headers", COMMON_HEADS)
def test_the_headers_every_client_writes_read_as_aiohttp_reads_them(headers: str) -> None:
    """The shortcut for the common headers gives what aiohttp's header parser gives
    (reached here by an extra header the shortcut does not take)."""

    def head_of(block: str) -> PartHead:
        body = f"--{BOUNDARY}\r\n{block}\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()
        (head, *_) = events_of(body)
        assert isinstance(head, PartHead)
        return head

    assert head_of(headers) == head_of(headers + "\r\nX-Extra: 1")
