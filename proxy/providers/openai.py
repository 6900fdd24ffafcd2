"""The adapter for OpenAI's transcription API and every server compatible with it.

Groq, vLLM, speaches and LocalAI differ from OpenAI only in their base URL and
key, so one adapter serves them all.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping

import aiohttp
import orjson

from ..config import ProviderConfig
from ..errors import BadGatewayError, GatewayTimeoutError, InvalidRequestError, UpstreamError
from ..models import TranscriptDone, TranscriptEvent, UpstreamCall
from ..multipart import UpstreamBody
from ..sse import read_events
from ..transcripts import StreamTranslator

#: A transcript is text; an answer larger than this is not one.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
_CONNECT_TIMEOUT_S = 10.0
_MAX_ERROR_MESSAGE = 500


class OpenAICompatibleProvider:
    """``POST {base_url}/v1/audio/transcriptions`` with a Bearer key."""

    def __init__(self, config: ProviderConfig, session: aiohttp.ClientSession) -> None:
        self._config = config
        self._session = session
        self._url = f"{config.network.base_url}/v1/audio/transcriptions"
        timeout_s = config.network.request_timeout_s
        # No total timeout: a large upload may take as long as it takes. The
        # read timeout starts once the body is sent, so it bounds only the
        # upstream's silence while it transcribes.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(_CONNECT_TIMEOUT_S, timeout_s), sock_read=timeout_s
        )

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def sends_back_raw_response(self) -> bool:
        return self._config.send_back_raw_response

    def lists(self, model: str) -> bool:
        return self._config.lists(model)

    def serves(self, model: str) -> bool:
        return any(key.serves(model) for key in self._config.keys)

    def _key_for(self, model: str) -> str | None:
        keys = [key for key in self._config.keys if key.serves(model)]
        if self._config.keys and not keys:
            raise InvalidRequestError(
                f"model {model} is not available on provider {self.name}",
                code="model_not_found",
                param="model",
            )
        return keys[0].value if keys else None

    async def transcribe(self, call: UpstreamCall) -> AsyncGenerator[TranscriptEvent, None]:
        key = self._key_for(call.model)
        body = UpstreamBody(call)
        headers = {aiohttp.hdrs.CONTENT_TYPE: body.content_type}
        if key:
            headers[aiohttp.hdrs.AUTHORIZATION] = f"Bearer {key}"
        if body.length is not None:
            headers[aiohttp.hdrs.CONTENT_LENGTH] = str(body.length)
        try:
            async with self._session.post(
                self._url, data=body.stream(), headers=headers, timeout=self._timeout
            ) as response:
                if response.status >= 400:
                    raw = await _read_capped(response)
                    raise upstream_error(response.status, raw, response.headers, secret=key)
                if response.content_type == "text/event-stream":
                    async for event in _stream_events(response):
                        yield event
                    return
                yield parse_answer(response.content_type, await _read_capped(response))
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


async def _stream_events(response: aiohttp.ClientResponse) -> AsyncIterator[TranscriptEvent]:
    """The transcript events of an upstream event stream, each as soon as it arrives."""
    translator = StreamTranslator()
    try:
        async for data in read_events(response.content):
            for event in translator.feed(data):
                yield event
            if translator.done is not None:
                return
    except ValueError as exc:  # an over-long line or event
        raise BadGatewayError(f"the upstream stream is malformed: {exc}") from exc
    raise BadGatewayError("the upstream stream ended before the transcript was done")


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(256 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise BadGatewayError(
                f"the upstream answer is larger than {MAX_ANSWER_BYTES} bytes", retryable=False
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
    status: int, raw: bytes, headers: Mapping[str, str], *, secret: str | None = None
) -> UpstreamError:
    """An upstream's error answer, its type, code, message and param kept.

    Some upstreams quote the key they were sent in their message; ``secret``
    is blotted out wherever it appears.
    """
    message, error_type, code, param = _error_details(raw)
    if secret:
        message = message.replace(secret, "***")
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
    )


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
    if isinstance(exc, aiohttp.ClientConnectorError):
        return BadGatewayError(f"provider {provider} is unreachable", retryable=True)
    return BadGatewayError(
        f"provider {provider} broke off or answered with something unreadable", retryable=True
    )
