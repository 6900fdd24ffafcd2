"""Dispatch without sockets: retries, fallbacks, replay, and the way an upload is sent, chosen once.

The providers are :class:`ScriptedProvider`s in this process; the uploads are
the proxy's own audio sources, live ones recorded to a real spool file.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from proxy.audio.sources import BufferedAudio
from proxy.audio.spool import Spool
from proxy.dispatch import (
    Dispatch,
    Dispatcher,
    RouteDispatch,
    Served,
    TranscriptionJob,
    UntilOverLimit,
    upload_limit,
)
from proxy.errors import (
    BadGatewayError,
    InvalidRequestError,
    ProxyError,
    UpstreamError,
)
from proxy.form import PIECE_BYTES
from proxy.metrics import Metrics
from proxy.models import AudioSource, FormField, TranscriptDone, TranscriptEvent
from proxy.router import Route
from tests.helpers.providers import ScriptedProvider, answer, deltas
from tests.helpers.sources import live_audio


def buffered(data: bytes) -> BufferedAudio:
    return BufferedAudio(data, filename="a.wav", content_type="audio/wav")


def job(audio: AudioSource, *providers: ScriptedProvider, **kwargs: object) -> TranscriptionJob:
    routes = [Route(p, "whisper-1", f"{p.name}/whisper-1") for p in providers]
    return TranscriptionJob(routes, [FormField("language", "en")], audio, **kwargs)  # type: ignore[arg-type]


async def events_of(dispatch: Dispatch) -> list[TranscriptEvent]:
    return [event async for event in dispatch.events()]


class Sleeps:
    """Records the waits between retries instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# --- RouteDispatch: retries and fallbacks ----------------------------------------------------


async def test_the_primary_answers() -> None:
    primary = ScriptedProvider("openai")
    dispatch = RouteDispatch(job(buffered(b"RIFF"), primary))
    (done,) = await events_of(dispatch)
    assert isinstance(done, TranscriptDone)
    assert done.document == {"text": "heard 4 bytes"}
    assert dispatch.served == Served(dispatch.served.route, None, None)
    assert dispatch.served.route.provider is primary
    (heard,) = primary.calls
    assert heard.model == "whisper-1"
    assert heard.fields == [FormField("language", "en")]


async def test_a_retry_after_an_upstream_failure_replays_the_upload() -> None:
    primary = ScriptedProvider("openai", [UpstreamError(503, "busy")], max_retries=2)
    sleeps = Sleeps()
    dispatch = RouteDispatch(
        job(buffered(b"RIFF1234"), primary),
        sleep=sleeps,
        jitter=lambda: 1.0,
    )
    (done,) = await events_of(dispatch)
    assert isinstance(done, TranscriptDone)
    assert [c.audio for c in primary.calls] == [b"RIFF1234", b"RIFF1234"]
    assert sleeps.waits == [0.001]  # retry_backoff_initial, full jitter
    assert dispatch.served.attempts == [
        {"provider": "openai", "model": "whisper-1", "status": 503, "error": "busy"},
        {"provider": "openai", "model": "whisper-1", "status": 200},
    ]


async def test_retry_after_is_honoured_and_a_longer_one_goes_to_the_fallback() -> None:
    slow = UpstreamError(429, "slow down", headers={"Retry-After": "0.005"})
    too_slow = UpstreamError(429, "come back later", headers={"Retry-After": "3600"})
    primary = ScriptedProvider("openai", [slow, too_slow], max_retries=3)
    backup = ScriptedProvider("backup")
    sleeps = Sleeps()
    dispatch = RouteDispatch(
        job(buffered(b"RIFF"), primary, backup),
        sleep=sleeps,
        jitter=lambda: 0.0,
    )
    await events_of(dispatch)
    assert sleeps.waits == [0.005]  # the upstream's wait, longer than the backoff
    assert dispatch.served.route.provider is backup
    assert [a["status"] for a in dispatch.served.attempts or []] == [429, 429, 200]


async def test_when_every_route_fails_the_primary_s_error_is_the_answer() -> None:
    primary = ScriptedProvider("openai", [UpstreamError(500, "primary broke")])
    backup = ScriptedProvider("backup", [BadGatewayError("backup unreachable", retryable=True)])
    dispatch = RouteDispatch(job(buffered(b"RIFF"), primary, backup))
    with pytest.raises(UpstreamError, match="primary broke") as raised:
        await events_of(dispatch)
    assert [a["provider"] for a in raised.value.attempts] == ["openai", "backup"]


async def test_a_request_side_failure_on_the_fallback_is_reported_as_itself() -> None:
    primary = ScriptedProvider("openai", [UpstreamError(503, "busy")])
    backup = ScriptedProvider("backup", [InvalidRequestError("bad field", param="language")])
    dispatch = RouteDispatch(job(buffered(b"RIFF"), primary, backup))
    with pytest.raises(InvalidRequestError, match="bad field"):
        await events_of(dispatch)


async def test_a_request_side_failure_is_not_retried() -> None:
    primary = ScriptedProvider("openai", [InvalidRequestError("no")], max_retries=3)
    backup = ScriptedProvider("backup")
    dispatch = RouteDispatch(job(buffered(b"RIFF"), primary, backup))
    with pytest.raises(InvalidRequestError):
        await events_of(dispatch)
    assert len(primary.calls) == 1
    assert backup.calls == []


async def test_nothing_is_tried_again_once_an_answer_has_begun() -> None:
    failing = [*deltas("Hel")[:1], UpstreamError(502, "cut off")]
    primary = ScriptedProvider("openai", [failing], max_retries=3)
    backup = ScriptedProvider("backup")
    dispatch = RouteDispatch(job(buffered(b"RIFF"), primary, backup))
    got: list[TranscriptEvent] = []

    async def read_all() -> None:
        async for event in dispatch.events():
            got.append(event)

    with pytest.raises(UpstreamError, match="cut off"):
        await read_all()
    assert len(got) == 1
    assert len(primary.calls) == 1
    assert backup.calls == []


async def test_an_unrecorded_live_upload_cannot_be_sent_again_and_says_why() -> None:
    primary = ScriptedProvider("openai", [UpstreamError(503, "busy")], max_retries=2)
    backup = ScriptedProvider("backup")
    dispatch = RouteDispatch(job(live_audio(b"RI", b"FF"), primary, backup))
    with pytest.raises(UpstreamError) as raised:
        await events_of(dispatch)
    assert "not retried" in raised.value.message
    assert backup.calls == []


async def test_a_recorded_live_upload_is_replayed_whole_to_the_fallback(tmp_path: Path) -> None:
    audio = live_audio(b"RI", b"FF", b"1234")
    audio.record(await Spool.create(str(tmp_path)), max_bytes=1 << 20)
    primary = ScriptedProvider("openai", [UpstreamError(500, "broke")])
    backup = ScriptedProvider("backup")
    dispatch = RouteDispatch(job(audio, primary, backup))
    await events_of(dispatch)
    assert [c.audio for c in primary.calls + backup.calls] == [b"RIFF1234", b"RIFF1234"]
    assert audio.size == 8
    await audio.aclose()


async def test_past_the_spool_cap_a_live_upload_is_not_replayed(tmp_path: Path) -> None:
    audio = live_audio(b"R" * 10, b"I" * 10)
    audio.record(await Spool.create(str(tmp_path)), max_bytes=15)
    primary = ScriptedProvider("openai", [UpstreamError(500, "broke")])
    backup = ScriptedProvider("backup")
    with pytest.raises(UpstreamError) as raised:
        await events_of(RouteDispatch(job(audio, primary, backup)))
    assert "spool limit" in raised.value.message
    assert backup.calls == []
    await audio.aclose()


def test_upload_limit_is_the_smallest_of_the_routes() -> None:
    routes = [
        Route(ScriptedProvider("a", upload_limit=None), "m", "a/m"),
        Route(ScriptedProvider("b", upload_limit=30), "m", "b/m"),
        Route(ScriptedProvider("c", upload_limit=20), "m", "c/m"),
    ]
    assert upload_limit(routes) == 20
    assert upload_limit(routes[:1]) is None


# --- Dispatcher: the way, chosen once -------------------------------------------------------


class Cuts:
    """Stands in for long audio: records what it was asked to cut, answers with one chunk.

    ``delay``: how long it takes to begin reading (the whole request's failure takes a
    moment to come back through the HTTP client, while the client goes on sending).
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.asked: list[tuple[TranscriptionJob, int]] = []
        self.heard: list[bytes] = []
        self._delay = delay

    def __call__(self, job: TranscriptionJob, limit: int) -> Dispatch:
        self.asked.append((job, limit))
        return _Cut(job, self.heard, self._delay)


class _Cut:
    def __init__(self, job: TranscriptionJob, heard: list[bytes], delay: float) -> None:
        self._job = job
        self._heard = heard
        self._delay = delay

    @property
    def served(self) -> Served:
        return Served(self._job.routes[0], None, 1)

    async def events(self) -> AsyncGenerator[TranscriptEvent, None]:
        await asyncio.sleep(self._delay)
        self._heard.append(b"".join([piece async for piece in self._job.audio.pieces()]))
        yield answer("cut")


def dispatcher(cuts: Cuts, tmp_path: Path) -> Dispatcher:
    return Dispatcher(cut=cuts, metrics=Metrics(), spool_dir=str(tmp_path))


async def test_an_upload_under_the_limit_goes_whole(tmp_path: Path) -> None:
    cuts = Cuts()
    limited = ScriptedProvider("openai", upload_limit=10)
    way = await dispatcher(cuts, tmp_path).dispatch(job(buffered(b"RIFF"), limited), None)
    assert isinstance(way, RouteDispatch)
    await events_of(way)
    assert cuts.asked == []


@pytest.mark.parametrize("known_by", ["its size", "the body's Content-Length"])
async def test_an_upload_known_to_be_over_the_limit_is_cut(tmp_path: Path, known_by: str) -> None:
    cuts = Cuts()
    limited = ScriptedProvider("openai", upload_limit=10)
    if known_by == "its size":
        audio: AudioSource = buffered(b"R" * 11)
        declared = None
    else:
        audio, declared = live_audio(b"R" * 11), 500
    way = await dispatcher(cuts, tmp_path).dispatch(job(audio, limited), declared)
    (done,) = await events_of(way)
    assert isinstance(done, TranscriptDone)
    assert done.document == {"text": "cut"}
    assert [limit for _, limit in cuts.asked] == [10]
    assert limited.calls == []
    assert way.served.audio_chunks == 1


async def test_a_live_upload_of_unknown_length_is_cut_once_it_crosses_the_limit(
    tmp_path: Path,
) -> None:
    cuts = Cuts()
    limited = ScriptedProvider("openai", upload_limit=10)
    audio = live_audio(b"R" * 6, b"I" * 6, b"FF")
    way = await dispatcher(cuts, tmp_path).dispatch(job(audio, limited), None)
    assert isinstance(way, UntilOverLimit)
    (done,) = await events_of(way)
    assert isinstance(done, TranscriptDone)
    assert done.document == {"text": "cut"}
    # The whole request was abandoned past the limit; the cut heard it all, from the start.
    assert limited.calls == []
    assert cuts.heard == [b"R" * 6 + b"I" * 6 + b"FF"]
    assert way.served.audio_chunks == 1
    await audio.aclose()


async def test_a_live_upload_of_unknown_length_under_the_limit_goes_whole(
    tmp_path: Path,
) -> None:
    cuts = Cuts()
    limited = ScriptedProvider("openai", upload_limit=10)
    audio = live_audio(b"RIFF")
    way = await dispatcher(cuts, tmp_path).dispatch(job(audio, limited), None)
    (done,) = await events_of(way)
    assert isinstance(done, TranscriptDone)
    assert done.document == {"text": "heard 4 bytes"}
    assert cuts.asked == []
    await audio.aclose()


async def test_a_cut_after_the_limit_hears_the_whole_upload_however_late_it_starts(
    tmp_path: Path,
) -> None:
    """The recording runs ahead of the abandoned request while the cut gets going: it stops
    at its cap, but what it did not record has not been handed out, so the cut still hears
    every byte from the first."""
    cuts = Cuts(delay=0.05)
    limited = ScriptedProvider("openai", upload_limit=3 * PIECE_BYTES)
    pieces = [bytes([n]) * PIECE_BYTES for n in range(12)]
    audio = live_audio(*pieces)
    way = await dispatcher(cuts, tmp_path).dispatch(job(audio, limited), None)
    await events_of(way)
    assert cuts.heard == [b"".join(pieces)]
    await audio.aclose()


@pytest.mark.parametrize("retries", [0, 1])
async def test_only_a_live_upload_that_may_be_sent_again_is_recorded(
    tmp_path: Path, retries: int
) -> None:
    primary = ScriptedProvider("openai", max_retries=retries)
    audio = live_audio(b"RIFF")
    await dispatcher(Cuts(), tmp_path).dispatch(job(audio, primary), None)
    assert audio.replayable is bool(retries)
    await audio.aclose()


async def test_the_job_s_request_id_and_key_reach_the_provider(tmp_path: Path) -> None:
    primary = ScriptedProvider("openai")
    audio = buffered(b"RIFF")
    way = await dispatcher(Cuts(), tmp_path).dispatch(
        job(audio, primary, request_id="req-1", api_key="sk-own"), None
    )
    await events_of(way)
    (heard,) = primary.calls
    assert (heard.request_id, heard.api_key) == ("req-1", "sk-own")
    assert heard.sha256 == hashlib.sha256(b"RIFF").hexdigest()


async def test_errors_keep_their_own_type_through_the_dispatcher(tmp_path: Path) -> None:
    primary = ScriptedProvider("openai", [ProxyError("internal")])
    audio = buffered(b"RIFF")
    way = await dispatcher(Cuts(), tmp_path).dispatch(job(audio, primary), None)
    with pytest.raises(ProxyError, match="internal"):
        await events_of(way)
