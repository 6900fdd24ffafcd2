"""A provider in the test's own process, for the router, dispatch, cache and long audio.

It is a real implementation of the :class:`~proxy.providers.base.Provider`
protocol, handed to ``create_app(config, providers=...)`` or to the classes
directly: it reads each call's upload to its end (as an HTTP upstream reads
its request body before it answers), records what it heard, and plays the
next step of its script.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass

from proxy.config import NetworkConfig
from proxy.errors import ProxyError
from proxy.models import FormField, TranscriptDelta, TranscriptDone, TranscriptEvent, UpstreamCall
from proxy.providers.base import Capabilities

#: One call's part of the script: an error raised before any event, or the
#: events to give (an error among them is raised at its place).
Step = ProxyError | Sequence[TranscriptEvent | ProxyError]


@dataclass(frozen=True)
class Heard:
    """One call, as the provider got it."""

    model: str
    fields: list[FormField]
    audio: bytes
    filename: str
    request_id: str | None
    api_key: str | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.audio).hexdigest()


def answer(text: str, **document: object) -> TranscriptDone:
    """A whole JSON answer."""
    return TranscriptDone(raw=b"", document={"text": text, **document})


def deltas(*words: str) -> list[TranscriptEvent]:
    """A streamed answer: a delta per word, then the done event."""
    events: list[TranscriptEvent] = [
        TranscriptDelta({"type": "transcript.text.delta", "delta": w}) for w in words
    ]
    return [*events, answer("".join(words))]


class ScriptedProvider:
    """A provider whose every call plays the next step of ``script``, then says what it heard.

    Once the script is used up, each call answers ``heard N bytes``.
    """

    def __init__(
        self,
        name: str = "openai",
        script: Iterable[Step] = (),
        *,
        max_retries: int = 0,
        upload_limit: int | None = None,
        models: Sequence[str] = (),
    ) -> None:
        self._name = name
        self.script: deque[Step] = deque(script)
        self._network = NetworkConfig(
            base_url="", max_retries=max_retries, retry_backoff_initial_ms=1, retry_backoff_max_ms=8
        )
        self._upload_limit = upload_limit
        self._models = tuple(models)
        #: Every call, in order.
        self.calls: list[Heard] = []
        self.started = False
        self.closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def network(self) -> NetworkConfig:
        return self._network

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(streams=True, max_upload=self._upload_limit, takes_client_keys=True)

    @property
    def sends_back_raw_response(self) -> bool:
        return False

    def lists(self, model: str) -> bool:
        return model in self._models

    def serves(self, model: str) -> bool:
        return True

    def deployment_of(self, model: str) -> str:
        return model

    def listed_models(self) -> list[str]:
        return list(self._models)

    async def start(self) -> None:
        self.started = True

    async def aclose(self) -> None:
        self.closed = True

    async def transcribe(self, call: UpstreamCall) -> AsyncGenerator[TranscriptEvent, None]:
        heard = bytearray()
        async for piece in call.audio.pieces():
            heard += piece
        self.calls.append(
            Heard(
                model=call.model,
                fields=[*call.fields, *call.audio.trailing_fields],
                audio=bytes(heard),
                filename=call.audio.filename,
                request_id=call.request_id,
                api_key=call.api_key,
            )
        )
        step = self.script.popleft() if self.script else [answer(f"heard {len(heard)} bytes")]
        if isinstance(step, ProxyError):
            raise step
        for event in step:
            if isinstance(event, ProxyError):
                raise event
            yield event
