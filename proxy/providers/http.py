"""What every HTTP transcription API shares: a multipart POST and an answer to read.

OpenAI, every OpenAI-compatible server and Azure OpenAI take the same form
and answer the same way; they differ in the URL and the header that carries
the key, which is all an adapter says (:meth:`HttpProvider.target`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import replace

import aiohttp
import orjson
from multidict import CIMultiDict

from ..answers.sse import read_events
from ..config import KeyConfig, NetworkConfig, ProviderConfig
from ..errors import BadGatewayError, GatewayTimeoutError, UpstreamError
from ..metrics import Metrics
from ..models import Task, TranscriptDone, TranscriptEvent, UpstreamCall
from .base import Capabilities
from .key_pool import KeyPool
from .redaction import Redactor
from .stream_events import StreamTranslator
from .upstream_form import UpstreamBody

#: A transcript is text; an answer larger than this is not one.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
_CONNECT_TIMEOUT_S = 10.0
_MAX_ERROR_MESSAGE = 500
_MIB = 1024 * 1024
#: Which of the headers hooks add to a call (``UpstreamCall.headers``) reach the upstream:
#: the W3C trace context's, so that the upstream's spans join the request's trace.
PROPAGATED_HEADERS = frozenset({"traceparent", "tracestate"})


def websocket_url(base_url: str) -> str:
    """``base_url`` with its scheme for a WebSocket (https to wss, http to ws)."""
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://") :]
    if base_url.startswith("http://"):
        return "ws://" + base_url[len("http://") :]
    return base_url


class HttpProvider:
    """An upstream reached by ``POST``-ing the transcription form.

    Whatever it answers is passed through ``redactor`` before it is read
    (by default, one of this provider's own keys; the app gives every
    provider's, as an upstream may quote any key it has seen).
    """

    def __init__(
        self,
        config: ProviderConfig,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        timeout_per_mib_s: float = 2.0,
        redactor: Redactor | None = None,
    ) -> None:
        self._config = config
        self._session = session
        self._keys = KeyPool(config.name, config.keys)
        self._redactor = redactor if redactor is not None else Redactor.of([config])
        # This provider's series, looked up once rather than on every request.
        self._ttfb = metrics.upstream_ttfb.labels(provider=config.name)
        self._audio_bytes_out = metrics.audio_bytes_out.labels(provider=config.name)
        self._idle_s = config.network.request_timeout_s
        self._per_mib_s = timeout_per_mib_s
        # Only the connection attempt is timed by aiohttp; the upstream's
        # silences are timed by _Deadline and _idle_limited, which know an
        # upload's size and that a stream must not be cut while it flows.
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(_CONNECT_TIMEOUT_S, self._idle_s)
        )

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def network(self) -> NetworkConfig:
        return self._config.network

    @property
    def capabilities(self) -> Capabilities:
        config = self._config
        return Capabilities(
            streams=self.streams,
            relays_realtime=config.realtime,
            max_upload=config.max_upload_bytes,
            takes_client_keys=bool(config.keys),
        )

    #: Whether the upstream answers ``stream=true`` with events (OpenAI's gpt-4o family do).
    streams = True

    @property
    def sends_back_raw_response(self) -> bool:
        return self._config.send_back_raw_response

    def lists(self, model: str) -> bool:
        return self._config.lists(model)

    def serves(self, model: str) -> bool:
        return not self._config.keys or any(key.serves(model) for key in self._config.keys)

    def deployment_of(self, model: str) -> str:
        return model

    def listed_models(self) -> list[str]:
        return list(dict.fromkeys(m for key in self._config.keys for m in key.listed_models()))

    async def start(self) -> None:
        """Nothing to prepare: the app's session is shared."""

    async def aclose(self) -> None:
        """Nothing to release: the app closes its session."""

    def target(
        self, model: str, key: KeyConfig | None, task: Task = "transcription"
    ) -> tuple[str, dict[str, str]]:
        """The URL to post ``task`` to and the headers that carry ``key``."""
        raise NotImplementedError

    @property
    def redactor(self) -> Redactor:
        """What blots keys out of this provider's answers (its realtime frames too)."""
        return self._redactor

    def realtime_target(self, model: str, key: KeyConfig | None) -> tuple[str, dict[str, str]]:
        """The WebSocket URL of the upstream's Realtime API and the headers that carry ``key``."""
        raise NotImplementedError

    async def open_realtime(
        self, model: str, api_key: str | None = None, *, named_deployment: bool = False
    ) -> aiohttp.ClientWebSocketResponse:
        """A transcription session of the upstream's own, opened with our key (or the
        client's, with ``allow_direct_keys``). Its refusal is raised with its status."""
        key = self._keys.pick(model, named_deployment=named_deployment) if self._keys else None
        if api_key is not None:
            key = replace(key or KeyConfig(value=""), value=api_key)
        url, headers = self.realtime_target(model, key)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                # The heartbeat is how an upstream gone silent (not merely quiet:
                # a session may wait minutes for speech) is found out.
                return await self._session.ws_connect(
                    url,
                    headers=headers,
                    timeout=aiohttp.ClientWSTimeout(ws_close=_CONNECT_TIMEOUT_S),
                    heartbeat=self._idle_s,
                    max_msg_size=0,
                )
        except aiohttp.WSServerHandshakeError as exc:
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            if retry_after:
                retry_after = self._redactor.with_secret(api_key).text(retry_after)
            raise UpstreamError(
                exc.status,
                f"provider {self.name} refused the realtime session ({exc.status})",
                code="upstream_refused_session",
                headers={"Retry-After": retry_after} if retry_after else None,
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BadGatewayError(
                f"provider {self.name}'s realtime API could not be reached",
                code="upstream_unreachable",
            ) from exc

    async def transcribe(self, call: UpstreamCall) -> AsyncGenerator[TranscriptEvent, None]:
        key = (
            self._keys.pick(call.model, named_deployment=call.named_deployment)
            if self._keys
            else None
        )
        if call.api_key is not None:
            key = replace(key or KeyConfig(value=""), value=call.api_key)
        # The client's own key is blotted out of the answer too: it may end up
        # in a log, a cache entry or another client's eyes.
        redactor = self._redactor.with_secret(call.api_key)
        url, headers = self.target(call.model, key, call.task)
        deadline = _Deadline(self._idle_s, self._per_mib_s)
        body = UpstreamBody(call, pacer=deadline)
        headers[aiohttp.hdrs.CONTENT_TYPE] = body.content_type
        if body.length is not None:
            headers[aiohttp.hdrs.CONTENT_LENGTH] = str(body.length)
        if call.request_id:
            headers["x-request-id"] = call.request_id
        for name, value in call.headers.items():
            if name.lower() in PROPAGATED_HEADERS and name not in headers:
                headers[name] = value
        started = time.monotonic()
        try:
            async with deadline:
                # Never followed: a redirect could take the audio and our key
                # to another host.
                response = await self._session.post(
                    url,
                    data=body.stream(),
                    headers=headers,
                    timeout=self._client_timeout,
                    allow_redirects=False,
                )
            self._ttfb.observe(time.monotonic() - started)
            async with response:
                if 300 <= response.status < 400:
                    raise BadGatewayError(
                        f"the upstream answered with a redirect ({response.status}); "
                        "redirects are not followed",
                        code="upstream_redirect",
                    )
                if response.status >= 400:
                    raw = redactor.bytes(await _read_capped(response, self._idle_s))
                    refused = (
                        response.status in (401, 403) and key is not None and call.api_key is None
                    )
                    raise upstream_error(
                        response.status,
                        raw,
                        _redacted_headers(response.headers, redactor),
                        # Another key may well be accepted where this one was not.
                        retryable=self._keys.refused(key, call.model) if refused and key else None,
                    )
                if response.content_type == "text/event-stream":
                    stream = _stream_events(response, self._idle_s, redactor)
                    async with aclosing(stream) as events:
                        async for event in events:
                            yield event
                    return
                raw = redactor.bytes(await _read_capped(response, self._idle_s))
                yield parse_answer(response.content_type, raw)
        except aiohttp.ClientError as exc:
            # A failure on the client's side of the body surfaces here as a
            # broken upstream request; the real cause is what the client sees.
            if body.failure is not None:
                raise body.failure from None
            raise _transport_error(exc, self.name) from exc
        except TimeoutError as exc:
            raise GatewayTimeoutError(
                f"provider {self.name} did not answer in time", retryable=True
            ) from exc
        finally:
            self._audio_bytes_out.inc(body.audio_bytes)


class _Deadline:
    """Times the upstream, never the client: its silence while the upload is
    handed to it, then, once all is sent, the time to the first byte of its
    answer, which grows with the upload (longer audio, longer to transcribe).
    """

    def __init__(self, idle_s: float, per_mib_s: float) -> None:
        self._idle_s = idle_s
        self._per_mib_s = per_mib_s
        self._timeout = asyncio.timeout(idle_s)
        self._loop = asyncio.get_running_loop()

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(self, *exc_info: object) -> None:
        await self._timeout.__aexit__(*exc_info)  # type: ignore[arg-type]

    def waiting_for_client(self) -> None:
        self._timeout.reschedule(None)

    def waiting_for_upstream(self) -> None:
        self._timeout.reschedule(self._loop.time() + self._idle_s)

    def sent(self, size: int) -> None:
        self._timeout.reschedule(self._loop.time() + self._idle_s + self._per_mib_s * size / _MIB)


async def _idle_limited(chunks: AsyncIterator[bytes], idle_s: float) -> AsyncGenerator[bytes, None]:
    """``chunks``, failing if the upstream is silent for ``idle_s``; never cut while they flow."""
    while True:
        async with asyncio.timeout(idle_s):
            chunk = await anext(chunks, None)
        if chunk is None:
            return
        yield chunk


async def _stream_events(
    response: aiohttp.ClientResponse, idle_s: float, redactor: Redactor
) -> AsyncGenerator[TranscriptEvent, None]:
    """The transcript events of an upstream event stream, each as soon as it arrives."""
    translator = StreamTranslator()
    try:
        async with (
            aclosing(_idle_limited(aiter(response.content), idle_s)) as chunks,
            aclosing(read_events(chunks)) as datas,
        ):
            async for data in datas:
                # Event by event, not chunk by chunk: a key may straddle two chunks.
                for event in translator.feed(redactor.bytes(data)):
                    yield event
                if translator.done is not None:
                    return
    except ValueError as exc:  # an over-long line or event
        raise BadGatewayError(f"the upstream stream is malformed: {exc}") from exc
    raise BadGatewayError("the upstream stream ended before the transcript was done")


async def _read_capped(response: aiohttp.ClientResponse, idle_s: float) -> bytes:
    """A whole (not streamed) answer: at most MAX_ANSWER_BYTES, within ``idle_s`` in all.

    An answer that is not a stream is sent at once when it is ready; one that
    drips in a byte at a time would never trip a per-read timeout.
    """
    body = bytearray()
    async with asyncio.timeout(idle_s):
        async for chunk in response.content.iter_chunked(256 * 1024):
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise BadGatewayError(
                    f"the upstream answer is larger than {MAX_ANSWER_BYTES} bytes",
                    retryable=False,
                )
    return bytes(body)


def parse_answer(media_type: str, raw: bytes) -> TranscriptDone:
    """Read a successful upstream answer by its Content-Type."""
    if media_type.startswith("text/") and media_type != "text/event-stream":
        try:
            return TranscriptDone(raw=raw, text=raw.decode())
        except UnicodeDecodeError:
            raise BadGatewayError("the upstream answered with text that is not UTF-8") from None
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadGatewayError(
            f"the upstream answered with an unreadable {media_type or 'untyped'} body"
        ) from None
    if not isinstance(document, dict):
        raise BadGatewayError("the upstream answered with JSON that is not an object")
    return TranscriptDone(raw=raw, document=document)


def upstream_error(
    status: int,
    raw: bytes,
    headers: Mapping[str, str],
    *,
    retryable: bool | None = None,
) -> UpstreamError:
    """An upstream's error answer, its type, code, message and param kept.

    ``raw`` and ``headers`` are taken as they are: keys an upstream quotes are
    to be blotted out of them first (see :class:`Redactor`).
    """
    message, error_type, code, param = _error_details(raw)
    passed_headers: dict[str, str] = {}
    if retry_after := headers.get(aiohttp.hdrs.RETRY_AFTER):
        passed_headers[aiohttp.hdrs.RETRY_AFTER] = retry_after
    return UpstreamError(
        status,
        message or f"the upstream answered with status {status}",
        error_type=error_type,
        code=code,
        param=param,
        headers=passed_headers,
        retryable=retryable,
    )


def _redacted_headers(headers: Mapping[str, str], redactor: Redactor) -> CIMultiDict[str]:
    """``headers`` with no key in them: an error passes some on to the client."""
    return CIMultiDict((name, redactor.text(value)) for name, value in headers.items())


def _error_details(raw: bytes) -> tuple[str, str | None, str | None, str | None]:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace").strip()[:_MAX_ERROR_MESSAGE], None, None, None
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, dict):  # OpenAI, Groq, vLLM, Azure
            return (
                _text(error.get("message")),
                _text(error.get("type")) or None,
                _text(error.get("code")) or None,
                _text(error.get("param")) or None,
            )
        for key in ("detail", "message", "error"):  # FastAPI servers (speaches), others
            if key in document:
                return _text(document[key]), None, None, None
    return raw.decode(errors="replace").strip()[:_MAX_ERROR_MESSAGE], None, None, None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value[:_MAX_ERROR_MESSAGE]
    return orjson.dumps(value).decode()[:_MAX_ERROR_MESSAGE]


def _transport_error(
    exc: aiohttp.ClientError, provider: str
) -> BadGatewayError | GatewayTimeoutError:
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return GatewayTimeoutError(f"provider {provider} did not answer in time", retryable=True)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        # Refused, never retried: the same certificate would be refused again.
        return BadGatewayError(
            f"provider {provider}'s TLS certificate could not be verified; refusing to send to it"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return BadGatewayError(f"provider {provider} is unreachable", retryable=True)
    return BadGatewayError(
        f"provider {provider} broke off or answered with something unreadable", retryable=True
    )
