"""Generated multipart forms, valid and broken, through the proxy and through aiohttp's parser.

Every valid form (a ``model`` field, other fields, one file holding any bytes,
boundary look-alikes included) is forwarded byte-exact; every form whose
framing is broken is a 400 ``malformed_multipart``. aiohttp's own reader is
the reference for which is which.
"""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.app import create_app
from proxy.config import parse_config
from tests.helpers.client import URL, json_of
from tests.helpers.forms import BREAKS, Form, forms, new_stream
from tests.helpers.upstream import FakeUpstream, provider_config

# aiohttp warns of the part headers the broken forms cut short, then refuses them.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionHeader")


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


#: What each break is answered with. The parser says a form ends only at its closing
#: delimiter, so a body that ends before it (with no final boundary, or cut anywhere, before
#: the file too) is malformed before any field is found missing; a header line with no colon
#: and a boundary never seen are malformed framing as they are read.
BROKEN_CODE = {
    "no final boundary": "malformed_multipart",
    "cut mid-part": "malformed_multipart",
    "part header with no colon": "malformed_multipart",
    "boundary never seen": "malformed_multipart",
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forms(), st.sampled_from(sorted(BREAKS)))
def test_broken_forms_are_400_malformed_multipart(form: Form, how: str) -> None:
    body = BREAKS[how](form.body(), form.boundary)
    status, document, upstream = asyncio.run(_through_proxy(body, form.boundary))
    assert status == 400, (how, document)
    error = document["error"]
    assert isinstance(error, dict)
    assert error["code"] == BROKEN_CODE[how], (how, error)
    assert not any(r.complete for r in upstream.requests)


def test_reference_parser_refuses_what_the_proxy_refuses() -> None:
    form = Form("b0undary", [("model", "whisper-1")], b"RIFF\r\n--b0undar", False)
    body = form.body()
    assert asyncio.run(_reference(body, form.boundary)) is not None
    for how, breaking in BREAKS.items():
        broken = breaking(body, form.boundary)
        # aiohttp refuses every one of them too.
        assert asyncio.run(_reference(broken, form.boundary)) is None, how
