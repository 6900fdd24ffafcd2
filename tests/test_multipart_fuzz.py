"""Generated multipart forms, valid and broken, through the proxy and through aiohttp's parser.

Every valid form (a ``model`` field, other fields, one file holding any bytes,
boundary look-alikes included) is forwarded byte-exact; every form whose
framing is broken is a 400 ``malformed_multipart``. aiohttp's own reader is
the reference for which is which.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.app import create_app
from proxy.config import parse_config
from tests.conftest import URL, FakeUpstream, json_of, provider_config
from tests.test_part_reader import new_stream

# aiohttp warns of the part headers the broken forms cut short, then refuses them.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionHeader")

_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_[]", min_size=1, max_size=12)
#: Bytes that look like framing: a file may hold any of them.
_TRICKY = st.sampled_from([b"\r\n", b"--", b"\r\n--", b"\r\n\r\n", b"-", b"\r", b"\n"])


@dataclass(frozen=True)
class Form:
    boundary: str
    fields: list[tuple[str, str]]
    file: bytes
    file_first: bool

    def body(self) -> bytes:
        parts = [
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
            for name, value in self.fields
        ]
        file_part = (
            (
                f"--{self.boundary}\r\n"
                'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode()
            + self.file
            + b"\r\n"
        )
        ordered = [file_part, *parts] if self.file_first else [*parts, file_part]
        return b"".join(ordered) + f"--{self.boundary}--\r\n".encode()


@st.composite
def forms(draw: st.DrawFn) -> Form:
    boundary = draw(
        st.text(
            alphabet="abcdefghijklmnopqrstuvwxyz0123456789'()+_,-./:=?", min_size=1, max_size=40
        )
    )
    extra = draw(
        st.lists(
            st.tuples(
                _TOKEN.filter(lambda n: n not in {"model", "file", "stream", "fallbacks"}),
                st.text(alphabet="abcdefghij ", max_size=20),
            ),
            max_size=3,
            unique_by=lambda f: f[0],
        )
    )
    pieces = draw(st.lists(st.one_of(st.binary(max_size=64), _TRICKY), max_size=40))
    # Boundary look-alikes that are not the boundary: a prefix, or one char off.
    near = (f"\r\n--{boundary[:-1]}" + ("x" if boundary[-1] != "x" else "y")).encode()
    file = b"".join(pieces) + (near if draw(st.booleans()) else b"")
    fields = [("model", "whisper-1"), *(("x_" + n, v) for n, v in extra)]
    return Form(boundary, fields, file, draw(st.booleans()))


#: Ways to break a valid body's framing.
BREAKS: dict[str, Callable[[bytes, str], bytes]] = {
    "no final boundary": lambda body, b: body[: body.rindex(f"--{b}--".encode())],
    "cut mid-part": lambda body, b: body[: len(body) * 2 // 3],
    "part header with no colon": lambda body, b: body.replace(
        b'name="model"\r\n', b'name="model"\r\nthis is no header\r\n', 1
    ),
    "boundary never seen": lambda body, b: body.replace(f"--{b}".encode(), b"--other", 1).replace(
        f"--{b}".encode(), b"--other"
    ),
}


async def _through_proxy(body: bytes, boundary: str) -> tuple[int, dict[str, object], FakeUpstream]:
    upstream = FakeUpstream()
    upstream.server = TestServer(upstream.app)
    await upstream.server.start_server()
    proxy = TestServer(create_app(parse_config(provider_config(upstream), {})))
    await proxy.start_server()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                proxy.make_url(URL),
                data=body,
                headers={"Content-Type": f'multipart/form-data; boundary="{boundary}"'},
            ) as response,
        ):
            return response.status, json_of(await response.read()), upstream
    finally:
        await proxy.close()
        await upstream.server.close()


async def _reference(body: bytes, boundary: str) -> list[tuple[str | None, bytes]] | None:
    """aiohttp's own reader on the body: the parts, or None when it refuses it."""
    reader = new_stream()
    reader.feed_data(body)
    reader.feed_eof()
    headers = CIMultiDict({"Content-Type": f'multipart/form-data; boundary="{boundary}"'})
    parts: list[tuple[str | None, bytes]] = []
    try:
        multipart = aiohttp.MultipartReader(headers, reader)
        while (part := await multipart.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            parts.append((part.name, bytes(await part.read())))
    except (ValueError, AssertionError, aiohttp.ClientPayloadError, HttpProcessingError):
        return None
    return parts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forms())
def test_valid_forms_are_forwarded_byte_exact(form: Form) -> None:
    body = form.body()
    reference = asyncio.run(_reference(body, form.boundary))
    assert reference is not None
    assert dict(reference)["file"] == form.file
    status, document, upstream = asyncio.run(_through_proxy(body, form.boundary))
    assert status == 200, document
    received = upstream.last
    assert received.file.sha256 == hashlib.sha256(form.file).hexdigest()
    assert [(p.name, p.value) for p in received.parts if p.name != "file"] == form.fields


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forms(), st.sampled_from(sorted(BREAKS)))
def test_broken_forms_are_400_malformed_multipart(form: Form, how: str) -> None:
    body = BREAKS[how](form.body(), form.boundary)
    status, document, upstream = asyncio.run(_through_proxy(body, form.boundary))
    assert status == 400, (how, document)
    error = document["error"]
    assert isinstance(error, dict)
    # A form cut before its file is complete names what is missing instead.
    assert error["code"] in ("malformed_multipart", "missing_required_field"), (how, error)
    assert not any(r.complete for r in upstream.requests)


def test_reference_parser_refuses_what_the_proxy_refuses() -> None:
    form = Form("b0undary", [("model", "whisper-1")], b"RIFF\r\n--b0undar", False)
    body = form.body()
    assert asyncio.run(_reference(body, form.boundary)) is not None
    for how, breaking in BREAKS.items():
        broken = breaking(body, form.boundary)
        reference = asyncio.run(_reference(broken, form.boundary))
        # aiohttp either refuses it or does not find the file whole in it.
        assert reference is None or dict(reference).get("file") != form.file, how
