"""A job survives its replica: real proxy processes, SIGKILLed (or stopped with SIGTERM)
mid-job and started again on the same store and spool. The job completes, and exactly one
``completed`` webhook is sent.

Both proxies reach the same fake upstream and webhook receiver (servers in this test's
process, on 127.0.0.1); the store is SQLite, and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import resource
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.helpers.client import audio_bytes, form, json_of
from tests.helpers.processes import start_proxy_process
from tests.helpers.upstream import FakeUpstream, ReceivedRequest, provider_config, transcript_json
from tests.helpers.webhooks import SECRET, WebhookReceiver

JOBS = "/v1/async/audio/transcriptions"


def first_request_hangs(reached: asyncio.Event) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The first request is heard and never answered (its replica is killed meanwhile);
    every later one is answered at once."""

    async def respond(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        if not reached.is_set():
            reached.set()
            await asyncio.sleep(60)
        return await transcript_json(request, received)

    return respond


def replica_config(upstream: FakeUpstream, store_url: str, spool: Path) -> dict[str, Any]:
    config = provider_config(upstream)
    config["proxy"] = {
        "store": store_url,
        "jobs": {
            "spool_dir": str(spool),
            "lease_s": 1,
            "poll_interval_s": 0.05,
            "webhook_secret": SECRET,
            "webhook_allowed_hosts": ["127.0.0.1"],
            "webhook_retry_schedule": ["0.1"],
        },
    }
    return config


async def job_of(url: str, job_id: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}{JOBS}/{job_id}") as response,
    ):
        return response.status, json_of(await response.read())


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_a_job_whose_replica_stops_completes_after_the_restart(
    stop: signal.Signals,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    upstream: FakeUpstream,
    store_url: str,
    tmp_path: Path,
) -> None:
    reached = asyncio.Event()
    upstream.respond = first_request_hangs(reached)
    receiver = WebhookReceiver()
    receiver.server = await aiohttp_server(receiver.app)
    spool = tmp_path / "spool"
    spool.mkdir()
    config = replica_config(upstream, store_url, spool)
    audio = audio_bytes(400_000)

    process, url = await start_proxy_process(config, tmp_path, name="first")
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}{JOBS}",
                data=form(("model", "whisper-1"), ("webhook_url", receiver.url), ("file", audio)),
            ) as response,
        ):
            assert response.status == 202
            job = json_of(await response.read())
        async with asyncio.timeout(10):
            await reached.wait()
        assert (await job_of(url, job["id"]))[1]["status"] == "processing"
    finally:
        # Killed, its lease lapses; stopped, it hands the job back at once.
        process.send_signal(stop)
        await process.wait()

    process, url = await start_proxy_process(config, tmp_path, name="second")
    try:
        async with asyncio.timeout(20):
            while True:
                status, done = await job_of(url, job["id"])
                if status == 200:
                    break
                await asyncio.sleep(0.05)
        assert done["status"] == "completed"
        assert done["result"]["text"] == f"heard {len(audio)} bytes"
        (delivery,) = await receiver.wait_for(1)
        assert delivery.verified
        assert delivery.payload is not None
        assert delivery.payload["type"] == "transcription.completed"
        assert delivery.payload["data"]["id"] == job["id"]
        # The second run heard the whole upload, from the spool the first one wrote.
        assert [r.file.size for r in upstream.requests] == [len(audio), len(audio)]
        await asyncio.sleep(1.0)
        assert len(receiver.received) == 1
        assert list(spool.iterdir()) == []
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()


async def test_a_disk_that_fills_refuses_new_jobs_with_507_and_keeps_those_it_has(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    # The proxy process may write no file past 3 MiB (its writes then fail with EFBIG,
    # as they would with ENOSPC on a full disk); no worker, so its jobs wait.
    spool = tmp_path / "spool"
    spool.mkdir()
    config = replica_config(upstream, f"sqlite:///{tmp_path}/store.sqlite3", spool)
    config["proxy"]["jobs"]["workers"] = 0
    process, url = await start_proxy_process(
        config, tmp_path, limits={resource.RLIMIT_FSIZE: 3 * 1024 * 1024}
    )
    try:
        async with aiohttp.ClientSession() as session:
            answers = []
            for size in (1_000_000, 4_000_000):
                async with session.post(
                    f"{url}{JOBS}", data=form(("model", "whisper-1"), ("file", audio_bytes(size)))
                ) as response:
                    answers.append((response.status, json_of(await response.read())))
        (accepted, job), (full, refusal) = answers
        assert accepted == 202
        assert full == 507
        assert refusal["error"]["code"] == "insufficient_storage"
        assert refusal["error"]["type"] == "api_error"
        # The accepted job's upload is whole; nothing is left of the refused one's.
        assert [p.name for p in spool.iterdir()] == [job["id"] + ".audio"]
        assert (spool / (job["id"] + ".audio")).stat().st_size == 1_000_000
        status, kept = await job_of(url, job["id"])
        assert (status, kept["status"]) == (202, "pending")
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()
