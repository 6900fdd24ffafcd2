"""Async jobs through a real proxy: submitted, run, read back, cancelled, expired; their
webhooks signed, retried and recorded; every abuse refused in the error shape.

The proxy is a real server in front of the recording fake upstream, with its own
store (SQLite, and PostgreSQL for what touches the queue) and spool in the test's
directory; the webhook receiver is a real server checking signatures with the
``standardwebhooks`` package; clients are raw HTTP and the openai SDK.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import insert, select

from proxy.app_state import REQUEST_LOG_KEY
from proxy.jobs import JOBS_KEY
from proxy.jobs.deliveries import MAX_ATTEMPTS
from proxy.jobs.delivery import WebhookPolicy, WebhookSender, refused_address, webhook_session
from proxy.jobs.queue import JobQueue, Outcome
from proxy.jobs.store import JobStore
from proxy.jobs.worker import MAX_CLAIMS
from proxy.store.engine import open_store
from proxy.store.tables import async_job_deliveries, async_jobs
from tests.helpers.client import ProxyFactory, audio_bytes, base_url, form, json_of, post
from tests.helpers.declared_audio import wav_declaring
from tests.helpers.errors import assert_error
from tests.helpers.upstream import (
    FakeUpstream,
    ReceivedRequest,
    answering,
    endless_stream,
    provider_config,
)
from tests.helpers.webhooks import SECRET, WebhookReceiver

JOBS = "/v1/async/audio/transcriptions"
ADMIN = "sk-admin-operator-0123456789"
TEAM_A = "sk-bf-team-a-0123456789"
TEAM_B = "sk-bf-team-b-0123456789"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

ServerFactory = Callable[..., Awaitable[TestServer]]


def jobs_config(upstream: FakeUpstream, store_url: str, spool: Path, **jobs: Any) -> dict[str, Any]:
    """One provider, two tenant keys and an admin, jobs polled and retried in milliseconds."""
    config = provider_config(upstream)
    config["governance"] = {
        "virtual_keys": [
            {
                "id": key_id,
                "value": value,
                "provider_configs": [{"provider": "openai", "allowed_models": ["*"]}],
            }
            for key_id, value in (("team-a", TEAM_A), ("team-b", TEAM_B))
        ],
        "admin_keys": [ADMIN],
    }
    config["proxy"] = {
        "store": store_url,
        "jobs": {
            "spool_dir": str(spool),
            "poll_interval_s": 0.05,
            "lease_s": 2,
            "webhook_secret": SECRET,
            "webhook_allowed_hosts": ["127.0.0.1"],
            "webhook_retry_schedule": ["0.05", "0.05"],
            "webhook_timeout_s": 1,
            **jobs,
        },
    }
    config["logs"] = {"flush_interval_ms": 20}
    return config


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store/proxy.sqlite3"


@pytest.fixture
async def receiver(aiohttp_server: ServerFactory) -> WebhookReceiver:
    hooks = WebhookReceiver()
    hooks.server = await aiohttp_server(hooks.app)
    return hooks


def key(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def submit(
    server: TestServer,
    *parts: tuple[str, str | bytes],
    headers: dict[str, str] | None = None,
    path: str = JOBS,
) -> tuple[int, dict[str, Any]]:
    status, body, _ = await post(server, form(*parts), {**key(TEAM_A), **(headers or {})}, path)
    return status, body


async def read(
    server: TestServer, job_id: str, who: str = TEAM_A, path: str = JOBS, method: str = "GET"
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{base_url(server)}{path}/{job_id}", headers=key(who)) as r,
    ):
        return r.status, json_of(await r.read())


async def ended(server: TestServer, job_id: str, path: str = JOBS) -> dict[str, Any]:
    """The job once it has ended (GET answers 200)."""
    async with asyncio.timeout(15):
        while True:
            status, job = await read(server, job_id, path=path)
            if status == 200:
                return job
            assert status == 202
            assert job["status"] in ("pending", "processing")
            await asyncio.sleep(0.05)


def without_timing(document: dict[str, Any]) -> dict[str, Any]:
    """A transcription answer less what differs between two runs of it (its latency)."""
    extra = {k: v for k, v in document["extra_fields"].items() if k != "latency"}
    return {**document, "extra_fields": extra}


def spool_files(spool: Path) -> list[str]:
    return sorted(os.listdir(spool))


def refused(
    got: int,
    body: dict[str, Any],
    status: int,
    code: str,
    param: str | None = None,
    *,
    error_type: str = "invalid_request_error",
    bifrost: bool = False,
) -> None:
    """An answer in the error shape, whole."""
    assert got == status, body
    assert_error(
        body, status=status, code=code, param=param, error_type=error_type, bifrost=bifrost
    )


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10) -> None:
    """Wait for ``check`` to hold."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


# --- a job's life -------------------------------------------------------------------------------


async def test_a_job_answers_as_the_synchronous_request_and_its_webhook_is_signed(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    receiver: WebhookReceiver,
    store_url: str,
    spool: Path,
) -> None:
    server = await make_proxy(jobs_config(upstream, store_url, spool))
    audio = audio_bytes(300_000)
    # The file before the fields that route it (as curl sends it): still streamed to disk.
    status, job = await submit(
        server,
        ("file", audio),
        ("model", "openai/whisper-1"),
        ("response_format", "verbose_json"),
        ("webhook_url", receiver.url),
    )
    assert status == 202, job
    assert job["object"] == "async_job"
    assert job["status"] == "pending"
    assert job["id"].startswith("job_")
    assert RFC3339.match(job["created_at"])
    assert RFC3339.match(job["expires_at"])

    done = await ended(server, job["id"])
    assert done["status"] == "completed"
    # The upstream heard the upload byte for byte, and the webhook field was not sent on.
    heard = upstream.last
    assert heard.file.sha256 == hashlib.sha256(audio).hexdigest()
    assert "webhook_url" not in heard.names
    status, synchronous, _ = await post(
        server,
        form(("model", "openai/whisper-1"), ("response_format", "verbose_json"), ("file", audio)),
        key(TEAM_A),
    )
    assert status == 200
    assert without_timing(done["result"]) == without_timing(synchronous)

    (delivery,) = await receiver.wait_for(1)
    assert delivery.verified
    assert delivery.payload is not None
    assert delivery.payload["type"] == "transcription.completed"
    assert RFC3339.match(delivery.payload["timestamp"])
    assert delivery.payload["data"] == done
    status, attempts = await read(server, job["id"] + "/deliveries")
    assert status == 200
    [attempt] = attempts["data"]
    assert attempt["outcome"] == "delivered"
    assert attempt["status_code"] == 204
    assert attempt["webhook_id"] == delivery.headers["webhook-id"]
    # Its upload is gone once it has run.
    assert spool_files(spool) == []


async def test_a_translation_job_through_the_openai_sdk_and_the_openai_alias(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    client = openai.AsyncOpenAI(
        base_url=f"{base_url(server)}/openai/v1", api_key=TEAM_A, max_retries=0
    )
    async with client:
        # The SDK has no async-job method: its generic post sends the multipart form, and
        # gives back the job as JSON.
        job = await client.post(
            "/async/audio/translations",
            cast_to=object,
            body={"model": "whisper-1", "response_format": "text"},
            files=[("file", ("a.wav", audio_bytes(5000), "audio/wav"))],
            options={"headers": {"Content-Type": "multipart/form-data"}},
        )
    assert isinstance(job, dict)
    assert job["status"] == "pending"
    done = await ended(server, job["id"], path="/openai/v1/async/audio/translations")
    assert done["result"] == "heard 5000 bytes\n"
    assert upstream.last.path == "/v1/audio/translations"
    # A translation job is not one of the transcription jobs.
    assert (await read(server, job["id"]))[0] == 404


async def test_the_job_is_a_row_in_the_request_log_under_the_submitting_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    status, body, headers = await post(
        server, form(("model", "whisper-1"), ("file", audio_bytes(1000))), key(TEAM_A), JOBS
    )
    assert status == 202
    submitted = next(v for k, v in headers.items() if k.lower() == "x-request-id")
    await ended(server, body["id"])
    assert await server.app[REQUEST_LOG_KEY].flush(5)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(server)}/api/logs/{body['id']}", headers=key(ADMIN)) as r,
    ):
        row = json_of(await r.read())
    assert row["object"] == "async.transcription"
    assert row["parent_request_id"] == submitted
    assert row["status"] == "success"
    assert row["virtual_key_id"] == "team-a"
    # The submit is a row of its own, named for what it was.
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(server)}/api/logs/{submitted}", headers=key(ADMIN)) as r,
    ):
        parent = json_of(await r.read())
    assert parent["object"] == "async.transcription.submit"
    assert parent["virtual_key_id"] == "team-a"


async def test_a_job_is_seen_only_by_its_key_and_the_admin(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    status, job = await submit(server, ("model", "whisper-1"), ("file", audio_bytes(1000)))
    assert status == 202
    await ended(server, job["id"])
    assert (await read(server, job["id"], ADMIN))[0] == 200
    # Another tenant: as if there were no such job, whatever it asks of it.
    status, body = await read(server, job["id"], TEAM_B)
    refused(status, body, 404, "job_not_found", "job_id")
    for tail, method in (("/deliveries", "GET"), ("/deliveries/redeliver", "POST"), ("", "DELETE")):
        assert (await read(server, job["id"] + tail, TEAM_B, method=method))[0] == 404
    assert (await read(server, job["id"]))[1]["status"] == "completed"
    # No credential, where operators are configured: refused before any job is looked up.
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(server)}{JOBS}/{job['id']}") as response,
    ):
        assert response.status == 401
    status, body = await read(server, "job_doesnotexist")
    refused(status, body, 404, "job_not_found", "job_id")


async def test_a_corrupt_upload_fails_the_job_with_the_synchronous_400(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    upstream.respond = answering(
        400,
        {
            "error": {
                "message": "Invalid file format.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    )
    corrupt = b"not audio at all" * 100
    status, synchronous, _ = await post(
        server, form(("model", "whisper-1"), ("file", corrupt)), key(TEAM_A)
    )
    assert status == 400
    status, job = await submit(server, ("model", "whisper-1"), ("file", corrupt))
    assert status == 202
    done = await ended(server, job["id"])
    assert done["status"] == "failed"
    assert done["status_code"] == 400
    expected = {k: v for k, v in synchronous.items() if k != "event_id"}
    got = {k: v for k, v in done["error"].items() if k != "event_id"}
    assert {**got, "error": {**got["error"], "event_id": None}} == {
        **expected,
        "error": {**expected["error"], "event_id": None},
    }


async def test_delete_cancels_a_running_job_and_its_upstream_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    gone = asyncio.Event()
    upstream.respond = endless_stream(gone=gone)
    status, job = await submit(server, ("model", "whisper-1"), ("file", audio_bytes(1000)))
    assert status == 202

    async def processing() -> bool:
        status, running = await read(server, job["id"])
        return bool(status == 202 and running["status"] == "processing" and upstream.requests)

    await until(processing)
    status, cancelled = await read(server, job["id"], method="DELETE")
    assert (status, cancelled["status"]) == (200, "cancelled")
    async with asyncio.timeout(10):
        await gone.wait()
    assert spool_files(spool) == []
    assert (await read(server, job["id"]))[1]["status"] == "cancelled"
    # Ended: not cancelled twice.
    status, body = await read(server, job["id"], method="DELETE")
    refused(status, body, 400, "job_ended", "job_id")


# --- webhooks: retries, their record, where they may go --------------------------------------


async def test_a_failing_receiver_is_retried_on_the_schedule_and_every_attempt_recorded(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    receiver: WebhookReceiver,
    sqlite_url: str,
    spool: Path,
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    receiver.statuses = [500, 302]  # a redirect is not followed: it is a failure
    status, job = await submit(
        server, ("model", "whisper-1"), ("file", audio_bytes(1000)), ("webhook_url", receiver.url)
    )
    assert status == 202
    deliveries = await receiver.wait_for(3)
    assert all(d.verified for d in deliveries)
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    await asyncio.sleep(0.2)
    status, record = await read(server, job["id"] + "/deliveries")
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in record["data"]] == [
        (1, "failed", 500),
        (2, "failed", 302),
        (3, "delivered", 204),
    ]
    assert record["data"][0]["next_attempt_at"] is not None


async def test_a_slow_receiver_is_cut_off_then_given_up_then_redelivered(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    receiver: WebhookReceiver,
    sqlite_url: str,
    spool: Path,
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool, webhook_timeout_s=0.2))
    receiver.delay_s = 1.0
    status, job = await submit(
        server, ("model", "whisper-1"), ("file", audio_bytes(1000)), ("webhook_url", receiver.url)
    )
    assert status == 202
    await receiver.wait_for(3)

    async def three() -> bool:
        return len((await read(server, job["id"] + "/deliveries"))[1]["data"]) == 3

    await until(three)
    record = (await read(server, job["id"] + "/deliveries"))[1]["data"]
    assert [a["error"] for a in record] == ["the receiver did not answer in time"] * 3
    assert record[-1]["next_attempt_at"] is None  # given up
    receiver.delay_s = 0
    status, _ = await read(server, job["id"] + "/deliveries/redeliver", method="POST")
    assert status == 202
    await receiver.wait_for(4)

    async def delivered() -> bool:
        record = (await read(server, job["id"] + "/deliveries"))[1]["data"]
        return bool(record[-1]["outcome"] == "delivered")

    await until(delivered)


async def test_a_redelivery_waits_for_the_attempt_under_way_not_for_a_retry(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    receiver: WebhookReceiver,
    sqlite_url: str,
    spool: Path,
) -> None:
    server = await make_proxy(
        jobs_config(
            upstream, sqlite_url, spool, webhook_timeout_s=30, webhook_retry_schedule=["1h"]
        )
    )
    receiver.held = asyncio.Event()  # the first attempt is under way until it is set
    status, job = await submit(
        server, ("model", "whisper-1"), ("file", audio_bytes(1000)), ("webhook_url", receiver.url)
    )
    assert status == 202
    await receiver.wait_for(1)
    redeliver = job["id"] + "/deliveries/redeliver"

    async def redelivered_at_once() -> list[tuple[int, dict[str, Any]]]:
        return await asyncio.gather(*(read(server, redeliver, method="POST") for _ in range(8)))

    # An attempt is under way: none starts another.
    for status, body in await redelivered_at_once():
        assert status == 409
        assert_error(body, status=409, code="delivery_pending", param="job_id")
    # It fails, and its retry is an hour away: a redelivery sends it now instead, once
    # however many ask at once.
    receiver.statuses = [500]
    receiver.held.set()
    deliveries = job["id"] + "/deliveries"

    async def retry_waits() -> bool:
        record = (await read(server, deliveries))[1]["data"]
        return len(record) == 1 and record[0]["next_attempt_at"] is not None

    await until(retry_waits)
    assert {status for status, _ in await redelivered_at_once()} == {202}
    await receiver.wait_for(2)

    async def delivered() -> bool:
        record = (await read(server, deliveries))[1]["data"]
        return len(record) == 2 and bool(record[-1]["outcome"] == "delivered")

    await until(delivered)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 2


async def test_a_jobs_redeliveries_are_bounded(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    receiver: WebhookReceiver,
    sqlite_url: str,
    spool: Path,
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    status, job = await submit(
        server, ("model", "whisper-1"), ("file", audio_bytes(1000)), ("webhook_url", receiver.url)
    )
    assert status == 202
    await receiver.wait_for(1)
    deliveries = job["id"] + "/deliveries"

    async def recorded(count: int) -> None:
        async def check() -> bool:
            return len((await read(server, deliveries))[1]["data"]) == count

        await until(check)

    await recorded(1)
    # As if redelivered until one attempt short of the bound (each row is an attempt).
    store = await open_store(sqlite_url)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(
                insert(async_job_deliveries),
                [
                    {
                        "id": f"dlv_seeded_{n}",
                        "job_id": job["id"],
                        "message_id": "msg_seeded",
                        "attempt": 1,
                        "attempted_at": 0,
                        "outcome": "delivered",
                        "latency_ms": 1,
                    }
                    for n in range(MAX_ATTEMPTS - 2)
                ],
            )
    finally:
        await store.close()
    assert (await read(server, deliveries + "/redeliver", method="POST"))[0] == 202
    await recorded(MAX_ATTEMPTS)
    status, body = await read(server, deliveries + "/redeliver", method="POST")
    assert_error(body, status=409, code="deliveries_exhausted", param="job_id")
    await asyncio.sleep(0.2)
    assert len(receiver.received) == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example/x",  # not https, not listed
        "https://localhost/x",
        "https://127.0.0.2/x",
        "https://10.1.2.3/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://0.0.0.0/x",
        "https://224.0.0.1/x",
        "https://100.64.0.1/x",  # carrier-grade NAT
        "https://[fe80::1]/x",
        "https://[ff02::1]/x",
        # Loopback spelled as the system's resolver (and aiohttp) reads it, not as
        # Python's ipaddress does: connected to without asking any resolver.
        "https://2130706433/x",
        "https://127.1/x",
        "https://017700000001/x",
        "https://127.0.0.1./x",
        # IPv6 addresses that carry a private IPv4 one (compatible, 6to4, NAT64, SIIT).
        "https://[::7f00:1]/x",
        "https://[2002:a00:1::]/x",
        "https://[64:ff9b::a00:1]/x",
        "https://[::ffff:0:a00:1]/x",
        "https://[fec0::1]/x",  # site-local
        "ftp://hooks.example/x",
        "not a url",
    ],
)
async def test_a_webhook_url_that_is_not_allowed_is_a_400_and_no_job(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path, url: str
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    status, body = await submit(
        server, ("model", "whisper-1"), ("webhook_url", url), ("file", audio_bytes(1000))
    )
    refused(status, body, 400, "invalid_webhook_url", "webhook_url")
    assert spool_files(spool) == []
    # Said after the file too (the field may come last).
    status, body = await submit(
        server, ("model", "whisper-1"), ("file", audio_bytes(1000)), ("webhook_url", url)
    )
    assert (status, body["error"]["param"]) == (400, "webhook_url")
    assert spool_files(spool) == []
    assert await server.app[JOBS_KEY].queue.waiting() == 0


async def test_the_sender_connects_only_to_addresses_the_policy_allows(
    receiver: WebhookReceiver,
) -> None:
    assert receiver.server is not None
    by_name = f"http://localhost:{receiver.server.port}/hook"
    # A name that resolves to loopback reaches nothing unless listed...
    async with webhook_session(WebhookPolicy(())) as session:
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.post(by_name, data=b"{}")
    assert receiver.received == []
    # ...by its name, or by its addresses.
    for allowed in (("localhost",), ("127.0.0.1", "::1")):
        async with (
            webhook_session(WebhookPolicy(allowed)) as session,
            session.post(by_name, data=b"{}") as response,
        ):
            assert response.status == 204
    assert refused_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not refused_address(ipaddress.ip_address("8.8.8.8"))
    assert not refused_address(ipaddress.ip_address("2002:808:808::"))  # 8.8.8.8's 6to4


@pytest.mark.parametrize("host", ["2130706433", "127.1", "127.0.0.1.", "[::7f00:1]"])
async def test_the_sender_never_connects_to_loopback_however_it_is_spelled(host: str) -> None:
    connected = asyncio.Event()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        writer.close()

    listening = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    policy = WebhookPolicy(())
    try:
        async with webhook_session(policy) as session:
            sent = await WebhookSender(session, policy, 1).send(
                f"https://{host}:{port}/hook", {}, b"{}"
            )
        assert not sent.delivered
        assert sent.status_code is None
        await asyncio.sleep(0.05)
        assert not connected.is_set()
    finally:
        listening.close()
        await listening.wait_closed()


async def test_without_a_secret_a_webhook_is_refused_at_submit(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    config = jobs_config(upstream, sqlite_url, spool)
    del config["proxy"]["jobs"]["webhook_secret"]
    server = await make_proxy(config)
    status, body = await submit(
        server,
        ("model", "whisper-1"),
        ("file", audio_bytes(1000)),
        ("webhook_url", "https://hooks.example/x"),
    )
    refused(status, body, 400, "webhook_secret_missing", "webhook_url")


# --- bad input, and what it leaves behind -------------------------------------------------------


async def test_stream_true_is_a_400(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    for parts in (
        (("model", "whisper-1"), ("stream", "true"), ("file", audio_bytes(1000))),
        (("model", "whisper-1"), ("file", audio_bytes(1000)), ("stream", "TRUE")),
    ):
        status, body = await submit(server, *parts)
        refused(status, body, 400, "stream_not_supported", "stream")
    assert spool_files(spool) == []
    assert upstream.requests == []


async def test_a_bad_result_ttl_is_a_400_and_a_long_one_is_bounded(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool, max_result_ttl_s=60))
    for bad in ("soon", "0", "-5", "1.5"):
        status, body = await submit(
            server,
            ("model", "whisper-1"),
            ("file", audio_bytes(100)),
            headers={"x-bf-async-job-result-ttl": bad},
        )
        refused(status, body, 400, "invalid_result_ttl", "x-bf-async-job-result-ttl")
    status, job = await submit(
        server,
        ("model", "whisper-1"),
        ("file", audio_bytes(100)),
        headers={"x-bf-async-job-result-ttl": "999999"},
    )
    assert status == 202
    stored = await server.app[JOBS_KEY].queue.get(job["id"])
    assert stored is not None
    assert stored.expires_at - stored.created_at == 60_000


async def test_an_expired_job_is_a_404_and_its_files_are_swept(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(
        jobs_config(upstream, sqlite_url, spool, sweep_interval_s=0.05, workers=0)
    )
    status, job = await submit(
        server,
        ("model", "whisper-1"),
        ("file", audio_bytes(1000)),
        headers={"x-bf-async-job-result-ttl": "1"},
    )
    assert status == 202
    assert len(spool_files(spool)) == 1  # no worker: it waits
    await asyncio.sleep(1.1)
    status, body = await read(server, job["id"])
    refused(status, body, 404, "job_not_found", "job_id")

    async def swept() -> bool:
        return not spool_files(spool)

    await until(swept)


async def test_a_full_spool_refuses_new_jobs_with_507_and_keeps_those_it_has(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(
        jobs_config(upstream, sqlite_url, spool, max_spool_bytes=3_000_000, workers=0)
    )
    status, first = await submit(server, ("model", "whisper-1"), ("file", audio_bytes(2_000_000)))
    assert status == 202
    status, body = await submit(server, ("model", "whisper-1"), ("file", audio_bytes(2_000_000)))
    refused(status, body, 507, "insufficient_storage", error_type="api_error", bifrost=True)
    # Only the accepted job's file: the refused one's partial file is gone.
    assert spool_files(spool) == [first["id"] + ".audio"]
    assert await server.app[JOBS_KEY].queue.waiting() == 1
    status, job = await read(server, first["id"])
    assert (status, job["status"]) == (202, "pending")


async def test_a_client_that_leaves_mid_upload_leaves_no_file_and_no_job(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    sent = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        boundary_head = (
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n"
        )
        yield boundary_head
        for _ in range(20):
            yield audio_bytes(256 * 1024)
        sent.set()
        await asyncio.sleep(30)

    async def upload() -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(
                f"{base_url(server)}{JOBS}",
                data=body(),
                headers={**key(TEAM_A), "Content-Type": "multipart/form-data; boundary=b"},
            )

    task = asyncio.create_task(upload())
    async with asyncio.timeout(10):
        await sent.wait()
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)
    assert spool_files(spool) == []
    assert await server.app[JOBS_KEY].queue.waiting() == 0


async def test_governance_refuses_at_submit_and_keeps_no_file(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    config = jobs_config(upstream, sqlite_url, spool)
    config["governance"]["virtual_keys"][0]["provider_configs"] = [
        {"provider": "openai", "allowed_models": ["gpt-4o-transcribe"]}
    ]
    server = await make_proxy(config)
    status, body = await submit(server, ("model", "whisper-1"), ("file", audio_bytes(1000)))
    refused(status, body, 403, "model_not_allowed", "model", error_type="permission_error")
    assert spool_files(spool) == []
    assert await server.app[JOBS_KEY].queue.waiting() == 0


# --- the queue's leases, on both stores ---------------------------------------------------------


async def test_a_lapsed_lease_is_claimed_again_and_the_old_holder_cannot_finish(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    receiver: WebhookReceiver,
    store_url: str,
    spool: Path,
) -> None:
    server = await make_proxy(jobs_config(upstream, store_url, spool, workers=0, lease_s=0.3))
    status, job = await submit(
        server, ("model", "whisper-1"), ("file", audio_bytes(1000)), ("webhook_url", receiver.url)
    )
    assert status == 202
    store = await open_store(store_url)
    try:
        # A worker of another replica claims it, and dies without renewing its lease.
        dead = JobQueue(JobStore(store), lease_s=0.3)
        claim = await dead.claim("dead-replica")
        assert claim is not None
        assert await dead.claim("another") is None  # held
        await asyncio.sleep(0.4)
        # Its lease lapsed: the next claim takes it over, and only that one may finish it.
        live = JobQueue(JobStore(store), lease_s=5)
        again = await live.claim("live-replica")
        assert again is not None
        assert again.job.id == job["id"]
        assert again.job.claims == 2
        assert not await dead.finish(claim, Outcome("completed", 200, result={}), webhook=True)
        assert await live.finish(
            again, Outcome("completed", 200, result={"text": "x"}), webhook=True
        )
        assert not await live.finish(again, Outcome("completed", 200, result={}), webhook=True)
    finally:
        await store.close()
    done = await ended(server, job["id"])
    assert done["result"] == {"text": "x"}
    assert len(await receiver.wait_for(1)) == 1
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1


async def test_the_openai_sdk_sees_the_job_errors_in_its_own_exceptions(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    client = openai.AsyncOpenAI(base_url=f"{base_url(server)}/v1", api_key=TEAM_A, max_retries=0)
    async with client:
        with pytest.raises(openai.NotFoundError):
            await client.get("/async/audio/transcriptions/job_nothing", cast_to=object)
        with pytest.raises(openai.BadRequestError):
            await client.post(
                "/async/audio/transcriptions",
                cast_to=object,
                body={"model": "whisper-1", "stream": "true"},
                files=[("file", ("a.wav", b"x" * 100, "audio/wav"))],
                options={"headers": {"Content-Type": "multipart/form-data"}},
            )


async def test_a_job_keeps_the_options_it_runs_with_and_never_a_credential(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool, workers=0))
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    options = {"x-bf-cache-key": "episode-12", "traceparent": trace}
    credentials = {
        "cookie": "session=cookie-secret-0123456789",
        "api-key": "azure-secret-0123456789",
        "x-api-key": "anthropic-secret-0123456789",
        "proxy-authorization": "Basic cHJveHktc2VjcmV0",
    }
    # The key as the bearer token, then as x-bf-vk (Bifrost's header for it).
    submitted = [
        await post(
            server,
            form(("model", "whisper-1"), ("file", audio_bytes(1000))),
            {**options, **credentials, **credential},
            JOBS,
        )
        for credential in (key(TEAM_A), {"x-bf-vk": TEAM_A})
    ]
    assert [status for status, _, _ in submitted] == [202, 202]
    store = await open_store(sqlite_url)
    try:
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(async_jobs))).mappings().all()
        queue = JobQueue(JobStore(store), lease_s=5)
        claims = [await queue.claim("reader") for _ in submitted]
    finally:
        await store.close()
    assert len(rows) == 2
    everything = repr([dict(row) for row in rows])
    for secret in (TEAM_A, "cookie-secret", "azure-secret", "anthropic-secret", "cHJveHkt"):
        assert secret not in everything
    for claim in claims:
        assert claim is not None
        assert claim.job.headers == options  # what the run reads as its own, and no more


async def test_a_job_counts_once_against_its_keys_request_limit(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    config = jobs_config(upstream, sqlite_url, spool)
    config["governance"]["rate_limits"] = [
        {"id": "two", "request_max_limit": 2, "request_reset_duration": "1h"}
    ]
    config["governance"]["virtual_keys"][0]["rate_limit_id"] = "two"
    server = await make_proxy(config)
    jobs = []
    for _ in range(2):
        status, job = await submit(server, ("model", "whisper-1"), ("file", audio_bytes(1000)))
        assert status == 202
        jobs.append(job)
    # Admitted at submit, run without being counted again.
    for job in jobs:
        assert (await ended(server, job["id"]))["status"] == "completed"
    status, body = await submit(server, ("model", "whisper-1"), ("file", audio_bytes(1000)))
    refused(status, body, 429, "rate_limit_exceeded", error_type="rate_limit_error")
    assert spool_files(spool) == []


async def test_a_keys_own_secret_and_default_webhook_url(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    aiohttp_server: ServerFactory,
    sqlite_url: str,
    spool: Path,
) -> None:
    own = "whsec_" + base64.b64encode(b"team b's own secret, 32 bytes.!!").decode()
    hooks = WebhookReceiver(secret=own)
    hooks.server = await aiohttp_server(hooks.app)
    config = jobs_config(upstream, sqlite_url, spool)
    config["governance"]["virtual_keys"][1] |= {"webhook_secret": own, "webhook_url": hooks.url}
    server = await make_proxy(config)
    status, job = await submit(
        server, ("model", "whisper-1"), ("file", audio_bytes(1000)), headers=key(TEAM_B)
    )
    assert status == 202
    (delivery,) = await hooks.wait_for(1)
    # Signed with the key's secret, not the global one.
    assert delivery.verified
    # Neither secret is ever shown: not in the job's webhook, not in the jobs' repr.
    assert "whsec_" not in repr(server.app[JOBS_KEY])
    assert "whsec_" not in str(delivery.payload)
    assert delivery.payload is not None
    assert delivery.payload["data"]["id"] == job["id"]


async def test_a_job_uses_the_transcript_cache_its_request_asked_for(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    audio = audio_bytes(20_000)
    results = []
    for _ in range(2):
        status, job = await submit(
            server,
            ("model", "whisper-1"),
            ("file", audio),
            headers={"x-bf-cache-key": "team-a-cache"},
        )
        assert status == 202
        results.append((await ended(server, job["id"]))["result"])
    assert len(upstream.requests) == 1
    assert results[0]["text"] == results[1]["text"]
    assert results[1]["extra_fields"]["cache_debug"]["cache_hit"] is True


async def test_a_job_whose_runs_keep_dying_ends_failed(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool, workers=0))
    status, job = await submit(server, ("model", "whisper-1"), ("file", audio_bytes(1000)))
    assert status == 202
    store = await open_store(sqlite_url)
    try:
        # Five runs, each on a replica that died: their leases lapse one after another.
        dying = JobQueue(JobStore(store), lease_s=0.01)
        for _ in range(MAX_CLAIMS):
            assert await dying.claim("doomed-replica") is not None
            await asyncio.sleep(0.02)
    finally:
        await store.close()
    # The next claim (a live replica's) ends it instead of running it a sixth time.
    server_two = await make_proxy(jobs_config(upstream, sqlite_url, spool))
    done = await ended(server_two, job["id"])
    assert done["status"] == "failed"
    assert done["status_code"] == 500
    assert done["error"]["error"]["code"] == "job_interrupted"
    assert upstream.requests == []


async def test_jobs_that_cannot_start_answer_503_and_the_proxy_serves_on(
    make_proxy: ProxyFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = jobs_config(upstream, "", tmp_path)
    del config["proxy"]["store"]
    # A spool directory no one can make (a file is in the way, even for root), and no
    # store of the request log's to share.
    (tmp_path / "file").write_text("")
    config["proxy"]["data_dir"] = str(tmp_path / "file" / "data")
    config["proxy"]["jobs"]["spool_dir"] = str(tmp_path / "file" / "jobs")
    config["logs"] = {"enabled": False}
    server = await make_proxy(config)
    status, _, _ = await post(
        server, form(("model", "whisper-1"), ("file", audio_bytes(1000))), key(TEAM_A)
    )
    assert status == 200
    status, body = await submit(server, ("model", "whisper-1"), ("file", audio_bytes(1000)))
    refused(status, body, 503, "jobs_unavailable", error_type="api_error", bifrost=True)
    status, body = await read(server, "job_anything")
    refused(status, body, 503, "jobs_unavailable", error_type="api_error", bifrost=True)


# --- governance: admitted and reserved for at submit, settled once by the run -----------------


SAMPLE = (Path(__file__).parent / "data" / "sample.wav").read_bytes()  # 9.08 s, its header says


def budgeted(config: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Team A on a budget of ``seconds`` of audio a day, metered from the WAV's header."""
    config["governance"]["budgets"] = [
        {"id": "b", "max_limit": seconds, "reset_duration": "1d", "unit": "audio_seconds"}
    ]
    config["governance"]["reserve_audio_seconds"] = 1
    config["governance"]["virtual_keys"][0]["budget_id"] = "b"
    return config


def held_back(upstream: FakeUpstream) -> asyncio.Event:
    """The upstream answers (reporting no length: it is metered from the header) once the
    event is set."""
    held = asyncio.Event()

    async def when_let(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        await held.wait()
        return web.json_response({"text": "no usage reported"})

    upstream.respond = when_let
    return held


async def test_a_key_past_its_budget_is_refused_at_submit_and_a_job_is_charged_once(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    held = held_back(upstream)
    server = await make_proxy(budgeted(jobs_config(upstream, sqlite_url, spool), 20))
    # 9.08 s each, reserved at submit and kept: the third would pass 20 s, refused now.
    answers = [await submit(server, ("model", "whisper-1"), ("file", SAMPLE)) for _ in range(4)]
    assert [status for status, _ in answers] == [202, 202, 402, 402]
    refused(*answers[2], 402, "budget_exceeded", error_type="insufficient_quota")
    assert len(spool_files(spool)) == 2  # the refused ones kept none
    held.set()
    # Their runs settle what was reserved for them: neither is refused at run time.
    for _, job in answers[:2]:
        assert (await ended(server, job["id"]))["status"] == "completed"
    # Charged once each (18.16 s of 20): another 9.08 s is refused, a second is not.
    status, _, _ = await post(server, form(("model", "whisper-1"), ("file", SAMPLE)), key(TEAM_A))
    assert status == 402
    second = wav_declaring(16_000, 1.0, 1.0)
    status, _, _ = await post(server, form(("model", "whisper-1"), ("file", second)), key(TEAM_A))
    assert status == 200


async def test_a_job_that_never_runs_gives_its_reservation_back(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    config = jobs_config(upstream, sqlite_url, spool, workers=0, sweep_interval_s=0.05)
    server = await make_proxy(budgeted(config, 20))

    async def submitted(ttl_s: int = 3600) -> tuple[int, dict[str, Any]]:
        ttl = {"x-bf-async-job-result-ttl": str(ttl_s)}
        return await submit(server, ("model", "whisper-1"), ("file", SAMPLE), headers=ttl)

    (status, cancelled), (again, _) = await submitted(), await submitted(ttl_s=1)
    assert (status, again) == (202, 202)
    assert (await submitted())[0] == 402
    # Cancelled while it waited: what it reserved is the key's again.
    assert (await read(server, cancelled["id"], method="DELETE"))[0] == 200
    status, _ = await submitted()
    assert status == 202
    assert (await submitted())[0] == 402
    # Expired before it ran: the same.
    await asyncio.sleep(1.1)

    async def given_back() -> bool:
        return (await submitted())[0] == 202

    await until(given_back)


async def test_a_job_handed_back_mid_run_is_charged_once_by_the_run_that_ends_it(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    held = held_back(upstream)
    server = await make_proxy(budgeted(jobs_config(upstream, sqlite_url, spool, workers=1), 20))
    status, job = await submit(server, ("model", "whisper-1"), ("file", SAMPLE))
    assert status == 202
    await asyncio.wait_for(upstream.body_started.wait(), 10)
    # The replica stops mid-run (SIGTERM's path): the job goes back, to run again.
    workers = server.app[JOBS_KEY].workers
    await workers.stop()
    assert (await read(server, job["id"]))[1]["status"] == "pending"
    held.set()
    workers.start()
    assert (await ended(server, job["id"]))["status"] == "completed"
    # 9.08 s charged, once: another 9.08 s fits in 20, a third does not.
    statuses = []
    for _ in range(2):
        answer = await post(server, form(("model", "whisper-1"), ("file", SAMPLE)), key(TEAM_A))
        statuses.append(answer[0])
    assert statuses == [200, 402]


async def test_uploads_that_overlap_cannot_both_take_the_spools_last_room(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    server = await make_proxy(
        jobs_config(upstream, sqlite_url, spool, max_spool_bytes=3_000_000, workers=0)
    )
    started = [asyncio.Event(), asyncio.Event()]
    both = asyncio.Event()

    async def body(began: asyncio.Event) -> AsyncIterator[bytes]:
        yield (
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n"
        )
        yield audio_bytes(1_000_000)
        began.set()
        await both.wait()
        yield audio_bytes(1_000_000, seed=2)
        yield b"\r\n--b--\r\n"

    async def upload(began: asyncio.Event) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{base_url(server)}{JOBS}",
                data=body(began),
                headers={**key(TEAM_A), "Content-Type": "multipart/form-data; boundary=b"},
            ) as response,
        ):
            return response.status

    uploads = [asyncio.create_task(upload(began)) for began in started]
    async with asyncio.timeout(10):
        for began in started:
            await began.wait()
    await asyncio.sleep(0.2)  # both halfway in the spool, 2 MB each of 3 MB
    both.set()
    assert sorted(await asyncio.gather(*uploads)) == [202, 507]
    assert len(spool_files(spool)) == 1


async def test_cancel_and_completion_race_to_one_end(
    make_proxy: ProxyFactory, upstream: FakeUpstream, store_url: str, spool: Path
) -> None:
    server = await make_proxy(jobs_config(upstream, store_url, spool, workers=0))
    ids = []
    for _ in range(2):
        status, job = await submit(server, ("model", "whisper-1"), ("file", audio_bytes(1000)))
        assert status == 202
        ids.append(job["id"])
    store = await open_store(store_url)
    try:
        queue = JobQueue(JobStore(store), lease_s=5)
        # Cancelled while it runs: its worker cannot complete it after.
        claim = await queue.claim("replica")
        assert claim is not None
        cancelled, waited = await queue.cancel(claim.job.id)
        assert cancelled is not None
        assert (cancelled.status, waited) == ("cancelled", False)
        assert not await queue.finish(claim, Outcome("completed", 200, result={}), webhook=False)
        # Completed first: the cancel changes nothing, and says so.
        claim = await queue.claim("replica")
        assert claim is not None
        assert await queue.finish(claim, Outcome("completed", 200, result={}), webhook=False)
        ended_first, waited = await queue.cancel(claim.job.id)
        assert ended_first is not None
        assert (ended_first.status, waited) == ("completed", False)
    finally:
        await store.close()
    status, body = await read(server, ids[1], method="DELETE")
    refused(status, body, 400, "job_ended", "job_id")


async def test_a_model_the_key_may_not_use_is_refused_before_its_upload_is_read(
    make_proxy: ProxyFactory, upstream: FakeUpstream, sqlite_url: str, spool: Path
) -> None:
    config = jobs_config(upstream, sqlite_url, spool)
    config["governance"]["virtual_keys"][0]["provider_configs"] = [
        {"provider": "openai", "allowed_models": ["gpt-4o-transcribe"]}
    ]
    server = await make_proxy(config)
    finished = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield (
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n"
        )
        yield audio_bytes(64 * 1024)
        await finished.wait()  # the rest of a long recording, never sent

    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{base_url(server)}{JOBS}",
                data=body(),
                headers={**key(TEAM_A), "Content-Type": "multipart/form-data; boundary=b"},
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response,
        ):
            assert response.status == 403
    finally:
        finished.set()
    assert spool_files(spool) == []


async def test_a_store_that_fails_is_logged_once_an_outage_not_once_a_poll(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    sqlite_url: str,
    spool: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Polled every 50 ms by two workers, the deliveries and the sweeper.
    server = await make_proxy(jobs_config(upstream, sqlite_url, spool, sweep_interval_s=0.05))
    store = await open_store(sqlite_url)
    try:
        with caplog.at_level(logging.WARNING, logger="proxy.jobs"):
            # The jobs' table gone from under the proxy: every poll fails.
            async with store.engine.begin() as conn:
                await conn.exec_driver_sql("ALTER TABLE async_jobs RENAME TO async_jobs_away")
            await asyncio.sleep(1.0)
            async with store.engine.begin() as conn:
                await conn.exec_driver_sql("ALTER TABLE async_jobs_away RENAME TO async_jobs")

            async def recovered() -> bool:
                return sum("works again" in r.getMessage() for r in caplog.records) == 3

            await until(recovered)
    finally:
        await store.close()
    failures = [r for r in caplog.records if "failed; tried again" in r.getMessage()]
    assert sorted(r.getMessage().split(" failed")[0] for r in failures) == [
        "claiming jobs",
        "deleting expired jobs",
        "sending due webhooks",
    ]
    assert all(r.exc_info is not None for r in failures)  # the first one's traceback
    jobs_lines = [r for r in caplog.records if r.name.startswith("proxy.jobs")]
    assert len(jobs_lines) == 6  # not one a poll: about sixty in that second
    status, job = await submit(server, ("model", "whisper-1"), ("file", audio_bytes(1000)))
    assert status == 202
    assert (await ended(server, job["id"]))["status"] == "completed"
