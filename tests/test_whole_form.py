"""A body split in one pass reads exactly as the streaming reader reads it, or is left to it.

The same bytes go to two form readers, one allowed to split a body that has
arrived whole, one made to read every body part by part. Whatever the body
(plain, unusual, broken, over a limit), the two must agree: the same fields,
the same file bytes, name and type, the same digest, or the same error.
End to end, the proxy answers a body that arrived whole as it answers the
same body trickled in, and sends the upstream the same parts.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import ProxyError
from proxy.form.reader import FormLimits, FormReader
from proxy.metrics import Metrics
from tests.helpers.client import URL, base_url, json_of
from tests.helpers.forms import BREAKS, Form, forms
from tests.helpers.upstream import FakeUpstream

# aiohttp warns of the malformed part headers, then reads or refuses them.
pytestmark = [
    pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionHeader"),
    pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionParam"),
]

LIMITS = FormLimits(max_body_bytes=1 << 20, max_fields=6, max_field_bytes=200)
B = "form-boundary"


async def _describe(request: web.Request) -> web.Response:
    """What a form reader made of the body: its fields and file, or its error."""
    reader = FormReader(
        request,
        LIMITS,
        metrics=Metrics(),
        hash_audio=True,
        split_whole_bodies=request.match_info["way"] == "whole",
    )
    outcome: dict[str, Any] = {}
    try:
        async with reader:
            form = await reader.read()
            audio = form.audio
            if audio is not None:
                data = b"".join([chunk async for chunk in audio.chunks()])
                outcome["audio"] = [
                    type(audio).__name__,
                    audio.filename,
                    audio.content_type,
                    data.hex(),
                    reader.audio_sha256,
                ]
            outcome["fields"] = [[f.name, f.value, f.content_type] for f in form.all_fields()]
    except ProxyError as exc:
        outcome["error"] = [exc.status, exc.code, exc.message, exc.param]
    outcome["split_whole"] = reader.split_whole
    return web.json_response(outcome)


def readers_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/{way}", _describe)
    return app


@pytest.fixture
async def readers(aiohttp_server: Callable[..., Any]) -> TestServer:
    server: TestServer = await aiohttp_server(readers_app())
    return server


async def both_ways(
    server: BaseTestServer, body: bytes, content_type: str = f"multipart/form-data; boundary={B}"
) -> dict[str, Any]:
    """The two readers' outcomes for ``body``, checked equal; the whole-body one returned."""
    outcomes: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        for way in ("whole", "parts"):
            async with session.post(
                server.make_url(f"/{way}"), data=body, headers={"Content-Type": content_type}
            ) as response:
                outcomes.append(await response.json())
    whole, parts = outcomes
    taken = whole.pop("split_whole", None)
    parts.pop("split_whole", None)
    assert whole == parts
    whole["split_whole"] = taken
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
}


@pytest.mark.parametrize("name", sorted(PLAIN))
async def test_plain_bodies_are_split_and_read_alike(readers: TestServer, name: str) -> None:
    outcome = await both_ways(readers, PLAIN[name])
    # Not the streaming reader's answer by way of a fallback: the split was taken.
    assert outcome["split_whole"] is True


@pytest.mark.parametrize("name", sorted(UNUSUAL))
async def test_unusual_bodies_are_read_alike(readers: TestServer, name: str) -> None:
    outcome = await both_ways(readers, UNUSUAL[name])
    assert outcome["split_whole"] is False


async def test_a_quoted_boundary_is_read_alike(readers: TestServer) -> None:
    outcome = await both_ways(
        readers, MODEL + FILE + END, content_type=f'multipart/form-data; boundary="{B}"'
    )
    assert outcome["split_whole"] is True


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
        assert outcome["split_whole"] is True
        assert outcome["audio"][4] == hashlib.sha256(form.file).hexdigest()


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
