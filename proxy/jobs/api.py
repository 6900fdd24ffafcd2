"""The async job endpoints (DESIGN 19; README, "Async jobs").

``POST /v1/async/audio/transcriptions`` (and ``translations``, and the
``/openai/v1`` aliases) takes the synchronous form: its file streams to the job
spool as it arrives (never memory), hashed on the way; the fields are checked
as the synchronous path checks them, governance admits the job, and the answer
is ``202`` with the job. ``GET .../{job_id}`` reads it (the key that made it,
or an admin; anyone else gets 404), ``DELETE`` cancels it, ``.../deliveries``
lists its webhook's attempts and ``.../deliveries/redeliver`` sends it again.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiohttp import web
from aiohttp.typedefs import Handler

from ..answers.responses import json_response
from ..api.access import reader_of
from ..app_state import (
    AUTH_KEY,
    FACTS_KEY,
    GOVERNOR_KEY,
    LIMITS_KEY,
    METRICS_KEY,
    PIPELINE_KEY,
    ROUTER_KEY,
)
from ..audio.sources import SpooledAudio
from ..audio.spool import Spool
from ..errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    missing_field,
)
from ..form import FormReader, TranscriptionForm, repr_digest_sha256
from ..form.fields import fallbacks_of, first_value, parse_stream
from ..governance.credentials import Caller
from ..models import TASK_PATHS, AudioLength, FormField, RequestFacts, RequestKind, Task
from ..plugins.base import PipelineRun
from ..providers.http import PROPAGATED_HEADERS
from ..store.log_rows import now_ms
from .deliveries import MAX_ATTEMPTS
from .queue import ENDED, Job
from .service import JOBS_KEY, TTL_HEADER, Jobs, jobs_of
from .webhooks import job_document

#: Fields for the job, never sent upstream.
_JOB_FIELDS = frozenset({"webhook_url"})
#: Headers kept for the run besides ``x-bf-`` ones, and ``x-bf-`` ones that are not.
_NOT_KEPT = frozenset({"x-bf-vk", TTL_HEADER})

#: What the request log calls a submit (the job's run is ``async.<task>``, its child).
_SUBMIT_KINDS: dict[Task, RequestKind] = {
    "transcription": "async.transcription.submit",
    "translation": "async.translation.submit",
}

BASES: dict[Task, tuple[str, ...]] = {
    task: (f"/v1/async/{path}", f"/openai/v1/async/{path}") for task, path in TASK_PATHS.items()
}


def add_job_routes(app: web.Application) -> None:
    """The async job endpoints, for both tasks, under ``/v1`` and ``/openai/v1``; and a
    draining replica's workers claim no new job."""
    app.on_shutdown.append(_stop_claiming)
    for task, bases in BASES.items():
        for base in bases:
            app.router.add_post(base, _submit_handler(task))
            app.router.add_get(base + "/{job_id}", _reading(task, get_job))
            app.router.add_delete(base + "/{job_id}", _reading(task, cancel_job))
            app.router.add_get(base + "/{job_id}/deliveries", _reading(task, list_deliveries))
            app.router.add_post(base + "/{job_id}/deliveries/redeliver", _reading(task, redeliver))


async def _stop_claiming(app: web.Application) -> None:
    if (jobs := app.get(JOBS_KEY)) is not None:
        jobs.workers.stop_claiming()


def _submit_handler(task: Task) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await submit(request, task)

    handler.__doc__ = f"``POST`` an async {task} job."
    return handler


async def submit(request: web.Request, task: Task) -> web.Response:
    """Spool the upload, check the form, admit the job, queue it: ``202`` and the job."""
    app = request.app
    jobs = jobs_of(app)
    facts = request[FACTS_KEY]
    facts.request_type = facts.task = task
    facts.kind = _SUBMIT_KINDS[task]
    caller = facts.caller = app[AUTH_KEY].identify(request.headers)
    if caller.kind == "direct_key":
        raise PermissionDeniedError(
            "a provider key of your own is not kept for a job: use a virtual key",
            code="direct_key_not_accepted",
        )
    ttl_s = jobs.ttl_of(request.headers)
    job_id = f"job_{secrets.token_hex(16)}"
    stored: str | None = None
    async with (
        app[PIPELINE_KEY].run(facts) as run,
        # No routing fields: the file is never sent on from here, it is always read
        # straight into the spool, whatever the order of the parts.
        FormReader(
            request,
            app[LIMITS_KEY],
            (),
            metrics=app[METRICS_KEY],
            facts=facts,
            hash_audio=True,
            expected_sha256=repr_digest_sha256(request.headers),
            task=task,
        ) as reader,
    ):
        try:
            form = await reader.read()
            if form.audio is None:
                raise missing_field("file")
            # What is wrong with the fields before the file is said before it is stored:
            # a key that may not use the model writes nothing to the spool.
            _checked_webhook(form.fields, jobs, caller)
            if (early := first_value(form.fields, "model")) is not None:
                routes = app[ROUTER_KEY].plan(early, fallbacks_of(form.fields))
                app[GOVERNOR_KEY].check_routes(caller, routes)
            stored, size = await jobs.spool.store(job_id, form.audio.pieces())
            fields = form.all_fields()
            webhook_url = _checked_webhook(fields, jobs, caller)
            model = first_value(fields, "model")
            if model is None:
                raise missing_field("model")
            facts.model_requested = model
            routes = facts.routes = app[ROUTER_KEY].plan(model, fallbacks_of(fields))
            facts.caller = app[AUTH_KEY].on_routes(caller, routes)
            length = _measured(facts.audio_length, size)
            sha256 = form.audio_sha256 or ""
            await _admit(
                run,
                facts,
                TranscriptionForm(fields=fields, audio_sha256=sha256),
                stored,
                filename=form.audio.filename,
                content_type=form.audio.content_type,
            )
            created = now_ms()
            job = Job(
                id=job_id,
                task=task,
                status="pending",
                request_id=facts.request_id,
                caller_kind=caller.kind,
                virtual_key_id=caller.virtual_key.id if caller.virtual_key is not None else None,
                model=model,
                fields=tuple(f for f in fields if f.name not in _JOB_FIELDS),
                filename=form.audio.filename,
                content_type=form.audio.content_type,
                headers=_kept_headers(request.headers),
                size=size,
                sha256=sha256,
                length=length,
                created_at=created,
                expires_at=created + int(ttl_s * 1000),
                webhook_url=webhook_url,
                reservation=facts.reservation or {},
            )
            # A client leaving now does not stop the insert halfway: whether the job
            # exists (and so keeps its upload) is known either way.
            adding = asyncio.ensure_future(jobs.queue.add(job))
            try:
                await asyncio.shield(adding)
            finally:
                await asyncio.wait((adding,))
                if not adding.exception():
                    # The job's now: it keeps its upload, and its run settles what
                    # governance reserved for it.
                    stored = None
                    facts.reservation_kept = True
        except BaseException:
            if stored is not None:
                await jobs.spool.remove(stored)
            raise
        facts.status = 202
    jobs.workers.wake()
    return json_response(job_document(job), status=202)


async def _admit(
    run: PipelineRun,
    facts: RequestFacts,
    form: TranscriptionForm,
    path: str,
    *,
    filename: str,
    content_type: str,
) -> None:
    """Governance's (and every plugin's) say on the job, its upload a whole file by now.

    An answer a plugin gives (a cached transcript) is not taken here: the job runs,
    and is answered from the cache then.
    """
    file = await asyncio.to_thread(open, path, "rb", buffering=0)
    audio = form.audio = SpooledAudio(
        Spool.adopt(file), filename=filename, content_type=content_type
    )
    facts.form = form
    try:
        await run.before(facts)
    finally:
        await audio.aclose()


def _checked_webhook(fields: Sequence[FormField], jobs: Jobs, caller: Caller) -> str | None:
    """The job's webhook URL (None: none); 400 for ``stream=true`` or a URL not allowed."""
    if parse_stream(first_value(fields, "stream") or "false"):
        raise InvalidRequestError(
            "stream=true is not available for async jobs: poll the job, or give webhook_url",
            code="stream_not_supported",
            param="stream",
        )
    key = caller.virtual_key
    url = first_value(fields, "webhook_url") or (key.webhook_url if key is not None else None)
    if not url:
        return None
    jobs.policy.check_url(url)
    if jobs.secrets.of_caller(caller) is None:
        raise InvalidRequestError(
            "webhooks are signed, and no secret is configured "
            "(proxy.jobs.webhook_secret, or the virtual key's webhook_secret)",
            code="webhook_secret_missing",
            param="webhook_url",
        )
    return url


def _measured(length: AudioLength | None, size: int) -> dict[str, float | None]:
    """What the container told of the upload's length as it passed (for the run's metering)."""
    if length is None:
        return {}
    return {"declared": length.declared(), "measured": length.finish(), "floor": length.floor(size)}


def _kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers the job's run reads as its own: Bifrost's ``x-bf-`` options (the
    cache's key and TTL, raw answers) and the trace context; never a credential."""
    return {
        name.lower(): value
        for name, value in headers.items()
        if name.lower() in PROPAGATED_HEADERS
        or (name.lower().startswith("x-bf-") and name.lower() not in _NOT_KEPT)
    }


# --- one job: read, cancelled, its deliveries ---------------------------------------------------


JobHandler = Callable[[web.Request, Jobs, Job], Awaitable[web.Response]]


def _reading(task: Task, handler: JobHandler) -> Handler:
    """``handler`` for the job the path names, once the caller is found to see it."""

    async def read(request: web.Request) -> web.StreamResponse:
        jobs = jobs_of(request.app)
        job = await _visible_job(request, jobs, task)
        return await handler(request, jobs, job)

    read.__doc__ = handler.__doc__
    return read


async def _visible_job(request: web.Request, jobs: Jobs, task: Task) -> Job:
    """The job the path names, if the caller may see it: else 404, as if there were none."""
    reader = reader_of(request)
    job = await jobs.queue.get(request.match_info["job_id"])
    if (
        job is None
        or job.task != task
        or not (reader.is_operator or reader.virtual_key_id == job.virtual_key_id)
    ):
        raise NotFoundError("no such job", code="job_not_found", param="job_id")
    return job


async def get_job(request: web.Request, jobs: Jobs, job: Job) -> web.Response:
    """``GET``: 202 while the job waits or runs, 200 once it has ended."""
    return json_response(job_document(job), status=200 if job.status in ENDED else 202)


async def cancel_job(request: web.Request, jobs: Jobs, job: Job) -> web.Response:
    """``DELETE``: cancel a job that has not ended (its upstream requests with it)."""
    if job.status in ENDED:
        raise InvalidRequestError(
            f"the job has already ended ({job.status})", code="job_ended", param="job_id"
        )
    cancelled, waited = await jobs.queue.cancel(job.id)
    if waited and cancelled is not None:  # no run took up its reservation: given back here
        await jobs.release(cancelled.reservation)
    if cancelled is None:  # expired and swept meanwhile
        raise NotFoundError("no such job", code="job_not_found", param="job_id")
    if cancelled.status != "cancelled":  # it ended meanwhile
        raise InvalidRequestError(
            f"the job has already ended ({cancelled.status})", code="job_ended", param="job_id"
        )
    jobs.workers.cancel(job.id)
    await jobs.spool.remove(jobs.spool.path_of(job.id))
    return json_response(job_document(cancelled))


async def list_deliveries(request: web.Request, jobs: Jobs, job: Job) -> web.Response:
    """``GET .../deliveries``: every attempt to deliver the job's webhook."""
    return json_response(
        {"object": "list", "data": await jobs.deliveries.attempts(job.id), "job_id": job.id}
    )


async def redeliver(request: web.Request, jobs: Jobs, job: Job) -> web.Response:
    """``POST .../deliveries/redeliver``: send the ended job's webhook again, now."""
    if job.status not in ENDED or job.webhook_url is None or job.status == "cancelled":
        raise InvalidRequestError(
            "only a job that has ended, with a webhook_url, has a webhook to send again",
            code="nothing_to_redeliver",
            param="job_id",
        )
    redelivery = await jobs.deliveries.redeliver(job.id)
    if redelivery == "gone":  # expired and swept meanwhile
        raise NotFoundError("no such job", code="job_not_found", param="job_id")
    if redelivery == "under_way":
        raise ConflictError(
            "the webhook is being sent right now: its attempts are at .../deliveries",
            code="delivery_pending",
            param="job_id",
        )
    if redelivery == "exhausted":
        raise ConflictError(
            f"the webhook has had its {MAX_ATTEMPTS} attempts: its result is at .../{job.id}",
            code="deliveries_exhausted",
            param="job_id",
        )
    return json_response(
        {"id": job.id, "object": "async_job.redelivery", "status": "pending"}, status=202
    )
