"""Replicas behind nginx (deploy/nginx.conf) sharing one Redis: a restart under load loses
nothing, and limits hold across replicas. The short version of scripts/scale_out.py."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers.client import URL, form
from tests.helpers.nginx import nginx_binary, nginx_in_front
from tests.helpers.processes import RedisServer, free_port, start_proxy_process
from tests.helpers.upstream import FakeUpstream, provider_config

VK = "sk-bf-scale-out-0000001"
LIMIT = 6
#: Nobody reads the replicas' log pipes here: an access line each would fill them.
QUIET = ("--log-level", "WARNING")

pytestmark = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (scripts/test installs nginx-light)"
)


def replica_config(upstream: FakeUpstream, redis: RedisServer) -> dict[str, Any]:
    config = provider_config(upstream)
    config["proxy"] = {"redis_url": redis.url, "drain_timeout_s": 20}
    config["governance"] = {
        "virtual_keys": [
            {
                "id": "team",
                "value": VK,
                "provider_configs": [{"provider": "openai", "allowed_models": ["*"]}],
                "rate_limit_id": "few",
            }
        ],
        "rate_limits": [{"id": "few", "request_max_limit": LIMIT, "request_reset_duration": "1h"}],
    }
    return config


async def paced_upload(url: str, audio: bytes, started: asyncio.Event) -> tuple[int, str]:
    """``audio`` uploaded over about a second; the answer's status and text."""
    boundary = "scale-out"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        for start in range(0, len(audio), 65536):
            started.set()
            yield audio[start : start + 65536]
            await asyncio.sleep(0.06)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}{URL}", data=body(), headers=headers) as response,
    ):
        return response.status, (await response.json())["text"]


async def small_requests(url: str, stop: asyncio.Event) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            data = form(("model", "whisper-1"), ("file", b"RIFF" * 2500))
            async with session.post(f"{url}{URL}", data=data) as response:
                statuses.append(response.status)
    return statuses


async def test_a_replica_restarted_under_load_loses_nothing(
    upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = replica_config(upstream, redis_server)
    ports = [free_port(), free_port()]
    replicas = [
        (await start_proxy_process(config, tmp_path, *QUIET, name=f"replica-{k}", port=port))[0]
        for k, port in enumerate(ports)
    ]
    try:
        async with nginx_in_front(ports, tmp_path) as url:
            audio = bytes(range(256)) * 4096  # 1 MiB, sent over about a second
            stop = asyncio.Event()
            load = [asyncio.create_task(small_requests(url, stop)) for _ in range(2)]
            uploads = []
            for _ in range(2):
                started = asyncio.Event()
                uploads.append(asyncio.create_task(paced_upload(url, audio, started)))
                await started.wait()
            await asyncio.sleep(0.3)
            # Both uploads' bodies are still arriving, on one replica or the other.
            replicas[0].send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(replicas[0].wait(), 15) == 0
            replicas[0], _ = await start_proxy_process(
                config, tmp_path, *QUIET, name="replica-0", port=ports[0]
            )
            await asyncio.sleep(0.5)
            stop.set()
            statuses = [status for task in load for status in await task]
            answers = [await task for task in uploads]
            assert statuses
            assert set(statuses) == {200}
            digest = hashlib.sha256(audio).hexdigest()
            assert answers == [(200, f"heard {len(audio)} bytes")] * 2
            assert [r.file.sha256 for r in upstream.requests if r.file.size == len(audio)] == [
                digest,
                digest,
            ]

            # One limit across both replicas, as one process would keep it.
            async with aiohttp.ClientSession() as session:

                async def limited() -> int:
                    data = form(("model", "whisper-1"), ("file", b"RIFF"))
                    headers = {"x-bf-vk": VK}
                    async with session.post(f"{url}{URL}", data=data, headers=headers) as r:
                        return r.status

                limited_statuses = await asyncio.gather(*(limited() for _ in range(LIMIT + 4)))
            assert sorted(limited_statuses) == [200] * LIMIT + [429] * 4
    finally:
        for replica in replicas:
            if replica.returncode is None:
                replica.kill()
                await replica.wait()
