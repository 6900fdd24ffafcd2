"""One job run as a synchronous request is: its spool file replayed as the upload.

The job's upload is a :class:`~proxy.audio.sources.SpooledAudio` over its spool
file, its fields are the form's, and it goes through the app's plugins
(governance admits it and settles what it used, the cache, the request log
with the submitting request as its row's parent, tracing, metrics) and the
same dispatch (long audio cut into chunks, retries, fallbacks). The result is
the body the synchronous request would have been answered with, ``extra_fields``
included; a failure is its error body and status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from ..answers.events import final_answer
from ..answers.formats import JSON_TYPE
from ..answers.responses import transcription_response
from ..answers.writer import RAW_RESPONSE_HEADER
from ..app_state import AUTH_KEY, DISPATCHER_KEY, PIPELINE_KEY, ROUTER_KEY
from ..audio.sources import SpooledAudio
from ..audio.spool import Spool
from ..dispatch import TranscriptionJob
from ..errors import BadGatewayError, ProxyError, error_body
from ..form.fields import fallbacks_of, first_value
from ..form.reader import TranscriptionForm
from ..governance.credentials import ADMIN, ANONYMOUS, Caller
from ..models import RequestFacts, TranscriptDone
from ..plugins.base import Answer, PipelineRun
from .queue import Job, Outcome
from .spool import JobSpool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeasuredLength:
    """The upload's length as its container told it while it was read at submit (the
    :class:`~proxy.models.AudioLength` a replay meters by, without reading it again)."""

    declared_s: float | None
    measured_s: float | None
    floor_s: float

    def finish(self) -> float | None:
        """The length the container measured."""
        return self.measured_s

    def declared(self) -> float | None:
        """The length the container's header declared."""
        return self.declared_s

    def floor(self, size: int) -> float:
        """The fewest seconds the upload's bytes hold (measured for its whole size)."""
        return self.floor_s


class SpoolMissingError(Exception):
    """The job's spool file is not on this replica (its spool is not shared)."""


class JobRunner:
    """Runs jobs through the app's pipeline and dispatch."""

    def __init__(
        self,
        app: web.Application,
        spool: JobSpool,
        release: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        self._app = app
        self._spool = spool
        self._release = release
        #: The runs in progress, by job id.
        self._running: dict[str, RequestFacts] = {}

    def hand_back(self, job_id: str) -> None:
        """The run of ``job_id`` is about to be cancelled and the job run again (this
        replica is stopping, or another took the job over): what its submit reserved is
        left for that run to settle, not settled by this one."""
        if (facts := self._running.get(job_id)) is not None:
            facts.reservation_kept = True

    async def run(self, job: Job) -> Outcome:
        """``job``'s outcome: the synchronous answer's body, or its error's.

        The run settles what the job's submit reserved (governance takes it up, and
        settles it when the run ends), or gives it back when it was refused before
        governance did. Raises :class:`SpoolMissingError` when its upload is not here.
        """
        facts = RequestFacts(started=time.monotonic(), request_id=job.id, headers=job.headers)
        facts.reservation = job.reservation
        facts.request_type = facts.task = job.task
        facts.kind = "async.transcription" if job.task == "transcription" else "async.translation"
        facts.parent_request_id = job.request_id
        facts.model_requested = job.model
        facts.audio_bytes = job.size
        length = job.length
        facts.audio_length = MeasuredLength(
            length.get("declared"), length.get("measured"), length.get("floor") or 0.0
        )
        path = self._spool.path_of(job.id)
        try:
            file = await asyncio.to_thread(open, path, "rb", buffering=0)
        except FileNotFoundError:
            raise SpoolMissingError(path) from None
        audio = SpooledAudio(
            Spool.adopt(file), filename=job.filename, content_type=job.content_type
        )
        self._running[job.id] = facts
        try:
            facts.caller = self._caller(job)
            async with self._app[PIPELINE_KEY].run(facts) as run:
                return await self._answer(job, facts, run, audio)
        except ProxyError as error:
            return _failed(error, facts)
        except Exception:
            log.exception("job %s failed", job.id)
            return _failed(ProxyError("internal error"), facts)
        finally:
            if self._running.get(job.id) is facts:
                del self._running[job.id]
            await audio.aclose()
            # Governance settles what it took up (and so says what was used); a run
            # refused before it did (its key gone, its model unknown) gives it back.
            if facts.usage is None and not facts.reservation_kept:
                await self._release(job.reservation)

    def _caller(self, job: Job) -> Caller:
        """Who submitted the job, as they are now (a key deactivated since is refused)."""
        if job.virtual_key_id is not None:
            return self._app[AUTH_KEY].by_id(job.virtual_key_id)
        return ADMIN if job.caller_kind == "admin" else ANONYMOUS

    async def _answer(
        self, job: Job, facts: RequestFacts, run: PipelineRun, audio: SpooledAudio
    ) -> Outcome:
        app = self._app
        fields = list(job.fields)
        facts.form = TranscriptionForm(fields=fields, audio=audio, audio_sha256=job.sha256)
        routes = facts.routes = app[ROUTER_KEY].plan(job.model, fallbacks_of(fields))
        assert facts.caller is not None
        facts.caller = app[AUTH_KEY].on_routes(facts.caller, routes)
        given = await run.before(facts)
        answer = given if given is not None else await self._dispatched(job, facts, run, audio)
        if isinstance(answer, Answer):
            facts.given_by = (answer.provider, answer.model)
            done = answer.done
        else:
            done = answer
        facts.answer = done
        served = facts.served
        response = transcription_response(
            done,
            facts,
            response_format=first_value(fields, "response_format") or "json",
            raw_response=(served is not None and served.route.provider.sends_back_raw_response)
            or job.headers.get(RAW_RESPONSE_HEADER, "").strip().lower() == "true",
        )
        return Outcome("completed", 200, result=_result_of(response))

    async def _dispatched(
        self, job: Job, facts: RequestFacts, run: PipelineRun, audio: SpooledAudio
    ) -> TranscriptDone | Answer:
        """The upstream's answer (or one a plugin gave while it was in flight)."""
        assert facts.form is not None
        fields = facts.form.fields
        dispatch = await self._app[DISPATCHER_KEY].dispatch(
            TranscriptionJob(
                facts.routes, fields, audio, request_id=job.id, task=job.task, hooks=run
            ),
            None,
        )
        async with aclosing(dispatch.events()) as events:
            first = await run.early.first_of(anext(events, None))
            if first is None:
                raise BadGatewayError("the provider ended without an answer")
            if isinstance(first, Answer):
                return first
            facts.first_event_at = time.monotonic()
            facts.served = dispatch.served
            await run.on_first_event(facts)
            done = first if isinstance(first, TranscriptDone) else await final_answer(events)
        facts.served = dispatch.served
        return done


def _result_of(response: web.Response) -> Any:
    """The synchronous answer's body: a JSON document, or the text of a text format."""
    if response.content_type == JSON_TYPE:
        assert isinstance(response.body, bytes)
        return orjson.loads(response.body)
    return response.text


def _failed(error: ProxyError, facts: RequestFacts) -> Outcome:
    return Outcome(
        "failed",
        error.status_code,
        error=error_body(
            error,
            provider=facts.provider,
            model_requested=facts.model_requested,
            request_type=facts.request_type,
        ),
    )
