"""Fake upstreams: real aiohttp servers that record what reaches them, and what they answer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

UPSTREAM_KEY = "sk-upstream-secret-0123456789"


@dataclass
class ReceivedPart:
    """One part as the fake upstream received it."""

    name: str
    filename: str | None
    content_type: str | None
    value: str | None = None  # text parts
    size: int = 0  # file parts
    sha256: str = ""  # file parts
    data: bytes | None = None  # file parts, with FakeUpstream.keep_files


@dataclass
class ReceivedRequest:
    """One request as the fake upstream received it."""

    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    parts: list[ReceivedPart] = field(default_factory=list)
    complete: bool = False  # the body was read to its closing boundary
    raw_path: str = ""  # as sent, percent-encoding kept

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parts]

    def field(self, name: str) -> str | None:
        return next((p.value for p in self.parts if p.name == name), None)

    @property
    def file(self) -> ReceivedPart:
        return next(p for p in self.parts if p.name == "file")


Responder = Callable[[web.Request, ReceivedRequest], Awaitable[web.StreamResponse]]


async def transcript_json(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
    """What OpenAI answers, for each response_format."""
    fmt = received.field("response_format") or "json"
    text = f"heard {received.file.size} bytes"
    if fmt == "text":
        return web.Response(text=text + "\n", content_type="text/plain")
    if fmt == "srt":
        return web.Response(
            text=f"1\n00:00:00,000 --> 00:00:01,000\n{text}\n\n", content_type="text/plain"
        )
    if fmt == "vtt":
        return web.Response(
            text=f"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n{text}\n\n", content_type="text/plain"
        )
    document: dict[str, Any] = {"text": text, "usage": {"type": "duration", "seconds": 2}}
    if fmt == "verbose_json":
        document = {
            "task": "translate" if received.path.endswith("translations") else "transcribe",
            "language": "english",
            "duration": 2.0,
            "text": text,
            "segments": [
                {
                    "id": 0,
                    "seek": 0,
                    "start": 0.0,
                    "end": 2.0,
                    "text": text,
                    "tokens": [1, 2],
                    "temperature": 0.0,
                    "avg_logprob": -0.1,
                    "compression_ratio": 1.0,
                    "no_speech_prob": 0.01,
                }
            ],
            "usage": {"type": "duration", "seconds": 2},
        }
    return web.json_response(document)


class FakeUpstream:
    """An OpenAI-compatible transcription server that records what reaches it.

    It reads the body the way a real server does, part by part, hashing the
    file as it streams, so a test can assert byte-exact arrival without the
    upload being held anywhere.
    """

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.respond: Responder = transcript_json
        #: Hang up after reading this many bytes of a file, as a crashing upstream does.
        self.drop_after: int | None = None
        #: Set once a request's body has begun arriving.
        self.body_started = asyncio.Event()
        #: Set when a request ended without its closing boundary.
        self.aborted = asyncio.Event()
        #: Keep each file's bytes (for an upstream that must hear the audio).
        self.keep_files = False
        #: Refuse files larger than this with OpenAI's own 413 answer.
        self.max_file_bytes: int | None = None
        self.app = web.Application()
        for task in ("transcriptions", "translations"):
            self.app.router.add_post(f"/v1/audio/{task}", self._handle)
            self.app.router.add_post(
                f"/openai/deployments/{{deployment}}/audio/{task}", self._handle
            )
        self.server: TestServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    @property
    def last(self) -> ReceivedRequest:
        return self.requests[-1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = ReceivedRequest(
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            raw_path=request.raw_path,
        )
        self.requests.append(received)
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, BodyPartReader)
                self.body_started.set()
                item = ReceivedPart(
                    name=part.name or "",
                    filename=part.filename,
                    content_type=part.headers.get("Content-Type"),
                )
                received.parts.append(item)
                if part.filename is None:
                    item.value = (await part.read()).decode()
                    continue
                digest = hashlib.sha256()
                kept = bytearray()
                while chunk := await part.read_chunk(1024 * 1024):
                    digest.update(chunk)
                    item.size += len(chunk)
                    if self.keep_files:
                        kept += chunk
                    if self.drop_after is not None and item.size >= self.drop_after:
                        assert request.transport is not None
                        request.transport.abort()
                        return web.Response()
                item.sha256 = digest.hexdigest()
                item.data = bytes(kept) if self.keep_files else None
            received.complete = True
        except BaseException:  # a cancelled handler too: the client went away
            self.aborted.set()
            raise
        if self.max_file_bytes is not None and received.file.size > self.max_file_bytes:
            return openai_too_large(received.file.size, self.max_file_bytes)
        return await self.respond(request, received)


def openai_too_large(size: int, limit: int) -> web.Response:
    """OpenAI's answer to an upload over its size limit."""
    return web.json_response(
        {
            "error": {
                "message": f"Maximum content size limit ({limit}) exceeded ({size} bytes read)",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
        status=413,
    )


def provider_config(upstream: FakeUpstream, **network: Any) -> dict[str, Any]:
    """A config with one OpenAI-compatible provider in front of ``upstream``."""
    return {
        "providers": {
            "openai": {
                "keys": [{"name": "main", "value": UPSTREAM_KEY, "models": ["*"]}],
                "network_config": {"base_url": upstream.base_url, **network},
            }
        }
    }


def azure_config(upstream: FakeUpstream) -> dict[str, Any]:
    """A config with one Azure provider in front of ``upstream``: whisper-1 deployed as
    my-whisper."""
    return {
        "providers": {
            "azure": {
                "keys": [
                    {
                        "value": "azure-secret-key",
                        "azure_key_config": {
                            "endpoint": upstream.base_url,
                            "deployments": {"whisper-1": "my-whisper"},
                            "api_version": "2024-10-21",
                        },
                    }
                ]
            }
        }
    }


def two_providers(
    primary: FakeUpstream, backup: FakeUpstream, spool_dir: Path | None = None, **network: Any
) -> dict[str, Any]:
    fast = {"retry_backoff_initial": 1, "retry_backoff_max": 20, **network}
    config: dict[str, Any] = {
        "providers": {
            "openai": {
                "keys": [{"value": UPSTREAM_KEY}],
                "network_config": {"base_url": primary.base_url, **fast},
            },
            "backup": {
                "keys": [{"value": "sk-backup"}],
                "custom_provider_config": {"base_provider_type": "openai"},
                "network_config": {"base_url": backup.base_url},
            },
        }
    }
    if spool_dir is not None:
        config["proxy"] = {"spool_dir": str(spool_dir)}
    return config


# Responders: what a test sets as ``FakeUpstream.respond``. Besides the working answers
# (transcript_json, streaming), upstreams that answer in the ways real ones break.


def answering(
    status: int,
    body: bytes | dict[str, Any],
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Responder:
    """An upstream that answers every request with ``body`` (a dict is sent as JSON)."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        return web.Response(body=raw, status=status, content_type=content_type, headers=headers)

    return respond


def failing(status: int, headers: dict[str, str] | None = None) -> Responder:
    """An upstream that answers every request with an OpenAI-shaped error: ``status``, the
    message ``primary says <status>``, type ``server_error``."""

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        return web.json_response(
            {"error": {"message": f"primary says {status}", "type": "server_error"}},
            status=status,
            headers=headers,
        )

    return respond


def html_page(status: int) -> Responder:
    """An upstream behind a load balancer that answers with its HTML error page, as
    ``<html><body><h1>502 Bad Gateway</h1></body></html>``."""
    page = f"<html><body><h1>{status} {HTTPStatus(status).phrase}</h1></body></html>"
    return answering(status, page.encode(), "text/html")


def hanging(seconds: float = 30.0, *, reached: asyncio.Event | None = None) -> Responder:
    """An upstream that reads the whole request, then says nothing for ``seconds`` (longer
    than the timeout under test) before answering ``{"text": "late"}``; ``reached`` is set
    as soon as a request has been read."""

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        if reached is not None:
            reached.set()
        await asyncio.sleep(seconds)
        return web.json_response({"text": "late"})

    return respond


def endless_stream(*, gone: asyncio.Event | None = None) -> Responder:
    """An upstream whose event stream never ends: a delta every 10 ms, for ever. ``gone`` is
    set when the proxy hangs up on it (its handler cancelled, or the connection lost)."""

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(b'data: {"type":"transcript.text.delta","delta":"x"}\n\n')
                await asyncio.sleep(0.01)
        except (asyncio.CancelledError, ConnectionError):
            if gone is not None:
                gone.set()
            raise

    return respond


def endless_body() -> Responder:
    """An upstream whose 200 JSON answer never ends: spaces, a MiB at a time, until the proxy
    hangs up."""

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with _quiet_when_the_proxy_hangs_up():
            while True:
                await response.write(b" " * 1024 * 1024)
        return response

    return respond


def dripping(
    body: bytes,
    *,
    piece: int = 1,
    pause_s: float = 0.5,
    content_type: str = "application/json",
) -> Responder:
    """An upstream that sends its 200 answer ``body`` ``piece`` bytes at a time, pausing
    ``pause_s`` after each: never silent for long, slow to finish."""

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        with _quiet_when_the_proxy_hangs_up():
            for start in range(0, len(body), piece):
                await response.write(body[start : start + piece])
                await asyncio.sleep(pause_s)
            await response.write_eof()
        return response

    return respond


def resetting(
    sent: bytes | None = None,
    *,
    content_type: str = "application/json",
    content_length: int | None = None,
    linger_s: float = 0.0,
) -> Responder:
    """An upstream whose connection breaks mid-answer: it sends a 200's head (declaring
    ``content_length``, if given) and ``sent``, waits ``linger_s``, then resets the
    connection. With ``sent`` None it hangs up before any answer at all."""

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        assert request.transport is not None
        if sent is None:
            request.transport.abort()
            return web.Response()
        response = web.StreamResponse(headers={"Content-Type": content_type})
        if content_length is not None:
            response.content_length = content_length
        await response.prepare(request)
        await response.write(sent)
        if linger_s:
            await asyncio.sleep(linger_s)
        request.transport.abort()
        return response

    return respond


def redirecting(location: str) -> Responder:
    """An upstream that answers every request with a 307 to ``location``."""

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(location)

    return respond


def echoing_the_key(status: int = 401) -> Responder:
    """An upstream that quotes the credential it was sent, as some do: in an error (``status``
    400 and up), the Authorization header whole in the message and the bare key as the code
    and the param; in a success, the key in the text and in a field of its own."""

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        authorization = request.headers.get("Authorization", "")
        key = authorization.removeprefix("Bearer ")
        document: dict[str, Any]
        if status >= 400:
            error = {
                "message": f"Incorrect API key: {authorization}",
                "type": "invalid_request_error",
                "code": key,
                "param": key,
            }
            document = {"error": error}
        else:
            document = {"text": f"sent {key}", "key": key}
        return web.json_response(document, status=status)

    return respond


def _quiet_when_the_proxy_hangs_up() -> contextlib.suppress:
    """A responder writing to a proxy that has gone (or cancelled by it) just stops."""
    return contextlib.suppress(OSError, asyncio.CancelledError)


def openai_events(words: list[str], *, usage: bool = True) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"type": "transcript.text.delta", "delta": word, "logprobs": [{"token": word}]}
        for word in words
    ]
    done: dict[str, Any] = {"type": "transcript.text.done", "text": "".join(words)}
    if usage:
        done["usage"] = {"type": "tokens", "input_tokens": 7, "output_tokens": 3}
    return [*events, done]


def streaming(
    events: Sequence[dict[str, Any] | bytes],
    *,
    before: Callable[[int], Awaitable[None]] | None = None,
) -> Callable[[web.Request, ReceivedRequest], Awaitable[web.StreamResponse]]:
    """An upstream that answers with ``events`` as SSE, calling ``before(i)`` before each."""

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, event in enumerate(events):
            if before is not None:
                await before(index)
            payload = event if isinstance(event, bytes) else orjson.dumps(event)
            await response.write(b"data: " + payload + b"\n\n")
        await response.write_eof()
        return response

    return respond
