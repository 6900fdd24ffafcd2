"""The form reader reads a body alike whether it arrived whole or trickled in.

The same bytes go to a form reader twice over real HTTP: once sent whole
(small enough to be in aiohttp's buffer when the handler runs, so parsed in
one pass and its file buffered) and once trickled in pieces with pauses
between them (so read part by part as it arrives, its file streamed or
spooled). Whatever the body (plain, unusual, broken, over a limit), both
must give the same fields, the same file bytes, name and type, the same
digest, or the same error, and each named body the outcome it has always
had. End to end, the proxy answers a body that arrived whole as it answers
the same body trickled in, and sends the upstream the same parts.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import ProxyError
from proxy.form import FormLimits, FormReader
from proxy.metrics import Metrics
from tests.helpers.client import URL, base_url, json_of
from tests.helpers.forms import BREAKS, Form, forms
from tests.helpers.upstream import FakeUpstream

# aiohttp's parser warns of the malformed Content-Disposition headers it reads.
pytestmark = [
    pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionHeader"),
    pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionParam"),
]

LIMITS = FormLimits(max_body_bytes=1 << 20, max_fields=6, max_field_bytes=200)
B = "form-boundary"


async def _describe(request: web.Request) -> web.Response:
    """What the form reader made of the body: its fields and file, or its error."""
    reader = FormReader(request, LIMITS, metrics=Metrics(), hash_audio=True)
    outcome: dict[str, Any] = {}
    try:
        async with reader:
            form = await reader.read()
            audio = form.audio
            if audio is not None:
                data = b"".join([piece async for piece in audio.pieces()])
                outcome["audio"] = [
                    audio.filename,
                    audio.content_type,
                    data.hex(),
                    form.audio_sha256,
                ]
                outcome["way"] = type(audio).__name__
            outcome["fields"] = [[f.name, f.value, f.content_type] for f in form.all_fields()]
    except ProxyError as exc:
        outcome["error"] = [exc.status_code, exc.code, exc.message, exc.param]
    return web.json_response(outcome)


def readers_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/", _describe)
    return app


@pytest.fixture
async def readers(aiohttp_server: Callable[..., Any]) -> TestServer:
    server: TestServer = await aiohttp_server(readers_app())
    return server


async def _trickled(body: bytes) -> AsyncIterator[bytes]:
    """``body`` in three pieces, with pauses: it has not arrived whole when it is read."""
    cuts = [0, len(body) // 3, 2 * len(body) // 3, len(body)]
    for start, end in itertools.pairwise(cuts):
        if end > start:
            yield body[start:end]
        await asyncio.sleep(0.02)


async def both_ways(
    server: BaseTestServer, body: bytes, content_type: str = f"multipart/form-data; boundary={B}"
) -> dict[str, Any]:
    """The reader's outcomes for ``body`` sent whole and trickled, checked equal; the
    whole one returned (with ``way``, how its file was held, as it was whole)."""
    outcomes: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        for data in (body, _trickled(body)):
            async with session.post(
                server.make_url("/"), data=data, headers={"Content-Type": content_type}
            ) as response:
                outcomes.append(await response.json())
    whole, trickled = outcomes
    way = whole.pop("way", None)
    trickled.pop("way", None)
    assert whole == trickled
    whole["way"] = way
    return whole


def part(headers: str, value: bytes) -> bytes:
    return f"--{B}\r\n{headers}\r\n\r\n".encode() + value + b"\r\n"


def after_model(headers: str, value: bytes) -> bytes:
    """A whole form: the model, then one part with ``headers``."""
    return MODEL + part(headers, value) + END


MODEL = part('Content-Disposition: form-data; name="model"', b"whisper-1")
FILE = part(
    'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav',
    b"RIFF\r\n--form-boundar\r\n",
)
END = f"--{B}--\r\n".encode()

#: Bodies the one-pass split takes: the answers must be the streaming reader's.
PLAIN = {
    "model then file": MODEL + FILE + END,
    "file then model": FILE + MODEL + END,
    "no final CRLF": MODEL + FILE + END[:-2],
    "empty file": MODEL + part('Content-Disposition: form-data; name="file"', b"") + END,
    "no file": MODEL + END,
    "two files": MODEL + FILE + FILE + END,
    "header case and spacing": after_model(
        'content-disposition:form-data; name="file"\r\nCONTENT-TYPE:   audio/x-flac  ', b"f"
    ),
    "tabs around values": part('Content-Disposition:\tform-data; name="model"\t', b"whisper-1")
    + part('Content-Disposition: form-data; name="file"\r\nContent-Type: \taudio/ogg \t', b"f")
    + END,
    "non-ASCII filename": after_model(
        'Content-Disposition: form-data; name="file"; filename="r\u00e9union.wav"', b"f"
    ),
    "latin-1 field": MODEL
    + part(
        'Content-Disposition: form-data; name="prompt"\r\nContent-Type: text/plain; '
        "charset=latin-1",
        "caf\u00e9".encode("latin-1"),
    )
    + FILE
    + END,
    "unknown charset": part(
        'Content-Disposition: form-data; name="prompt"\r\nContent-Type: text/plain; charset=nope',
        b"x",
    )
    + MODEL
    + FILE
    + END,
    "not UTF-8": part('Content-Disposition: form-data; name="prompt"', b"\xff") + MODEL + END,
    "field too large": part('Content-Disposition: form-data; name="prompt"', b"p" * 201) + END,
    "too many fields": MODEL * 7 + FILE + END,
    "model twice": MODEL + MODEL + FILE + END,
    "bad temperature": part('Content-Disposition: form-data; name="temperature"', b"9") + END,
    "fields after the file": MODEL
    + FILE
    + part('Content-Disposition: form-data; name="language"', b"de")
    + END,
}

#: Bodies it leaves to the streaming reader, which answers as it always has.
UNUSUAL = {
    "preamble": b"a preamble\r\n" + MODEL + FILE + END,
    "epilogue": MODEL + FILE + END + b"an epilogue\r\n",
    "padding after a boundary": MODEL.replace(f"--{B}\r\n".encode(), f"--{B}  \r\n".encode())
    + FILE
    + END,
    "LF line ends": (MODEL + FILE + END).replace(b"\r\n", b"\n"),
    "no headers": f"--{B}\r\n\r\nvalue\r\n".encode() + MODEL + END,
    "nameless part": part("Content-Disposition: form-data", b"x") + MODEL + END,
    "_charset_ part": part('Content-Disposition: form-data; name="_charset_"', b"latin-1")
    + MODEL
    + END,
    "filename*": after_model(
        "Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''r%C3%A9.wav", b"f"
    ),
    "escaped quote": after_model(
        'Content-Disposition: form-data; name="file"; filename="a\\"b.wav"', b"f"
    ),
    "non-UTF-8 filename": MODEL
    + part('Content-Disposition: form-data; name="file"; filename="x', b"")[:-4]
    + b'\xe9.wav"\r\n\r\nf\r\n'
    + END,
    "transfer encoding": after_model(
        'Content-Disposition: form-data; name="file"\r\nContent-Transfer-Encoding: base64', b"UklG"
    ),
    "part length": after_model(
        'Content-Disposition: form-data; name="file"\r\nContent-Length: 1', b"f"
    ),
    "two dispositions": after_model(
        'Content-Disposition: form-data; name="a"\r\nContent-Disposition: form-data', b"f"
    ),
    "nested multipart": after_model(
        'Content-Disposition: form-data; name="file"\r\nContent-Type: multipart/mixed; '
        "boundary=inner",
        b"--inner--",
    ),
    "header without colon": MODEL.replace(b'"model"\r\n', b'"model"\r\nno colon\r\n') + END,
    "empty part without CRLF": part('Content-Disposition: form-data; name="prompt"', b"")[:-2]
    + MODEL
    + END,
    "boundary one char off": MODEL + f"--{B}x\r\n".encode() + END,
    "never ends": MODEL + FILE,
    "cut in headers": MODEL + FILE[:20],
    "wrong boundary": (MODEL + FILE + END).replace(B.encode(), b"other"),
    # Once a 500 (aiohttp's reader raised an error of its own on either).
    "_charset_ too long": part('Content-Disposition: form-data; name="_charset_"', b"x" * 40)
    + MODEL
    + END,
    "charset name not text": MODEL
    + part('Content-Disposition: form-data; name="prompt"', b"p")[:-7]
    + b"\r\nContent-Type: text/plain; charset=lat\xffin-1\r\n\r\np\r\n"
    + END,
}


#: What each body reads as: its field names and its file's name, or its error.
OUTCOMES: dict[str, tuple[list[str], str | None] | tuple[int, str, str | None]] = {
    "model then file": (["model"], "a.wav"),
    "file then model": (["model"], "a.wav"),
    "no final CRLF": (["model"], "a.wav"),
    "empty file": (["model"], "audio"),
    "no file": (["model"], None),
    "two files": (400, "invalid_value", "file"),
    "header case and spacing": (["model"], "audio"),
    "tabs around values": (["model"], "audio"),
    "non-ASCII filename": (["model"], "r\u00e9union.wav"),
    "latin-1 field": (["model", "prompt"], "a.wav"),
    "unknown charset": (400, "invalid_value", "prompt"),
    "not UTF-8": (400, "invalid_value", "prompt"),
    "field too large": (400, "field_too_large", "prompt"),
    "too many fields": (400, "invalid_value", "model"),
    "model twice": (400, "invalid_value", "model"),
    "bad temperature": (400, "invalid_value", "temperature"),
    "fields after the file": (["model", "language"], "a.wav"),
    "preamble": (["model"], "a.wav"),
    "epilogue": (["model"], "a.wav"),
    "padding after a boundary": (["model"], "a.wav"),
    "LF line ends": (400, "malformed_multipart", None),
    "no headers": (400, "malformed_multipart", None),
    "nameless part": (400, "malformed_multipart", None),
    "_charset_ part": (["model"], None),
    "filename*": (["model"], "r\u00e9.wav"),
    "escaped quote": (["model"], 'a"b.wav'),
    "non-UTF-8 filename": (400, "malformed_multipart", None),
    "transfer encoding": (400, "malformed_multipart", "file"),
    "part length": (["model"], "audio"),
    "two dispositions": (["model", "a"], None),
    "nested multipart": (400, "malformed_multipart", None),
    "header without colon": (400, "malformed_multipart", None),
    "empty part without CRLF": (["prompt", "model"], None),
    "boundary one char off": (400, "malformed_multipart", None),
    "never ends": (400, "malformed_multipart", None),
    "cut in headers": (400, "malformed_multipart", None),
    "wrong boundary": (400, "malformed_multipart", None),
    "_charset_ too long": (400, "malformed_multipart", None),
    "charset name not text": (400, "invalid_value", "prompt"),
}


@pytest.mark.parametrize("name", sorted(OUTCOMES))
async def test_named_bodies_read_alike_and_as_they_always_have(
    readers: TestServer, name: str
) -> None:
    outcome = await both_ways(readers, {**PLAIN, **UNUSUAL}[name])
    expected = OUTCOMES[name]
    if isinstance(expected[0], int):
        status, code, param = expected
        assert "error" in outcome, outcome
        assert outcome["error"][0] == status
        assert outcome["error"][1] == code
        assert outcome["error"][3] == param
        return
    fields, filename = expected
    assert [f[0] for f in outcome["fields"]] == fields
    if filename is None:
        assert "audio" not in outcome
    else:
        assert outcome["audio"][0] == filename
        # Arrived whole, the file is taken from memory, where it already is.
        assert outcome["way"] == "BufferedAudio"


def test_every_named_body_has_its_outcome() -> None:
    assert set(OUTCOMES) == {*PLAIN, *UNUSUAL}


async def test_a_charset_part_applies_to_the_fields_after_it(readers: TestServer) -> None:
    body = (
        part('Content-Disposition: form-data; name="_charset_"', b"iso-8859-1")
        + part('Content-Disposition: form-data; name="prompt"', "caf\u00e9".encode("latin-1"))
        + MODEL
        + FILE
        + END
    )
    outcome = await both_ways(readers, body)
    assert outcome["fields"] == [["prompt", "caf\u00e9", None], ["model", "whisper-1", None]]


async def test_a_quoted_boundary_is_read_alike(readers: TestServer) -> None:
    outcome = await both_ways(
        readers, MODEL + FILE + END, content_type=f'multipart/form-data; boundary="{B}"'
    )
    assert outcome["way"] == "BufferedAudio"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    form=forms(),
    mutation=st.one_of(
        st.none(),
        st.sampled_from(sorted(BREAKS)),
        st.tuples(
            st.floats(0, 1),
            st.sampled_from([b"", b"\r\n", b"\r", b"\n", b"--", b":", b";", b'"', b" ", b"\xff"]),
            st.integers(0, 3),
        ),
    ),
)
def test_generated_bodies_are_read_alike(
    form: Form, mutation: str | tuple[float, bytes, int] | None
) -> None:
    """Valid forms, forms broken at their framing, and forms with bytes put in or cut anywhere."""
    body = form.body()
    if isinstance(mutation, str):
        body = BREAKS[mutation](body, form.boundary)
    elif mutation is not None:
        where, inserted, removed = mutation
        at = int(where * len(body))
        body = body[:at] + inserted + body[at + removed :]

    async def outcome_of() -> dict[str, Any]:
        async with TestServer(readers_app()) as server:
            content_type = f'multipart/form-data; boundary="{form.boundary}"'
            return await both_ways(server, body, content_type)

    outcome = asyncio.run(outcome_of())
    if mutation is None:
        assert outcome["way"] == "BufferedAudio"
        assert outcome["audio"][3] == hashlib.sha256(form.file).hexdigest()


async def _through_the_proxy(
    proxy: TestServer, upstream: FakeUpstream, body: bytes, *, trickled: bool
) -> tuple[int, dict[str, Any], list[tuple[str, str | None, str | None, str | None, str]]]:
    """The client's answer (less its timing) and what reached the upstream.

    ``trickled``: the body's second half is sent after a pause, so it has not
    arrived whole when the proxy starts reading, and is read part by part.
    """

    async def in_two_halves() -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]
        await asyncio.sleep(0.05)
        yield body[len(body) // 2 :]

    before = len(upstream.requests)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url(proxy)}{URL}",
            data=in_two_halves() if trickled else body,
            headers={"Content-Type": f"multipart/form-data; boundary={B}"},
        ) as response,
    ):
        answer = json_of(await response.read())
    extra = answer.get("extra_fields")
    if isinstance(extra, dict):
        extra.pop("latency", None)
    received = [
        (p.name, p.filename, p.content_type, p.value, p.sha256)
        for request in upstream.requests[before:]
        for p in request.parts
    ]
    return response.status, answer, received


@pytest.mark.parametrize(
    "name", ["model then file", "file then model", "latin-1 field", "epilogue"]
)
async def test_the_proxy_answers_alike_whole_or_trickled(
    proxy: TestServer, upstream: FakeUpstream, name: str
) -> None:
    """End to end: the same body, arrived whole or in two halves, gets the same answer and
    sends the upstream the same parts."""
    body = {**PLAIN, **UNUSUAL}[name]
    whole = await _through_the_proxy(proxy, upstream, body, trickled=False)
    trickled = await _through_the_proxy(proxy, upstream, body, trickled=True)
    assert whole == trickled
    assert whole[0] == 200
