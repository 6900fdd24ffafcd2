"""One transcription's walk through the proxy: the modules it passes through, in order.

The proxy runs in this process (``proxy.app.create_app(parse_config(...))`` on
aiohttp's test server) in front of a fake OpenAI upstream of its own, and is
sent a 10 KB multipart form, ``model`` before ``file``. One request is traced
with :func:`sys.setprofile`, from the moment it enters the app's middleware (a
middleware of this script's, put in front of the proxy's own) until the
middleware chain returns its response; then the walk is reported.

Definitions
-----------

proxy frame
    A Python frame whose code lies in the checkout's ``proxy`` package. Its
    *module* is the file's dotted name: ``proxy/form/reader.py`` is
    ``proxy.form.reader``, ``proxy/cache/__init__.py`` is ``proxy.cache``.

events
    The profiler's ``call`` and ``return`` events of proxy frames, from every
    task on the event loop's thread (the upstream body's writer task too; the
    fake upstream and the client are not proxy code; worker threads are not
    traced). A ``call`` is a *call* when a function starts and a *resume* when
    a suspended coroutine or generator carries on (its instruction is a
    ``RESUME`` after a yield or an await, or its ``YIELD_VALUE``); a
    ``return`` is a *yield* when the frame suspends (at ``YIELD_VALUE``: an
    await that gives way, a generator's yield) and a *return* otherwise (it
    finished, by returning or by an exception). Calls and resumes push the
    frame on the *proxy stack* (the proxy frames on the thread's stack,
    innermost last), returns and yields pop it.

where control is
    The module of the innermost frame on the proxy stack, read after each
    call and each return, and after each *run* of consecutive resumes or of
    consecutive yields: an await chain that winds back in, or unwinds to the
    event loop, passes through each of its frames without running any of
    them, so only where it lands is read. While the proxy stack is empty (the
    event loop, aiohttp or the fake upstream running), control is in no
    module, and that neither ends nor begins a stay.

stay
    A maximal run of readings in one module: each change of module (each
    entry into a module) begins one. A stay is named by what began it: a
    *call* (a function of the module was called), a *return* (a callee
    returned, or a generator yielded a value, back to a frame of the module
    already on the stack), or a *resume* (a suspended frame of the module
    carried on: what it awaited was done, or the loop turned to its task).

rooms
    The distinct modules of the stays.

climbs back
    The stays begun by a return: control climbing back up into a caller's
    module (one visited already, since its frame is on the stack) rather than
    moving on.

most visited
    The modules with the most stays, top 5.

calls
    The proxy functions called (calls only, not resumes) during the trace.

The request
-----------

``POST /v1/audio/transcriptions``, a 10 KB form: ``model`` (``whisper-1``;
``gpt-4o-transcribe`` with ``--stream``), ``stream=true`` with ``--stream``,
then ``file`` (a 16 kHz WAV). It is written in one piece on a fresh
connection, so its body has arrived whole when the handler starts, as a small
upload's usually has. ``--cache`` adds ``x-bf-cache-key`` (the cache enabled);
every request's audio differs, so each traced one is a miss: looked up, sent
upstream, stored. ``--governed`` adds ``x-bf-vk``, a virtual key with a budget
of audio seconds. ``--warmup`` requests (2) go first, untraced (lazy imports,
first use of everything); then ``--runs`` requests (5) are traced one by one.
The table is the walk most of them took, and says how many took it.

``--checkout PATH`` runs that checkout's ``proxy`` package (first on
``sys.path``), to compare a revision with another::

    git worktree add /tmp/walk-before 4bf0837
    .venv/bin/python scripts/request_walk.py --checkout /tmp/walk-before
    .venv/bin/python scripts/request_walk.py
    git worktree remove /tmp/walk-before
"""

from __future__ import annotations

import argparse
import asyncio
import dis
import importlib
import inspect
import io
import json
import logging
import random
import sys
import tempfile
import wave
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.test_utils import TestServer

ROOT = Path(__file__).resolve().parents[1]
PATH = "/v1/audio/transcriptions"
BOUNDARY = "walk-boundary"
FORM_BYTES = 10_000
UPSTREAM_KEY = "sk-walk-upstream-0123456789"
VIRTUAL_KEY = "sk-bf-walk-team-0123456789"

_RESUME = dis.opmap["RESUME"]
_YIELD_VALUE = dis.opmap["YIELD_VALUE"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Stay:
    """A run of control in one module, and what began it: call, return or resume."""

    module: str
    began_by: str


@dataclass
class Walk:
    """One traced request: its stays, and the proxy functions it called."""

    stays: tuple[Stay, ...]
    calls: int

    @property
    def rooms(self) -> list[str]:
        return sorted({stay.module for stay in self.stays})

    @property
    def climbs_back(self) -> int:
        return sum(stay.began_by == "return" for stay in self.stays)

    @property
    def resumes(self) -> int:
        return sum(stay.began_by == "resume" for stay in self.stays)

    def most_visited(self, count: int = 5) -> list[tuple[str, int]]:
        return Counter(stay.module for stay in self.stays).most_common(count)


def _kind(frame: FrameType, event: str) -> str:
    """A profiler event as a call, resume, return or yield (see the module's docstring)."""
    code, at = frame.f_code.co_code, frame.f_lasti
    op = code[at] if 0 <= at < len(code) else -1
    if event == "call":
        # RESUME's argument: 0 at a function's start, else where it resumes (yield, await).
        resumed = op == _YIELD_VALUE or (op == _RESUME and code[at + 1] & 3 != 0)
        return "resume" if resumed else "call"
    return "yield" if op == _YIELD_VALUE else "return"


@dataclass
class Tracer:
    """The profile function for one request: where control is, as stays."""

    package: Path
    stays: list[Stay] = field(default_factory=list)
    calls: int = 0
    _stack: list[tuple[int, str]] = field(default_factory=list)  # (frame id, module)
    _modules: dict[str, str | None] = field(default_factory=dict)  # by code file
    _pending: str | None = None  # a run of resumes or of yields, not yet read
    _current: str | None = None

    def _module(self, filename: str) -> str | None:
        try:
            return self._modules[filename]
        except KeyError:
            pass
        module: str | None = None
        path = Path(filename)
        if path.suffix == ".py" and path.is_relative_to(self.package):
            parts = path.relative_to(self.package.parent).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        self._modules[filename] = module
        return module

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" and event != "return":
            return  # c_call, c_return, c_exception: C functions are no module's
        module = self._module(frame.f_code.co_filename)
        if module is None:
            return
        kind = _kind(frame, event)
        if self._pending is not None and kind != self._pending:
            self._read("resume" if self._pending == "resume" else "return")
            self._pending = None
        if kind == "call":
            self.calls += 1
            self._stack.append((id(frame), module))
            self._read("call")
        elif kind == "resume":
            self._stack.append((id(frame), module))
            self._pending = "resume"
        else:
            self._pop(id(frame))
            if kind == "return":
                self._read("return")
            else:
                self._pending = "yield"

    def finish(self) -> Walk:
        if self._pending is not None:
            self._read("resume" if self._pending == "resume" else "return")
            self._pending = None
        return Walk(tuple(self.stays), self.calls)

    def _pop(self, frame_id: int) -> None:
        for depth in range(len(self._stack) - 1, -1, -1):
            if self._stack[depth][0] == frame_id:
                del self._stack[depth:]
                return
        # A frame pushed before the trace began: none is a proxy frame, but be safe.

    def _read(self, began_by: str) -> None:
        """Where control is now: a stay begins if that is another module."""
        if not self._stack:
            return
        module = self._stack[-1][1]
        if module != self._current:
            self.stays.append(Stay(module, began_by))
            self._current = module


# --- the fake upstream -----------------------------------------------------------------------


async def _upstream(request: web.Request) -> web.StreamResponse:
    """OpenAI's transcription endpoint: the form read whole, a transcript (or events) back."""
    fields: dict[str, str] = {}
    size = 0
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        if part.filename is None:
            fields[part.name or ""] = (await part.read()).decode()
            continue
        while chunk := await part.read_chunk():
            size += len(chunk)
    text = f"heard {size} bytes"
    if fields.get("stream") != "true":
        return web.json_response({"text": text, "usage": {"type": "duration", "seconds": 2}})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    events: list[dict[str, Any]] = [
        {"type": "transcript.text.delta", "delta": "heard "},
        {"type": "transcript.text.delta", "delta": f"{size} bytes"},
        {
            "type": "transcript.text.done",
            "text": text,
            "usage": {"type": "tokens", "input_tokens": 7, "output_tokens": 3},
        },
    ]
    for event in events:
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    await response.write_eof()
    return response


def _upstream_app() -> web.Application:
    app = web.Application()
    app.router.add_post(PATH, _upstream)
    return app


# --- the request -----------------------------------------------------------------------------


def _wav(size: int, seed: int) -> bytes:
    """A 16 kHz mono WAV of ``size`` bytes, its samples different for each ``seed``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16_000)
        writer.writeframes(random.Random(seed).randbytes((size - 44) // 2 * 2))
    return out.getvalue()


def _form(args: argparse.Namespace, seed: int) -> bytes:
    """The 10 KB form: model, stream (with --stream), then the file."""
    fields = [("model", "gpt-4o-transcribe" if args.stream else "whisper-1")]
    if args.stream:
        fields.append(("stream", "true"))
    head = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    )
    head += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head + _wav(FORM_BYTES - len(head) - len(tail), seed) + tail


async def _send(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST ``body`` in one write on a fresh connection; the status and all that came back."""
    lines = [
        f"POST {PATH} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer


def _config(upstream_url: str, args: argparse.Namespace, spool: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "providers": {
            "openai": {
                "keys": [{"name": "main", "value": UPSTREAM_KEY, "models": ["*"]}],
                "network_config": {"base_url": upstream_url},
            }
        },
        "proxy": {"spool_dir": spool},
    }
    if args.cache:
        config["proxy"]["cache"] = {}
    if args.governed:
        config["governance"] = {
            "virtual_keys": [
                {
                    "id": "walk-team",
                    "value": VIRTUAL_KEY,
                    "provider_configs": [{"provider": "openai", "allowed_models": ["*"]}],
                    "budget_id": "walk-budget",
                }
            ],
            "budgets": [
                {
                    "id": "walk-budget",
                    "max_limit": 1_000_000,
                    "reset_duration": "1d",
                    "unit": "audio_seconds",
                }
            ],
        }
    return config


def _headers(args: argparse.Namespace) -> dict[str, str]:
    headers = {}
    if args.cache:
        headers["x-bf-cache-key"] = "walk"
    if args.governed:
        headers["x-bf-vk"] = VIRTUAL_KEY
    return headers


# --- the run ---------------------------------------------------------------------------------


def _import_proxy(checkout: Path) -> tuple[ModuleType, ModuleType, Path]:
    """The checkout's ``proxy.app`` and ``proxy.config``, and its package directory."""
    if "proxy" in sys.modules:
        raise SystemExit("the proxy package was imported before the checkout was chosen")
    sys.path.insert(0, str(checkout))
    app_module = importlib.import_module("proxy.app")
    config_module = importlib.import_module("proxy.config")
    package = Path(importlib.import_module("proxy").__file__ or "").resolve().parent
    if package != (checkout / "proxy").resolve():
        raise SystemExit(f"proxy was imported from {package}, not from {checkout}")
    return app_module, config_module, package


def _parse_config(config_module: ModuleType, raw: dict[str, Any]) -> Any:
    parse = config_module.parse_config
    if len(inspect.signature(parse).parameters) > 1:
        return parse(raw, {})  # no environment: nothing of this shell's leaks in
    return parse(raw)


async def walk(args: argparse.Namespace) -> tuple[list[Walk], Path]:
    app_module, config_module, package = _import_proxy(args.checkout.resolve())
    armed: list[Tracer] = []  # the tracer for the next request, when it is to be traced
    walks: list[Walk] = []

    @web.middleware
    async def tracing(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not armed:
            return await handler(request)
        tracer = armed.pop()
        previous = sys.getprofile()
        sys.setprofile(tracer.profile)
        try:
            return await handler(request)
        finally:
            sys.setprofile(previous)
            walks.append(tracer.finish())

    upstream = TestServer(_upstream_app())
    await upstream.start_server()
    try:
        with tempfile.TemporaryDirectory(prefix="request-walk-") as spool:
            raw = _config(str(upstream.make_url("")).rstrip("/"), args, spool)
            app = app_module.create_app(_parse_config(config_module, raw))
            app.middlewares.insert(0, tracing)
            proxy = TestServer(app)
            await proxy.start_server()
            try:
                assert proxy.port is not None
                for seed in range(args.warmup + args.runs):
                    if seed >= args.warmup:
                        armed.append(Tracer(package))
                    status, answer = await _send(proxy.port, _form(args, seed), _headers(args))
                    if status != 200:
                        raise SystemExit(f"the proxy answered {status}:\n{answer.decode()[:2000]}")
            finally:
                await proxy.close()
    finally:
        await upstream.close()
    return walks, package


def report(walks: list[Walk], package: Path, args: argparse.Namespace) -> str:
    taken = Counter(walk.stays for walk in walks)
    stays, alike = taken.most_common(1)[0]
    chosen = next(walk for walk in walks if walk.stays == stays)
    options = [name for name in ("stream", "cache", "governed") if getattr(args, name)]
    lines = [
        f"checkout: {package.parent}",
        f"request: POST {PATH}, a {FORM_BYTES // 1000} KB form (model, then file)"
        + (f"; {', '.join('--' + name for name in options)}" if options else ""),
        f"traced: {len(walks)} requests after {args.warmup} untraced; "
        f"{alike} of {len(walks)} took this walk"
        + (
            ""
            if alike == len(walks)
            else f" (stays in each: {', '.join(str(len(w.stays)) for w in walks)})"
        ),
        "",
        "| walk | |",
        "|---|---:|",
        f"| stays | {len(chosen.stays)} |",
        f"| rooms | {len(chosen.rooms)} |",
        f"| climbs back | {chosen.climbs_back} |",
        f"| resumes | {chosen.resumes} |",
        f"| calls | {chosen.calls} |",
        "",
        "| most visited | stays |",
        "|---|---:|",
        *(f"| {module} | {count} |" for module, count in chosen.most_visited()),
    ]
    if args.sequence:
        lines += ["", "| # | began by | module |", "|---:|---|---|"]
        lines += [
            f"| {number} | {stay.began_by} | {stay.module} |"
            for number, stay in enumerate(chosen.stays, 1)
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stream", action="store_true", help="stream=true (gpt-4o-transcribe)")
    parser.add_argument("--cache", action="store_true", help="an x-bf-cache-key (each a miss)")
    parser.add_argument("--governed", action="store_true", help="a virtual key with a budget")
    parser.add_argument("--sequence", action="store_true", help="list the stays, in order")
    parser.add_argument(
        "--checkout", type=Path, default=ROOT, help="the checkout whose proxy runs (this one)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untraced requests first (2)")
    parser.add_argument("--runs", type=int, default=5, help="traced requests (5)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    walks, package = asyncio.run(walk(args))
    print(report(walks, package, args))


if __name__ == "__main__":
    main()
