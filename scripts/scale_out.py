"""Three replicas behind nginx (deploy/nginx.conf), restarted and killed under load.

Everything runs on 127.0.0.1: one redis-server (shared limits), one fake
OpenAI-compatible upstream (its own process; it hashes each upload as it
streams and records which replica's key each request id arrived with), three
``python -m proxy`` replicas on fixed ports (so one can be started again on
its port) and nginx in front, with deploy/nginx.conf's upstream and listen
lines pointed at them. Clients send a mixed load through nginx: small
uploads, 1 MiB uploads paced over a second, 100 MiB uploads generated as
sent, SSE streams and a realtime session (which reconnects when a drain
tells it to). Every answer's text must be the sha256 of what the client sent.

1. steady: ``--seconds`` of load.
2. rolling restart: each replica in turn gets SIGTERM, exits once drained,
   is started again and is ready before the next; target 0 failed,
   truncated or mismatched.
3. SIGKILL: the busiest replica killed mid-load and started again; failures
   are attributed (by the upstream's records) to the killed replica or
   others, and those that never reached the upstream shown as nginx saw them.
4. limits: a virtual key's request limit, shared through Redis by all three,
   holds exactly (L answered 200, the rest 429).
5. throughput: small requests through nginx over three replicas against one.

Exits non-zero when phase 2 had a failure or phase 4's counts are not exact.
Logs (replicas', nginx's error and access logs) stay in a temporary
directory that is printed when something failed (or with ``--keep-logs``).

    .venv/bin/python scripts/scale_out.py
    .venv/bin/python scripts/scale_out.py --seconds 5 --throughput-seconds 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from benchlib import ROOT, cpu_seconds, free_port, main, one_provider, running, system_binary

sys.path.insert(0, str(ROOT))
# The one rewrite of deploy/nginx.conf for 127.0.0.1, shared with tests/test_scale_out.py.
from tests.helpers.nginx import site_config

PATH = "/v1/audio/transcriptions"
REALTIME_PATH = "/v1/realtime?intent=transcription"
BOUNDARY = "scale-out-boundary"
KIB = 1024
MIB = 1024 * KIB
REPLICAS = 3
#: Long enough that nothing in this load is cut by it: every drain ends because
#: the replica's work is done, not because its time ran out.
DRAIN_TIMEOUT_S = 20
VIRTUAL_KEY = "sk-bf-scale-out-limits"
#: What the clients tolerate before calling a request hung (a 100 MiB upload
#: on a loaded 2-core machine included).
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)


# --- the fake upstream (a child process) -----------------------------------------------------

#: (x-request-id, replica number from the key, body read to its end) per request.
Record = tuple[str, int, bool]
RECORDS = web.AppKey("records", list[Record])
#: The upstream's SSE answer: the sha256 in pieces, one every 0.1 s.
DELTA_CHARS = 4
DELTA_INTERVAL_S = 0.1


def _replica_of(request: web.Request) -> int:
    """Which replica sent ``request``: its key is ``sk-replica-N``."""
    key = request.headers.get("Authorization", "").removeprefix("Bearer ")
    number = key.rpartition("-")[2]
    return int(number) if key.startswith("sk-replica-") and number.isdigit() else 0


async def _transcribe(request: web.Request) -> web.StreamResponse:
    """Read the form part by part (the file hashed as it streams), record the request, and
    answer the file's sha256 as its transcript (as SSE events with ``stream=true``)."""
    records = request.app[RECORDS]
    request_id = request.headers.get("x-request-id", "-")
    replica = _replica_of(request)
    fields: dict[str, str] = {}
    digest = hashlib.sha256()
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            if part.filename is None:
                fields[part.name or ""] = (await part.read()).decode()
                continue
            while chunk := await part.read_chunk(MIB):
                digest.update(chunk)
    except BaseException:  # the proxy hung up (cancelled handler) or sent a cut body
        records.append((request_id, replica, False))
        raise
    records.append((request_id, replica, True))
    text = digest.hexdigest()
    if fields.get("stream") != "true":
        return web.json_response({"text": text, "usage": {"type": "duration", "seconds": 1}})
    return await _stream(request, text)


async def _stream(request: web.Request, text: str) -> web.StreamResponse:
    """``text`` as OpenAI's transcript events: deltas of a few characters, then done."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    done = {
        "type": "transcript.text.done",
        "text": text,
        "usage": {"type": "duration", "seconds": 1},
    }
    try:
        for start in range(0, len(text), DELTA_CHARS):
            await asyncio.sleep(DELTA_INTERVAL_S)
            delta = {"type": "transcript.text.delta", "delta": text[start : start + DELTA_CHARS]}
            await response.write(b"data: " + orjson.dumps(delta) + b"\n\n")
        await response.write(b"data: " + orjson.dumps(done) + b"\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the replica went away mid-stream (SIGKILL): its client hears of it, not us
    return response


async def _stats(request: web.Request) -> web.Response:
    """``GET /stats?prefix=P``: the records whose request id starts with ``P``."""
    prefix = request.query.get("prefix", "")
    chosen = [record for record in request.app[RECORDS] if record[0].startswith(prefix)]
    return web.Response(body=orjson.dumps(chosen), content_type="application/json")


def run_upstream(port: int) -> None:
    """The fake upstream, until it is told to stop."""
    app = web.Application(client_max_size=1 << 40)
    app[RECORDS] = []
    app.router.add_post(PATH, _transcribe)
    app.router.add_get("/stats", _stats)
    # Cancelled when the proxy hangs up, so an aborted upload is recorded as one.
    web.run_app(
        app, host="127.0.0.1", port=port, print=None, access_log=None, handler_cancellation=True
    )


# --- the processes ---------------------------------------------------------------------------


@asynccontextmanager
async def redis_server(directory: Path) -> AsyncIterator[str]:
    """A redis-server on a free port, nothing persisted; yields its URL."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        system_binary("redis-server", "redis-server"),
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        *("--dir", str(directory)),
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        await _redis_answers(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already (a Ctrl-C reached it)
            process.terminate()
        await process.wait()


async def _redis_answers(port: int) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PING\r\n")
            answer = await reader.readline()
            writer.close()
            if answer.startswith(b"+PONG"):
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not answer")


@asynccontextmanager
async def child(*command: str, up: str) -> AsyncIterator[int]:
    """benchlib's :func:`running`, for a child that a Ctrl-C may have ended first (the
    terminal signals the whole process group): nothing is left to terminate then.
    Yields its pid."""
    try:
        async with running(*command, up=up) as process:
            yield process.pid
    except ProcessLookupError as gone:
        if gone.__context__ is not None:
            raise gone.__context__ from None  # what ended the block (the Ctrl-C) goes on


def replica_config(number: int, upstream_port: int, redis_url: str, limit: int) -> dict[str, Any]:
    """Replica ``number``'s config: the shared Redis, a key naming the replica (the upstream
    tells replicas apart by it), and the virtual key of the limits phase."""
    config = one_provider(upstream_port)
    config["providers"]["openai"]["keys"] = [{"value": f"sk-replica-{number}"}]
    config["proxy"].update(redis_url=redis_url, drain_timeout_s=DRAIN_TIMEOUT_S)
    config["governance"] = {
        "virtual_keys": [
            {
                "id": "scale-out",
                "value": VIRTUAL_KEY,
                "is_active": True,
                "provider_configs": [{"provider": "openai", "allowed_models": ["*"]}],
                "rate_limit_id": "scale-out",
            }
        ],
        "rate_limits": [
            {"id": "scale-out", "request_max_limit": limit, "request_reset_duration": "1h"}
        ],
    }
    return config


@dataclass(frozen=True)
class Busy:
    """What a replica is serving at a moment."""

    requests: int
    uploads: int  # bodies still arriving
    streams: int
    sessions: int  # realtime

    def __str__(self) -> str:
        return (
            f"{self.requests} requests in flight ({self.uploads} uploads arriving, "
            f"{self.streams} streams), {self.sessions} realtime sessions"
        )


class Replica:
    """One ``python -m proxy`` on a port of its own, started again on it at will."""

    #: Past the drain and aiohttp's grace after it: a replica still running is stuck.
    EXIT_TIMEOUT_S = DRAIN_TIMEOUT_S + 10

    def __init__(self, number: int, port: int, config: Path, log: Path) -> None:
        self.number = number
        self.port = port
        self.config = config
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start it (its output appended to its log) and wait until it is ready."""
        # Appended: a restarted replica's lines follow its previous run's.
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "proxy", "--port", str(self.port)),
                *("--config", str(self.config)),
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        await self._ready()

    async def _ready(self) -> None:
        url = f"http://127.0.0.1:{self.port}/health/ready"
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                if not self.alive:
                    raise RuntimeError(f"replica {self.number} exited; see {self.log}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"replica {self.number} was not ready in 30 s; see {self.log}")

    async def busy(self) -> Busy:
        """What it is serving, from its metrics."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
        values: Counter[str] = Counter()
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if not line.startswith("#"):
                values[name.partition("{")[0]] += int(float(value))  # labels summed
        return Busy(
            requests=values["proxy_requests_in_flight"],
            uploads=values["proxy_active_uploads"],
            streams=values["proxy_open_streams"],
            sessions=values["proxy_realtime_sessions"],
        )

    async def terminate(self) -> tuple[float, int]:
        """SIGTERM, and wait for it to drain and exit: seconds it took, and its exit code
        (SIGKILLed if it outlives its drain)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), self.EXIT_TIMEOUT_S)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        return time.monotonic() - started, code

    async def kill(self) -> None:
        """SIGKILL: no drain, connections cut."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def stop(self) -> None:
        """On the way out: SIGTERM (a second one ends a drain a Ctrl-C began), SIGKILL if
        it lingers."""
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def replicas_running(
    directory: Path, upstream_port: int, redis_url: str, limit: int
) -> AsyncIterator[list[Replica]]:
    """The three replicas, each on a free port chosen once; all stopped on the way out."""
    replicas = []
    for number in range(1, REPLICAS + 1):
        config = directory / f"replica-{number}.json"
        config.write_text(json.dumps(replica_config(number, upstream_port, redis_url, limit)))
        log = directory / f"replica-{number}.log"
        replicas.append(Replica(number, free_port(), config, log))
    try:
        await asyncio.gather(*(replica.start() for replica in replicas))
        yield replicas
    finally:
        await asyncio.gather(*(replica.stop() for replica in replicas))


#: The main config deploy/nginx.conf is included into, everything under ``prefix``.
#: The access log names the replica each request id went to, for phase 3's
#: failures that never reached the upstream.
NGINX_MAIN = """
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  log_format scale_out '$http_x_request_id|$status|$upstream_addr|$upstream_status|'
                       '$request_time';
  access_log {prefix}/access.log scale_out;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  include {prefix}/site.conf;
}}
"""


def write_nginx_conf(prefix: Path, replica_ports: Iterable[int], listen_port: int) -> Path:
    """nginx's files for :func:`nginx_in_front` under ``prefix`` (a new directory): the
    main config, which it returns, and the rewritten deploy/nginx.conf it includes."""
    prefix.mkdir()
    (prefix / "site.conf").write_text(site_config(replica_ports, listen_port))
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(prefix=prefix))
    return conf


@asynccontextmanager
async def nginx_in_front(
    replica_ports: Iterable[int], prefix: Path
) -> AsyncIterator[tuple[int, list[int]]]:
    """nginx with deploy/nginx.conf over ``replica_ports``, its files under ``prefix``;
    yields its port and its processes' pids."""
    port = free_port()
    conf = write_nginx_conf(prefix, replica_ports, port)
    nginx = system_binary("nginx", "nginx-light")
    command = (nginx, "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log"))
    async with child(*command, "-g", "daemon off;", up=f"http://127.0.0.1:{port}/health") as pid:
        yield port, with_children(pid)


def with_children(pid: int) -> list[int]:
    """``pid`` and its children's (nginx's master and workers)."""
    return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


# --- the load --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one kind of client saw in a phase."""

    ok: int = 0
    #: Why requests failed (status and error code, or the exception), and how often.
    failures: Counter[str] = field(default_factory=Counter)
    truncated: Counter[str] = field(default_factory=Counter)
    mismatched: int = 0
    reconnects: int = 0
    #: Request (or realtime session) ids of everything failed, truncated or mismatched.
    bad_ids: list[str] = field(default_factory=list)

    def fail(self, request_id: str, why: str) -> None:
        self.failures[why] += 1
        self.bad_ids.append(request_id)

    def truncate(self, request_id: str, why: str) -> None:
        self.truncated[why] += 1
        self.bad_ids.append(request_id)

    def mismatch(self, request_id: str) -> None:
        self.mismatched += 1
        self.bad_ids.append(request_id)

    @property
    def bad(self) -> int:
        return sum(self.failures.values()) + sum(self.truncated.values()) + self.mismatched


HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
FILE_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="audio.wav"\r\n'
    "Content-Type: audio/wav\r\n\r\n"
).encode()
END = f"\r\n--{BOUNDARY}--\r\n".encode()


def text_fields(**fields: str) -> bytes:
    """Form parts for ``fields``, to go before the file."""
    return b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )


MODEL = text_fields(model="whisper-1")


def small_form(size: int) -> tuple[bytes, str]:
    """A whole form with ``size`` random bytes of file, and the file's sha256."""
    data = os.urandom(size)
    return MODEL + FILE_HEAD + data + END, hashlib.sha256(data).hexdigest()


async def generated_form(
    blocks: int, block_size: int, hashed: Callable[[bytes], None], pause_s: float = 0.0
) -> AsyncIterator[bytes]:
    """A form whose file is ``blocks`` random blocks made as they are sent (``pause_s``
    apart), each given to ``hashed`` on the way: never held whole."""
    yield MODEL + FILE_HEAD
    base = os.urandom(block_size)
    for index in range(blocks):
        if pause_s:
            await asyncio.sleep(pause_s)
        # Each block differs from the others, so a lost or repeated one changes the hash.
        block = index.to_bytes(8, "big") + base[8:]
        hashed(block)
        yield block
    yield END


def described(exc: BaseException) -> str:
    """An exception a client met, in a few words: its type, and for a socket error which."""
    if isinstance(exc, OSError) and exc.strerror:
        # aiohttp names the URL, which is the same for every request.
        return f"{type(exc).__name__} ({exc.strerror.partition(' for http')[0]})"
    return type(exc).__name__


def _why(status: int, raw: bytes) -> str:
    """A failed answer in a few words: its status and the proxy's error code (or nginx's)."""
    try:
        code = orjson.loads(raw)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        code = "nginx" if b"nginx" in raw else "not the proxy's error shape"
    return f"{status} {code}"


async def post_form(
    session: aiohttp.ClientSession,
    url: str,
    request_id: str,
    tally: Tally,
    body: bytes | AsyncIterator[bytes],
    sha: Callable[[], str],
    headers: dict[str, str] | None = None,
) -> None:
    """POST one form and tally the answer: its text must be ``sha()`` (computed once the
    body has been sent)."""
    sent = {**HEADERS, "x-request-id": request_id, **(headers or {})}
    async with session.post(url + PATH, data=body, headers=sent) as response:
        raw = await response.read()
    if response.status != 200:
        tally.fail(request_id, _why(response.status, raw))
    elif _text_of(raw) != sha():
        tally.mismatch(request_id)
    else:
        tally.ok += 1


def _text_of(answer: bytes) -> str | None:
    """The transcript of a JSON answer (None when it is not one)."""
    try:
        document = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    return document.get("text") if isinstance(document, dict) else None


async def small_upload(
    session: aiohttp.ClientSession, url: str, request_id: str, tally: Tally
) -> None:
    """One upload of 10-50 KB, sent whole."""
    body, sha = small_form(random.randint(10_000, 50_000))
    await post_form(session, url, request_id, tally, body, lambda: sha)


async def paced_upload(
    session: aiohttp.ClientSession, url: str, request_id: str, tally: Tally
) -> None:
    """One 1 MiB upload sent over about a second (64 KiB every 60 ms): its body is still
    arriving when a SIGTERM comes."""
    digest = hashlib.sha256()
    body = generated_form(16, 64 * KIB, digest.update, pause_s=0.06)
    await post_form(session, url, request_id, tally, body, digest.hexdigest)


async def big_upload(
    session: aiohttp.ClientSession, url: str, request_id: str, tally: Tally
) -> None:
    """One 100 MiB upload, generated a MiB at a time as it is sent."""
    digest = hashlib.sha256()
    body = generated_form(100, MIB, digest.update)
    await post_form(session, url, request_id, tally, body, digest.hexdigest)


async def sse_stream(
    session: aiohttp.ClientSession, url: str, request_id: str, tally: Tally
) -> None:
    """One ``stream=true`` request read to its end: complete only with the done event
    (its text the sha256, as the deltas joined are) and then ``[DONE]``."""
    body, sha = small_form(10_000)
    body = text_fields(stream="true") + body
    headers = {**HEADERS, "x-request-id": request_id}
    async with session.post(url + PATH, data=body, headers=headers) as response:
        if response.status != 200:
            tally.fail(request_id, _why(response.status, await response.read()))
            return
        try:
            outcome = await _read_events(response, sha)
        except (aiohttp.ClientError, TimeoutError) as exc:  # the connection cut or stalled
            outcome = f"cut ({described(exc)})"
    if outcome == "ok":
        tally.ok += 1
    elif outcome == "mismatch":
        tally.mismatch(request_id)
    else:
        tally.truncate(request_id, outcome)


async def _read_events(response: aiohttp.ClientResponse, sha: str) -> str:
    """``ok``, ``mismatch``, or why the stream is truncated."""
    deltas: list[str] = []
    done: str | None = None
    async for line in response.content:
        if not line.startswith(b"data: "):
            continue  # blank lines between events, keepalive comments
        data = line[len(b"data: ") :].strip()
        if data == b"[DONE]":
            if done is None:
                return "[DONE] without a done event"
            return "ok" if done == sha and "".join(deltas) == sha else "mismatch"
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return "an event that is not JSON"
        if "error" in event:
            return f"error event {event['error'].get('code')}"
        if event.get("type") == "transcript.text.delta":
            deltas.append(event["delta"])
        elif event.get("type") == "transcript.text.done":
            done = event["text"]
    return "ended without [DONE]"


#: One second of a 440 Hz tone, 24 kHz PCM16, as ``input_audio_buffer.append`` carries it.
SECOND_OF_AUDIO = base64.b64encode(
    array("h", (int(3000 * math.sin(2 * math.pi * 440 * n / 24_000)) for n in range(24_000)))
).decode()
SESSION_UPDATE = {
    "type": "session.update",
    "session": {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24_000},
                "turn_detection": None,
                "transcription": {"model": "whisper-1"},
            }
        },
    },
}
TURN_COMPLETED = "conversation.item.input_audio_transcription.completed"
CLOSE_RESTARTING = 1012
TURN_TIMEOUT_S = 15


class SessionEnded(Exception):
    """A realtime session ended: ``reconnect`` when the server asked for it (a drain)."""

    def __init__(self, why: str, *, reconnect: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.reconnect = reconnect


async def realtime_client(url: str, phase: str, stop: asyncio.Event, tally: Tally) -> None:
    """Realtime sessions one after another until ``stop``: ``ok`` counts completed turns; a
    session the server drained is a reconnect; any other end is a failure."""
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        number = 0
        while not stop.is_set():
            number += 1
            session_id = f"{phase}-realtime-{number}"
            try:
                await _realtime_session(http, url, session_id, stop, tally)
            except SessionEnded as ended:
                if ended.reconnect:
                    tally.reconnects += 1
                else:
                    tally.fail(session_id, ended.why)
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.fail(session_id, described(exc))
            if tally.bad_ids[-1:] == [session_id]:
                await asyncio.sleep(0.2)  # no tight loop of failing connects


async def _realtime_session(
    http: aiohttp.ClientSession, url: str, session_id: str, stop: asyncio.Event, tally: Tally
) -> None:
    """One session: a second of audio, a commit, its transcript, again and again. Told to
    reconnect, it finishes the turn it is in and leaves (so the drain need not wait)."""
    told = asyncio.Event()
    headers = {"x-request-id": session_id}
    async with http.ws_connect(url + REALTIME_PATH, headers=headers, max_msg_size=0) as ws:
        await ws.send_json(SESSION_UPDATE)
        await _until(ws, "session.updated", told)
        while not stop.is_set() and not told.is_set():
            await ws.send_json({"type": "input_audio_buffer.append", "audio": SECOND_OF_AUDIO})
            await ws.send_json({"type": "input_audio_buffer.commit"})
            await _until(ws, TURN_COMPLETED, told)
            tally.ok += 1
    if told.is_set():
        raise SessionEnded("server_restarting", reconnect=True)


async def _until(ws: aiohttp.ClientWebSocketResponse, wanted: str, told: asyncio.Event) -> None:
    """Read events until one of type ``wanted``; note a drain's ``server_restarting``."""
    async with asyncio.timeout(TURN_TIMEOUT_S):
        while True:
            message = await ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                if told.is_set() and ws.close_code == CLOSE_RESTARTING:
                    raise SessionEnded("closed 1012 after server_restarting", reconnect=True)
                raise SessionEnded(f"closed {ws.close_code} ({message.type.name})")
            event = orjson.loads(message.data)
            kind = event.get("type", "")
            if kind == wanted:
                return
            if kind == "error":
                code = event["error"].get("code")
                if code != "server_restarting":
                    raise SessionEnded(f"error event {code}")
                told.set()
            elif kind.endswith(".failed"):
                raise SessionEnded(kind)


Request = Callable[[aiohttp.ClientSession, str, str, Tally], Awaitable[None]]


@dataclass(frozen=True)
class Kind:
    """One kind of client in the load: what it sends, and how many send it at once."""

    label: str
    clients: int
    request: Request | None  # None: realtime sessions


KINDS = {
    "small": Kind("small uploads, 10-50 KB", 4, small_upload),
    "paced": Kind("1 MiB uploads over ~1 s", 2, paced_upload),
    "big": Kind("100 MiB uploads, generated", 1, big_upload),
    "sse": Kind("SSE streams, 1.6 s", 2, sse_stream),
    "realtime": Kind("realtime (ok = turns)", 1, None),
}


async def http_client(
    kind: str, number: int, url: str, phase: str, stop: asyncio.Event, tally: Tally
) -> None:
    """Requests of ``kind`` one after another until ``stop``, each with its own id."""
    request = KINDS[kind].request
    assert request is not None
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        sent = 0
        while not stop.is_set():
            sent += 1
            request_id = f"{phase}-{kind}-{number}-{sent}"
            try:
                await request(session, url, request_id, tally)
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.fail(request_id, described(exc))
                await asyncio.sleep(0.05)  # no tight loop while nginx is unreachable


@asynccontextmanager
async def load(url: str, phase: str) -> AsyncIterator[dict[str, Tally]]:
    """Every kind of client sending through ``url`` until the block ends; then each
    finishes what it is in and the tallies are complete."""
    stop = asyncio.Event()
    tallies = {kind: Tally() for kind in KINDS}
    tasks = [
        asyncio.create_task(
            realtime_client(url, phase, stop, tallies[kind])
            if spec.request is None
            else http_client(kind, number, url, phase, stop, tallies[kind])
        )
        for kind, spec in KINDS.items()
        for number in range(1, spec.clients + 1)
    ]
    try:
        yield tallies
    finally:
        stop.set()
        # The longest a client takes to finish: a 100 MiB upload, or a realtime turn.
        _, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                raise result  # a bug of this script's, not something a client saw


# --- the phases ------------------------------------------------------------------------------


def print_tallies(title: str, tallies: dict[str, Tally]) -> None:
    """What the clients saw, a row per kind."""
    print(f"\n{title}\n")
    print("| clients | ok | failed | truncated | sha mismatch | reconnects | why |")
    print("|---|---|---|---|---|---|---|")
    for kind, tally in tallies.items():
        spec = KINDS[kind]
        why = ", ".join(f"{n}x {w}" for w, n in (tally.failures + tally.truncated).most_common())
        print(
            f"| {spec.clients} x {spec.label} | {tally.ok} | {sum(tally.failures.values())} | "
            f"{sum(tally.truncated.values())} | {tally.mismatched} | {tally.reconnects} | "
            f"{why or '-'} |"
        )


async def steady(url: str, seconds: float) -> dict[str, Tally]:
    """Phase 1: load, and nothing else."""
    async with load(url, "steady") as tallies:
        await asyncio.sleep(seconds)
    print_tallies(f"phase 1: steady load, {seconds:g} s", tallies)
    return tallies


#: Load before the first signal, and after each replica is back (longer than
#: nginx's fail_timeout, so it is sending to the new one again).
RAMP_S = 2.0
PAUSE_S = 3.0


async def rolling_restart(url: str, replicas: list[Replica]) -> dict[str, Tally]:
    """Phase 2: each replica in turn drained by SIGTERM and started again, under load."""
    print("\nphase 2: rolling restart under load\n")
    async with load(url, "rolling") as tallies:
        await asyncio.sleep(RAMP_S)
        for replica in replicas:
            print(f"replica {replica.number}: SIGTERM with {await replica.busy()}")
            seconds, code = await replica.terminate()
            print(f"replica {replica.number}: exited {seconds:.2f} s after SIGTERM (code {code})")
            started = time.monotonic()
            await replica.start()
            print(f"replica {replica.number}: ready {time.monotonic() - started:.2f} s after start")
            await asyncio.sleep(PAUSE_S)
    print_tallies("phase 2: what the clients saw", tallies)
    return tallies


async def upstream_records(upstream_port: int, prefix: str) -> list[Record]:
    """What the upstream recorded for request ids starting with ``prefix``."""
    url = f"http://127.0.0.1:{upstream_port}/stats"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params={"prefix": prefix}) as response,
    ):
        return [
            (str(i), int(replica), bool(complete)) for i, replica, complete in await response.json()
        ]


def nginx_saw(access_log: Path, replicas: list[Replica]) -> dict[str, str]:
    """What nginx's access log says of each request id: its status, and the replicas it
    was sent to (more than one when nginx passed it on) with their statuses."""
    numbers = {f"127.0.0.1:{replica.port}": replica.number for replica in replicas}
    seen = {}
    for line in access_log.read_text().splitlines():
        request_id, status, addresses, statuses, _ = line.split("|")
        sent_to = ", ".join(
            f"replica {numbers.get(address.strip(), address.strip())}"
            for address in re.split(r"[,:] ", addresses)
        )
        seen[request_id] = f"{status} (sent to {sent_to}, which answered {statuses})"
    return seen


async def sigkill(url: str, replicas: list[Replica]) -> tuple[dict[str, Tally], Replica]:
    """Phase 3: the busiest replica SIGKILLed mid-load and started again; which it was."""
    async with load(url, "sigkill") as tallies:
        await asyncio.sleep(RAMP_S + 1)
        # The busiest, so the kill cuts as much as it can.
        serving = await asyncio.gather(*(replica.busy() for replica in replicas))
        busy = dict(zip(replicas, serving, strict=True))
        victim = max(replicas, key=lambda r: busy[r].requests + busy[r].sessions)
        await victim.kill()
        print(f"\nphase 3: replica {victim.number} SIGKILLed with {busy[victim]}")
        await asyncio.sleep(2)
        await victim.start()
        await asyncio.sleep(PAUSE_S)
    print_tallies(f"phase 3: replica {victim.number} SIGKILLed, what the clients saw", tallies)
    return tallies, victim


async def attribute(
    tallies: dict[str, Tally],
    victim: Replica,
    replicas: list[Replica],
    upstream_port: int,
    access_log: Path,
) -> None:
    """Phase 3's failures by the replica the upstream saw each request come from; those
    that never reached the upstream with what nginx's log says of them."""
    reached: dict[str, set[int]] = {}
    for request_id, replica, _ in await upstream_records(upstream_port, "sigkill-"):
        # A realtime turn's upstream request id is the session's id, dot, the item.
        for key in {request_id, request_id.partition(".")[0]}:
            reached.setdefault(key, set()).add(replica)
    bad = [request_id for tally in tallies.values() for request_id in tally.bad_ids]
    on_victim = [r for r in bad if victim.number in reached.get(r, ())]
    on_others = [r for r in bad if r in reached and victim.number not in reached[r]]
    unattributed = [r for r in bad if r not in reached]
    print(
        f"\n{len(bad)} failed or truncated: {len(on_victim)} reached the upstream from the "
        f"killed replica {victim.number}, {len(on_others)} from others only (target 0), "
        f"{len(unattributed)} never reached the upstream (unattributed)"
    )
    logged = await asyncio.to_thread(nginx_saw, access_log, replicas)
    for request_id in on_others:
        print(f"  on others: {request_id} reached it from replicas {sorted(reached[request_id])}")
    for request_id in unattributed:
        seen = logged.get(request_id, "no line: nginx never had this request")
        print(f"  unattributed: {request_id}; nginx: {seen}")


async def limits(url: str, limit: int, concurrency: int = 8) -> bool:
    """Phase 4: ``limit`` + 40 requests on one virtual key across the replicas: exactly
    ``limit`` are served. Whether the counts were exact."""
    total = limit + 40
    statuses: Counter[int | str] = Counter()
    left = iter(range(total))
    headers = {**HEADERS, "x-bf-vk": VIRTUAL_KEY}

    async def client(session: aiohttp.ClientSession) -> None:
        for number in left:
            body, _ = small_form(10_000)
            sent = {**headers, "x-request-id": f"limits-{number}"}
            try:
                async with session.post(url + PATH, data=body, headers=sent) as response:
                    await response.read()
                    statuses[response.status] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[described(exc)] += 1

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    expected: Counter[int | str] = Counter({200: limit, 429: total - limit})
    exact = statuses == expected
    print(f"\nphase 4: {total} requests on a virtual key limited to {limit} an hour\n")
    print("| status | expected | got |\n|---|---|---|")
    for status in sorted(expected | statuses, key=str):
        print(f"| {status} | {expected[status]} | {statuses[status]} |")
    print("exact" if exact else "NOT EXACT")
    return exact


async def rate(url: str, seconds: float, concurrency: int = 32) -> tuple[float, int]:
    """10 KB requests, ``concurrency`` at a time for ``seconds``: served per second, and
    how many were not served."""
    body, sha = small_form(10_000)
    served = failed = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal served, failed
        while time.monotonic() < deadline:
            try:
                async with session.post(url + PATH, data=body, headers=HEADERS) as response:
                    answer = await response.read()
                ok = response.status == 200 and _text_of(answer) == sha
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            served += ok
            failed += not ok

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return served / (time.monotonic() - started), failed


@dataclass(frozen=True)
class Measured:
    """Phase 5's measurement through one nginx."""

    per_second: float
    failed: int
    cores: dict[str, float]  # CPU seconds a second, by process group


async def measured(url: str, seconds: float, pids: dict[str, list[int]]) -> Measured:
    """:func:`rate` through ``url``, and the CPU each group of ``pids`` used meanwhile."""
    before = {name: sum(map(cpu_seconds, group)) for name, group in pids.items()}
    started = time.monotonic()
    per_second, failed = await rate(url, seconds)
    wall = time.monotonic() - started
    cores = {
        name: (sum(map(cpu_seconds, group)) - before[name]) / wall for name, group in pids.items()
    }
    return Measured(per_second, failed, cores)


async def throughput(
    nginx: tuple[int, list[int]],
    replicas: list[Replica],
    upstream_pid: int,
    directory: Path,
    seconds: float,
) -> None:
    """Phase 5: small requests through nginx over three replicas, then through a second
    nginx over one of them; with the CPU each process used, since the cores bound it."""
    results = {}
    async with nginx_in_front([replicas[0].port], directory / "nginx-one") as single:
        for name, (port, nginx_pids) in (("3 replicas", nginx), ("1 replica", single)):
            url = f"http://127.0.0.1:{port}"
            pids = {
                "client": [os.getpid()],
                "nginx": nginx_pids,
                "replicas": [replica.process.pid for replica in replicas if replica.process],
                "upstream": [upstream_pid],
            }
            await rate(url, 1.0)  # warm up: connections open, code paths hot
            results[name] = await measured(url, seconds, pids)
    print(f"\nphase 5: 10 KB requests through nginx, 32 at once, {seconds:g} s each\n")
    groups = ", ".join(results["1 replica"].cores)
    print(f"| upstream | requests/s | not served | CPU in cores: {groups} |")
    print("|---|---|---|---|")
    for name, result in results.items():
        cpu = ", ".join(f"{used:.2f}" for used in result.cores.values())
        print(f"| {name} | {result.per_second:.0f} | {result.failed} | {cpu} |")
    ratio = results["3 replicas"].per_second / results["1 replica"].per_second
    print(
        f"\n3 replicas / 1: {ratio:.2f}x. Bounded by the machine's {os.cpu_count()} cores, "
        "which the client, nginx, the upstream and the replicas share: replicas past the "
        "cores add no CPU, only room to restart one while the others serve."
    )


def log_files(directory: Path) -> list[str]:
    """The replicas' and nginx's logs under ``directory``."""
    return sorted(str(path) for path in directory.glob("**/*.log"))


async def bench(args: argparse.Namespace) -> None:
    """Start everything, run the five phases, stop everything; exit 1 if a target was missed."""
    directory = Path(tempfile.mkdtemp(prefix="scale-out-"))
    passed = False
    try:
        passed = await run_phases(args, directory)
    finally:
        if passed and not args.keep_logs:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print("\nlogs kept:\n  " + "\n  ".join(log_files(directory)), file=sys.stderr)
    if not passed:
        sys.exit(1)


async def run_phases(args: argparse.Namespace, directory: Path) -> bool:
    """The five phases against one set of processes: whether phases 2 and 4 met their
    targets."""
    upstream_port = free_port()
    upstream = (sys.executable, __file__, "upstream", "--port", str(upstream_port))
    async with contextlib.AsyncExitStack() as stack:
        redis_url = await stack.enter_async_context(redis_server(directory))
        upstream_pid = await stack.enter_async_context(
            child(*upstream, up=f"http://127.0.0.1:{upstream_port}/stats")
        )
        replicas = await stack.enter_async_context(
            replicas_running(directory, upstream_port, redis_url, args.limit)
        )
        nginx_dir = directory / "nginx"
        nginx = await stack.enter_async_context(
            nginx_in_front((replica.port for replica in replicas), nginx_dir)
        )
        port = nginx[0]
        url = f"http://127.0.0.1:{port}"
        ports = ", ".join(str(replica.port) for replica in replicas)
        print(f"nginx on {port}, replicas on {ports}, upstream on {upstream_port}, {redis_url}")
        await steady(url, args.seconds)
        rolled = await rolling_restart(url, replicas)
        killed, victim = await sigkill(url, replicas)
        await attribute(killed, victim, replicas, upstream_port, nginx_dir / "access.log")
        exact = await limits(url, args.limit)
        await throughput(nginx, replicas, upstream_pid, directory, args.throughput_seconds)
    problems = sum(tally.bad for tally in rolled.values())
    print(
        f"\nrolling restart: {problems} failed, truncated or mismatched (target 0); "
        f"limits {'exact' if exact else 'NOT exact'}"
    )
    return problems == 0 and exact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10, help="steady load, phase 1 (10)")
    parser.add_argument(
        "--limit", type=int, default=60, help="the virtual key's requests an hour, phase 4 (60)"
    )
    parser.add_argument(
        "--throughput-seconds", type=float, default=5, help="each rate measured, phase 5 (5)"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the logs' directory even when all passed"
    )


if __name__ == "__main__":
    main(__doc__, add_arguments, run_upstream, bench)
