"""A committed turn as an ordinary request through the router and dispatch.

Each turn goes upstream as a 16-bit mono WAV named ``audio.wav`` with the
session's model, language and prompt, through the same dispatch as an HTTP
upload (retries, fallbacks, the provider's own streaming when it has one).
A provider with live passes transcribes its turns while they are spoken
(:mod:`.transcriber`); these routes are their fallback.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

from ..answers.events import DELTA
from ..audio.sources import BufferedAudio
from ..audio.wav_header import wav_bytes
from ..dispatch import Dispatcher, DispatchHooks, TranscriptionJob
from ..models import FormField, RequestFacts, TranscriptDelta, TranscriptDone
from ..router import Route
from .session_config import Transcription

FILENAME = "audio.wav"


@dataclass(frozen=True)
class TurnRequest:
    """What every turn's request is made of but its audio: the session's routes (primary,
    then fallbacks), its transcription settings, and the session it is part of (who
    asks, and the id its turns are numbered under)."""

    routes: Sequence[Route]
    transcription: Transcription
    session: RequestFacts = field(repr=False)

    def turn_facts(self, item: str) -> RequestFacts:
        """A new turn's request, a child of the session's."""
        session = self.session
        session.turns += 1
        return RequestFacts(
            started=time.monotonic(),
            request_id=f"{session.request_id}.{item}",
            request_type=session.request_type,
            kind="realtime.turn",
            parent_request_id=session.request_id,
            caller=session.caller,
            model_requested=self.transcription.model,
            routes=self.routes,
        )

    def fields(self, *, stream: bool) -> list[FormField]:
        """The form a turn is sent with."""
        transcription = self.transcription
        fields = [FormField("model", transcription.model)]
        if transcription.language:
            fields.append(FormField("language", transcription.language))
        if transcription.prompt:
            fields.append(FormField("prompt", transcription.prompt))
        fields.append(FormField("response_format", "json"))
        fields.append(FormField("stream", "true" if stream else "false"))
        return fields


async def transcribe_turn(
    dispatcher: Dispatcher,
    request: TurnRequest,
    pcm: bytes,
    turn: RequestFacts,
    hooks: DispatchHooks,
    *,
    stream: bool = True,
) -> AsyncGenerator[str | TranscriptDone, None]:
    """A turn's transcript: text deltas as the upstream streams them, then its answer;
    ``hooks`` are told of its upstream tries."""
    wav = wav_bytes(pcm)
    caller = turn.caller
    job = TranscriptionJob(
        request.routes,
        request.fields(stream=stream),
        BufferedAudio(wav, filename=FILENAME, content_type="audio/wav"),
        request_id=turn.request_id,
        api_key=caller.direct_key if caller is not None else None,
        hooks=hooks,
    )
    dispatch = await dispatcher.dispatch(job, len(wav))
    async with aclosing(dispatch.events()) as events:
        async for event in events:
            if isinstance(event, TranscriptDone):
                yield event
                return
            if isinstance(event, TranscriptDelta) and event.event.get("type") == DELTA:
                delta = event.event.get("delta")
                if isinstance(delta, str) and delta:
                    yield delta
