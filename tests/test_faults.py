"""Faults from clients, upstreams and attackers, each checked for what it leaves behind.

After every fault: the answer is one of the documented statuses in the
documented error shape (never a stack trace, never a 500 of our own), and
nothing is left behind (asyncio tasks, open files, spool files), counted
before and after.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import os
import resource
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.helpers.client import URL, ProxyFactory, audio_bytes, base_url, form, json_of, post
from tests.helpers.errors import assert_error
from tests.helpers.processes import open_files_under, start_proxy_process
from tests.helpers.upstream import (
    UPSTREAM_KEY,
    FakeUpstream,
    Responder,
    answering,
    dripping,
    echoing_the_key,
    endless_body,
    endless_stream,
    failing,
    hanging,
    html_page,
    provider_config,
    redirecting,
    resetting,
)

BOUNDARY = "fault-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def _open_files() -> set[str]:
    """The files (not sockets or pipes) this process holds open, by descriptor."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        with ignoring_disconnects():
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("/"):
                held.add(f"{fd}:{target}")
    return held


class Settled:
    """What a proxy in this process holds: tasks, open files, spool files; compared after."""

    def __init__(self, spool_dir: Path) -> None:
        self._spool_dir = str(spool_dir)
        self.tasks = len(asyncio.all_tasks())
        self.files = _open_files()

    def _leaked_files(self) -> set[str]:
        return _open_files() - self.files

    async def check(self) -> None:
        """Everything the fault started is gone (waits a little for it to wind down)."""
        for _ in range(150):
            if (
                len(asyncio.all_tasks()) <= self.tasks
                and not open_files_under(self._spool_dir)
                and not self._leaked_files()
            ):
                return
            await asyncio.sleep(0.02)
        assert open_files_under(self._spool_dir) == []
        assert self._leaked_files() == set()
        assert len(asyncio.all_tasks()) <= self.tasks, asyncio.all_tasks()


@pytest.fixture
async def guarded(
    make_proxy: ProxyFactory, upstream: FakeUpstream, backup: FakeUpstream, tmp_path: Path
) -> tuple[TestServer, Settled]:
    """A proxy with a fallback, its own spool dir, short client timeouts; warmed up once."""
    config = provider_config(upstream, default_request_timeout_in_seconds=2)
    config["providers"]["backup"] = {
        "keys": [{"value": "sk-backup-0123456789"}],
        "custom_provider_config": {"base_provider_type": "openai"},
        "network_config": {"base_url": backup.base_url},
    }
    config["proxy"] = {"spool_dir": str(tmp_path), "body_idle_timeout_s": 0.5, "max_fields": 50}
    server = await make_proxy(config)
    # Once through each upstream, so their kept-alive connections are counted as there.
    for fallback in ((), (("fallbacks", "backup/whisper-1"),)):
        status, _, _ = await post(
            server, form(("model", "whisper-1"), *fallback, ("file", b"RIFF"))
        )
        assert status == 200
    return server, Settled(tmp_path)


def raw_body(*parts: tuple[str, bytes], filename: bytes = b"a.wav", close: bool = True) -> bytes:
    out = bytearray()
    for name, value in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        if name == "file":
            out += b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
            out += b"Content-Type: audio/wav\r\n\r\n"
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value + b"\r\n"
    if close:
        out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


async def raw_exchange(
    server: TestServer, head: bytes, body: bytes = b"", *, read_s: float = 5.0
) -> bytes:
    """Send ``head`` and ``body`` on a fresh connection; what came back until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head + body)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(read_s):
            while data := await reader.read(65536):
                chunks.append(data)
        return b"".join(chunks)
    except TimeoutError:
        return b"".join(chunks)
    finally:
        writer.close()


def request_head(length: int | None, *extra: str) -> bytes:
    lines = [f"POST {URL} HTTP/1.1", "Host: proxy", f"Content-Type: {MULTIPART}", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answers_of(raw: bytes) -> list[tuple[int, dict[str, Any] | None]]:
    """Every HTTP answer in ``raw``: its status and JSON body (None if not JSON)."""
    answers = []
    while raw.startswith(b"HTTP/1.1 "):
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        length = int(headers.get(b"content-length", b"0"))
        body, raw = rest[:length], rest[length:]
        try:
            answers.append((status, json.loads(body)))
        except ValueError:
            answers.append((status, None))
    return answers


# --- clients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("file_first", [False, True], ids=["model-first", "file-first"])
@pytest.mark.parametrize("recorded", [False, True], ids=["plain", "recorded"])
async def test_client_leaving_mid_upload(
    guarded: tuple[TestServer, Settled], upstream: FakeUpstream, file_first: bool, recorded: bool
) -> None:
    server, settled = guarded
    warmed = len(upstream.requests)
    audio = audio_bytes(4 * 1024 * 1024)
    fields = [("model", b"whisper-1")] + ([("fallbacks", b"backup/whisper-1")] if recorded else [])
    parts = [("file", audio), *fields] if file_first else [*fields, ("file", audio)]
    body = raw_body(*parts)
    cut = len(body) // 2
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_head(len(body)) + body[:cut])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await settled.check()
    assert all(not r.complete for r in upstream.requests[warmed:])


async def test_client_leaving_mid_stream(
    guarded: tuple[TestServer, Settled], upstream: FakeUpstream
) -> None:
    server, settled = guarded
    upstream.respond = endless_stream()
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{base_url(server)}{URL}",
            data=form(("model", "gpt-4o-transcribe"), ("stream", "true"), ("file", b"RIFF")),
        )
        await response.content.readuntil(b"\n\n")
        response.close()
    await settled.check()


async def test_client_leaving_mid_fallback(
    guarded: tuple[TestServer, Settled], upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    server, settled = guarded
    backup_reached = asyncio.Event()
    upstream.respond = failing(503)
    backup.respond = hanging(30, reached=backup_reached)
    async with aiohttp.ClientSession() as session:
        posting = asyncio.ensure_future(
            session.post(
                f"{base_url(server)}{URL}",
                data=form(
                    ("model", "whisper-1"),
                    ("fallbacks", "backup/whisper-1"),
                    ("file", audio_bytes(2 * 1024 * 1024)),
                ),
            )
        )
        await asyncio.wait_for(backup_reached.wait(), 10)
        posting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await posting
    await settled.check()


async def test_content_length_larger_than_what_is_sent(
    guarded: tuple[TestServer, Settled],
) -> None:
    server, settled = guarded
    body = raw_body(("model", b"whisper-1"), ("file", audio_bytes(100_000)))
    raw = await raw_exchange(server, request_head(len(body) + 5000), body, read_s=3)
    # The client went quiet: the proxy answers 408 at its body idle timeout.
    [(status, document)] = answers_of(raw)
    assert status == 408
    assert document is not None
    assert_error(document, status=408, code="request_timeout")
    await settled.check()


async def test_content_length_smaller_than_what_is_sent(
    guarded: tuple[TestServer, Settled],
) -> None:
    server, settled = guarded
    body = raw_body(("model", b"whisper-1"), ("file", audio_bytes(100_000)))
    raw = await raw_exchange(server, request_head(len(body) - 500), body, read_s=3)
    # The bytes past Content-Length are a malformed next request: aiohttp's
    # parser refuses them (with its own plain-text 400) and closes.
    assert raw.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 "))
    await settled.check()


async def test_expect_100_continue_then_nothing(guarded: tuple[TestServer, Settled]) -> None:
    server, settled = guarded
    raw = await raw_exchange(server, request_head(50_000, "Expect: 100-continue"), read_s=3)
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    [(status, document)] = answers_of(raw.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n"))
    assert status == 408
    assert document is not None
    await settled.check()


async def test_slow_drip_body_is_cut(guarded: tuple[TestServer, Settled]) -> None:
    server, settled = guarded
    body = raw_body(("model", b"whisper-1"), ("file", b"RIFF" * 100))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    received = bytearray()

    async def read_all() -> None:
        # Read as it comes: data still unread when the connection resets is lost.
        with ignoring_disconnects():
            while data := await reader.read(65536):
                received.extend(data)

    reading = asyncio.ensure_future(read_all())
    try:
        writer.write(request_head(len(body)) + body[:20])
        await writer.drain()
        for byte in body[20:40]:
            await asyncio.sleep(0.7)  # longer than the 0.5 s idle timeout
            if reading.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
    except OSError:
        pass  # the proxy hung up on it
    await asyncio.wait_for(reading, 5)
    writer.close()
    assert answers_of(bytes(received))[0][0] == 408
    await settled.check()


async def test_pipelined_requests_are_answered_in_order(
    guarded: tuple[TestServer, Settled], upstream: FakeUpstream
) -> None:
    server, settled = guarded
    first = raw_body(("model", b"whisper-1"), ("file", b"one"))
    second = raw_body(("model", b"whisper-1"), ("file", b"second"))
    head_two = request_head(len(second)).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\n", 1)
    raw = await raw_exchange(
        server,
        request_head(len(first)) + first + head_two + second,
        read_s=2,
    )
    answers = answers_of(raw)
    assert [status for status, _ in answers] == [200, 200]
    texts = [document["text"] for _, document in answers if document is not None]
    assert texts == ["heard 3 bytes", "heard 6 bytes"]
    await settled.check()


async def test_ten_thousand_tiny_parts(guarded: tuple[TestServer, Settled]) -> None:
    server, settled = guarded
    parts = [("include[]", b"x")] * 10_000
    body = raw_body(("model", b"whisper-1"), *parts, ("file", b"RIFF"))
    raw = await raw_exchange(server, request_head(len(body)), body, read_s=5)
    status, document = answers_of(raw)[0]
    assert status == 400
    assert document is not None
    assert_error(document, status=400, code="too_many_fields", param="include[]")
    await settled.check()


async def test_one_huge_part_header(guarded: tuple[TestServer, Settled]) -> None:
    server, settled = guarded
    huge = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n'
        f"X-Padding: {'p' * 200_000}\r\n\r\nwhisper-1\r\n--{BOUNDARY}--\r\n"
    ).encode()
    raw = await raw_exchange(server, request_head(len(huge)), huge, read_s=5)
    status, document = answers_of(raw)[0]
    assert status == 400
    assert document is not None
    # A part header line is at most 8190 bytes, whatever the body's limit.
    assert_error(document, status=400, code="malformed_multipart")
    await settled.check()


@pytest.mark.parametrize(
    ("filename", "inert"),
    [
        # The line break ends the header: the part is left with no name.
        (b"evil\r\nX-Injected: yes.wav", False),
        (b'quote"d.wav', True),
        (b"../../etc/passwd", True),
        (b"caf\xe9\xff.wav", True),
    ],
    ids=["crlf", "quotes", "dotdot", "not-utf8"],
)
# aiohttp warns of the header the line break cuts short, then refuses it.
@pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionHeader")
async def test_hostile_filenames_reach_the_upstream_inert(
    guarded: tuple[TestServer, Settled], upstream: FakeUpstream, filename: bytes, inert: bool
) -> None:
    server, settled = guarded
    before = len(upstream.requests)  # the warm-up's
    body = raw_body(("model", b"whisper-1"), ("file", b"RIFF1234"), filename=filename)
    raw = await raw_exchange(server, request_head(len(body)), body, read_s=2)
    status, document = answers_of(raw)[0]
    if not inert:
        assert status == 400, document
        assert document is not None
        assert_error(document, status=400, code="malformed_multipart")
        assert len(upstream.requests) == before
        await settled.check()
        return
    assert status == 200, document
    (received,) = upstream.requests[before:]
    assert "X-Injected" not in received.headers
    assert received.names == ["model", "file"]
    sent = received.file.filename or ""
    assert "\r" not in sent
    assert "\n" not in sent
    assert received.file.sha256 == hashlib.sha256(b"RIFF1234").hexdigest()
    await settled.check()


@pytest.mark.parametrize("where", ["before the file", "as the file"])
async def test_nested_multipart(guarded: tuple[TestServer, Settled], where: str) -> None:
    server, settled = guarded
    inner = b'--inner\r\nContent-Disposition: form-data; name="x"\r\n\r\ny\r\n--inner--\r\n'
    name = "extra" if where == "before the file" else "file"
    nested = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n'
            "Content-Type: multipart/mixed; boundary=inner\r\n\r\n"
        ).encode()
        + inner
        + b"\r\n"
    )
    body = raw_body(("model", b"whisper-1")).removesuffix(f"--{BOUNDARY}--\r\n".encode())
    body += nested + f"--{BOUNDARY}--\r\n".encode()
    raw = await raw_exchange(server, request_head(len(body)), body, read_s=3)
    status, document = answers_of(raw)[0]
    assert status == 400
    assert document is not None
    assert_error(document, status=400, code="malformed_multipart")
    await settled.check()


async def test_no_final_boundary(guarded: tuple[TestServer, Settled]) -> None:
    server, settled = guarded
    body = raw_body(("model", b"whisper-1"), ("file", b"RIFF"), close=False)
    raw = await raw_exchange(server, request_head(len(body)), body, read_s=3)
    status, document = answers_of(raw)[0]
    assert status == 400
    assert document is not None
    assert_error(document, status=400, code="malformed_multipart")
    await settled.check()


# --- upstreams -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("respond", "status", "code"),
    [
        (
            answering(
                400, b'{"error":{"message":"bad audio","code":"invalid_file"}}', "application/json"
            ),
            400,
            "invalid_file",
        ),
        (answering(429, b"slow down", "text/plain"), 429, "upstream_error"),
        (
            answering(500, b'{"error":{"message":"boom"}}', "application/json"),
            500,
            "upstream_error",
        ),
        (answering(503, b"unavailable", "text/plain"), 503, "upstream_error"),
        (html_page(502), 502, "upstream_error"),
        (answering(200, b"this is not json", "application/json"), 502, "bad_gateway"),
        (answering(200, b"\xff\xfe not text", "text/plain"), 502, "bad_gateway"),
    ],
    ids=["4xx-json", "429-text", "5xx-json", "5xx-text", "html-502", "not-json", "not-utf8"],
)
async def test_upstream_answers_that_are_errors(
    guarded: tuple[TestServer, Settled],
    upstream: FakeUpstream,
    respond: Responder,
    status: int,
    code: str,
) -> None:
    server, settled = guarded
    upstream.respond = respond
    got, document, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert got == status
    assert document["error"]["code"] == code
    assert "Traceback" not in json.dumps(document)
    await settled.check()


async def test_upstream_endless_body_is_cut(
    guarded: tuple[TestServer, Settled], upstream: FakeUpstream
) -> None:
    server, settled = guarded
    upstream.respond = endless_body()
    status, document, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 502
    assert "larger than" in document["error"]["message"]
    await settled.check()


async def test_upstream_dripping_one_byte_at_a_time_times_out(
    guarded: tuple[TestServer, Settled], upstream: FakeUpstream
) -> None:
    server, settled = guarded
    # Never silent for the 2 s timeout, but never done.
    upstream.respond = dripping(b'{"text": "a very slow answer"}', piece=1, pause_s=0.5)
    started = time.monotonic()
    status, document, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 504
    assert_error(
        document, status=504, code="upstream_timeout", error_type="timeout_error", bifrost=True
    )
    assert time.monotonic() - started < 6
    await settled.check()


async def test_upstream_reset_mid_answer(
    guarded: tuple[TestServer, Settled], upstream: FakeUpstream
) -> None:
    server, settled = guarded
    upstream.respond = resetting(b'{"text": "half', content_length=1000)
    status, document, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 502
    assert document["is_bifrost_error"] is True
    await settled.check()


async def test_upstream_redirect_is_never_followed(
    guarded: tuple[TestServer, Settled], upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    server, settled = guarded
    before = len(backup.requests)
    upstream.respond = redirecting(f"{backup.base_url}/v1/audio/transcriptions")
    status, document, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    assert status == 502
    assert_error(
        document, status=502, code="upstream_redirect", error_type="api_error", bifrost=True
    )
    assert len(backup.requests) == before  # the other host saw nothing, nor our key
    await settled.check()


async def test_upstream_with_a_bad_certificate_is_refused(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    certificate, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    reached = []

    async def handle(request: web.Request) -> web.Response:
        reached.append(request.headers.get("Authorization"))
        return web.json_response({"text": "should never be read"})

    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", handle)
    tls = TestServer(app, scheme="https")
    await tls.start_server(ssl=context)
    try:
        config = {
            "providers": {
                "openai": {
                    "keys": [{"value": UPSTREAM_KEY}],
                    "network_config": {"base_url": f"https://127.0.0.1:{tls.port}"},
                }
            }
        }
        server = await make_proxy(config)
        status, document, _ = await post(server, form(("model", "whisper-1"), ("file", b"RIFF")))
    finally:
        await tls.close()
    assert status == 502
    assert "certificate could not be verified" in document["error"]["message"]
    assert reached == []


def _self_signed(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def ignoring_disconnects() -> contextlib.suppress:
    """Quiet about a peer that hung up (or a task cancelled with it)."""
    return contextlib.suppress(OSError, asyncio.CancelledError)


# --- attackers -------------------------------------------------------------------------------


def any_deployment(upstream: FakeUpstream) -> dict[str, Any]:
    """An Azure provider whose key serves any deployment named to it."""
    key = {
        "value": "azure-secret-key-0123456789",
        "azure_key_config": {"endpoint": upstream.base_url},
    }
    return {"providers": {"azure": {"keys": [key]}}}


@pytest.mark.parametrize(
    "deployment", ["..%2F..%2Fadmin", "dep%3Fx%3D1", "dep%23frag", "a%2Fb", "dep%0D%0AX-Evil:%201"]
)
async def test_deployment_ids_that_would_change_the_upstream_url_are_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream, deployment: str
) -> None:
    server = await make_proxy(any_deployment(upstream))
    status, body, _ = await post(
        server,
        form(("file", b"RIFF")),
        path=f"/openai/deployments/{deployment}/audio/transcriptions?api-version=x",
    )
    assert status == 400
    assert_error(body, status=400, code="invalid_deployment_id", param="deployment_id")
    assert upstream.requests == []


@pytest.mark.parametrize(
    "model", ["azure/../../admin", "azure/dep?x=1", "azure/dep#frag", "azure/a%2Fb", "azure/a/b"]
)
async def test_model_names_that_would_change_the_upstream_url_are_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream, model: str
) -> None:
    server = await make_proxy(any_deployment(upstream))
    status, body, _ = await post(server, form(("model", model), ("file", b"RIFF")))
    assert status == 400
    assert_error(body, status=400, code="invalid_deployment_id", param="model")
    assert upstream.requests == []


async def test_only_allowed_client_headers_reach_the_upstream(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    server = await make_proxy(provider_config(upstream))
    status, _, _ = await post(
        server,
        form(("model", "whisper-1"), ("file", b"RIFF")),
        headers={
            "Authorization": "Bearer sk-client-secret",
            "Cookie": "session=abc",
            "X-Forwarded-For": "10.0.0.1",
            "X-Custom": "hello",
            "x-bf-vk": "sk-bf-nobody",
            "x-request-id": "trace-123",
        },
    )
    assert status == 401  # an unknown sk-bf- key is always refused
    status, _, _ = await post(
        server,
        form(("model", "whisper-1"), ("file", b"RIFF")),
        headers={
            "Authorization": "Bearer sk-client-secret",
            "Cookie": "session=abc",
            "X-Forwarded-For": "10.0.0.1",
            "X-Custom": "hello",
            "x-request-id": "trace-123",
        },
    )
    assert status == 200
    sent = {name.lower() for name in upstream.last.headers}
    assert sent <= {
        "host",
        "authorization",
        "content-type",
        "content-length",
        "transfer-encoding",
        "x-request-id",
        "accept",
        "accept-encoding",
        "user-agent",
    }
    assert upstream.last.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert upstream.last.headers["x-request-id"] == "trace-123"


SECRET = "jwt-fault-secret-long-enough-for-hs256-0123"


def _rsa_pair() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


async def test_forged_and_stale_jwts_are_refused(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    private, public = _rsa_pair()
    config = provider_config(upstream)
    config["client"] = {"enforce_auth_on_inference": True}
    config["governance"] = {
        "virtual_keys": [
            {
                "id": "team",
                "value": "sk-bf-team-0123456789",
                "provider_configs": [{"provider": "openai"}],
            }
        ],
        "jwt": {"rs256_public_key": public, "audience": "proxy"},
    }
    server = await make_proxy(config)
    hour = datetime.timedelta(hours=1)
    now = datetime.datetime.now(datetime.UTC)
    good = {"vk": "team", "aud": "proxy", "exp": now + hour}

    def unsigned(claims: dict[str, Any]) -> str:
        header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(
            json.dumps({**claims, "exp": int((now + hour).timestamp())}).encode()
        ).rstrip(b"=")
        return f"{header.decode()}.{body.decode()}."

    def confused() -> str:
        # HS256 keyed with the RS256 public key: the classic algorithm confusion.
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(
            json.dumps(
                {"vk": "team", "aud": "proxy", "exp": int((now + hour).timestamp())}
            ).encode()
        ).rstrip(b"=")
        import hmac

        signature = hmac.new(public.encode(), header + b"." + body, hashlib.sha256).digest()
        return (
            f"{header.decode()}.{body.decode()}."
            f"{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
        )

    tokens = {
        "valid": jwt.encode(good, private, algorithm="RS256"),
        "alg none": unsigned(good),
        "hs256 with the public key": confused(),
        "expired": jwt.encode({**good, "exp": now - hour}, private, algorithm="RS256"),
        "other audience": jwt.encode({**good, "aud": "other"}, private, algorithm="RS256"),
    }
    statuses = {}
    for name, token in tokens.items():
        status, document, _ = await post(
            server,
            form(("model", "whisper-1"), ("file", b"RIFF")),
            headers={"Authorization": f"Bearer {token}"},
        )
        statuses[name] = status
        assert token not in json.dumps(document)
    assert statuses == {
        "valid": 200,
        "alg none": 401,
        "hs256 with the public key": 401,
        "expired": 401,
        "other audience": 401,
    }


async def test_no_credential_anywhere_the_suite_can_see(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    vk = "sk-bf-scan-team-0123456789"
    config = provider_config(upstream)
    config["governance"] = {
        "virtual_keys": [{"id": "scan", "value": vk, "provider_configs": [{"provider": "openai"}]}]
    }
    server = await make_proxy(config)
    seen: list[str] = []
    caplog.set_level("DEBUG")
    for respond in (None, echoing_the_key(401)):
        if respond is not None:
            upstream.respond = respond
        for headers in ({"x-bf-vk": vk}, {"x-bf-vk": vk + "x"}, {"Authorization": f"Bearer {vk}"}):
            async with aiohttp.ClientSession() as session:
                for model in ("whisper-1", vk):
                    async with session.post(
                        f"{base_url(server)}{URL}",
                        data=form(("model", model), ("file", b"RIFF")),
                        headers=headers,
                    ) as response:
                        seen.append(await response.text())
                        seen.append(json.dumps(dict(response.headers)))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url(server)}/metrics") as response:
            seen.append(await response.text())
        async with session.get(
            f"{base_url(server)}/v1/models", headers={"x-bf-vk": vk}
        ) as response:
            seen.append(await response.text())
    seen.extend(
        record.getMessage() + json.dumps(record.__dict__, default=str) for record in caplog.records
    )
    everything = "\n".join(seen)
    assert UPSTREAM_KEY not in everything
    assert vk not in everything
    assert len(seen) > 20


async def test_slow_headers_cannot_hold_a_connection(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = provider_config(upstream)
    config["proxy"] = {"keepalive_timeout_s": 1}
    process, url = await start_proxy_process(config, tmp_path)
    try:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(f"POST {URL} HTTP/1.1\r\nHost: proxy\r\n".encode())
        closed = False
        with ignoring_disconnects():
            for _ in range(20):  # a header line every 0.3 s, never the blank line
                writer.write(b"X-Slow: yes\r\n")
                await writer.drain()
                if reader.at_eof() or await _closed(reader):
                    closed = True
                    break
        writer.close()
    finally:
        process.terminate()
        await process.wait()
    assert closed
    assert time.monotonic() - started < 3


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.3) == b""
    except TimeoutError:
        return False


# --- the machine -----------------------------------------------------------------------------


async def _health(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as response:
        return response.status


async def test_spool_disk_full(upstream: FakeUpstream, tmp_path: Path) -> None:
    # A file-size limit makes the spool's writes fail as a full disk's do.
    config = provider_config(upstream)
    process, url = await start_proxy_process(
        config, tmp_path, limits={resource.RLIMIT_FSIZE: 1024 * 1024}
    )
    try:
        async with aiohttp.ClientSession() as session:
            big = form(("file", audio_bytes(4 * 1024 * 1024)), ("model", "whisper-1"))
            async with session.post(f"{url}{URL}", data=big) as response:
                document = json_of(await response.read())
                assert response.status == 503
            small = form(("file", b"RIFF"), ("model", "whisper-1"))
            async with session.post(f"{url}{URL}", data=small) as response:
                assert response.status == 200  # and it goes on serving
    finally:
        process.terminate()
        await process.wait()
    assert_error(
        document, status=503, code="spool_unavailable", error_type="api_error", bifrost=True
    )
    assert "send model before file" in document["error"]["message"]


async def test_open_file_limit_reached_and_recovered(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = provider_config(upstream)
    process, url = await start_proxy_process(config, tmp_path, limits={resource.RLIMIT_NOFILE: 64})
    port = int(url.rsplit(":", 1)[1])
    held = []
    try:
        body = raw_body(("model", b"whisper-1"), ("file", audio_bytes(200_000)))
        for _ in range(90):  # more connections than the proxy may have files
            with ignoring_disconnects():
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request_head(len(body)) + body[:1000])
                held.append(writer)
        await asyncio.sleep(0.5)
        for writer in held:
            writer.close()
        # Once the connections are gone it serves again, whole.
        for _ in range(100):
            with ignoring_disconnects():
                if await _health(url) == 200:
                    break
            await asyncio.sleep(0.1)
        status, document, _ = await post(url, form(("model", "whisper-1"), ("file", b"RIFF")))
        assert status == 200, document
        assert process.returncode is None
    finally:
        process.terminate()
        await process.wait()
