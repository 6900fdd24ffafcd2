"""The form reader's CPU cost: a small form that arrived whole, and a large one streamed.

Each measurement runs in a process of its own over the same bodies:

- ``aiohttp``: aiohttp's own ``MultipartReader`` reading the same body, the
  reference every run has (its ratio is the one to compare across machines);
- ``proxy``: this checkout's form reader;
- ``baseline``: with ``--baseline CHECKOUT``, an earlier revision's form reader.

    .venv/bin/python scripts/bench_form.py
    git worktree add /tmp/before <commit>
    .venv/bin/python scripts/bench_form.py --baseline /tmp/before

The small form is the openai SDK's: ``model``, ``response_format``, then a
10 KB file, in one piece with the end of the body (the way a small request
reaches the handler). The large one is ``model`` then an 8 MiB file, in
aiohttp's 256 KiB pieces, read as they are there (the streaming path).
Printed: microseconds of CPU per small form, milliseconds per streamed MiB,
each as a ratio to aiohttp's own reader in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchlib import ROOT

RUNNER = r'''
import asyncio, gc, json, sys, time
from unittest import mock
sys.path.insert(0, ".")
from aiohttp import BodyPartReader, MultipartReader
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
try:
    from proxy.form import FormLimits, FormReader
except ImportError:  # revisions before the form package
    from proxy.upload import FormLimits, FormReader
from proxy.metrics import Metrics

B = "bench-boundary"
HEADERS = CIMultiDict({"Content-Type": f"multipart/form-data; boundary={B}"})

def part(name, value, filename=None):
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    kind = "Content-Type: audio/wav\r\n" if filename else ""
    return f"--{B}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + value + b"\r\n"

SMALL = part("model", b"whisper-1") + part("response_format", b"json") + part(
    "file", b"R" * 10_000, "a.wav") + f"--{B}--\r\n".encode()
LARGE_FILE = 8 * 1024 * 1024
LARGE_HEAD = part("model", b"whisper-1") + (
    f'--{B}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode())
LARGE_TAIL = f"\r\n--{B}--\r\n".encode()

class Connected(BaseProtocol):
    """A peer that is always there and never asked to pause: the body is fed by hand."""
    @property
    def connected(self): return True
    def pause_reading(self, *args, **kwargs): pass
    def resume_reading(self, *args, **kwargs): pass

def stream_of(pieces, eof_now):
    loop = asyncio.get_running_loop()
    stream = StreamReader(Connected(loop), 256 * 1024, loop=loop)
    for piece in pieces:
        stream.feed_data(piece)
    if eof_now:
        stream.feed_eof()
    else:
        loop.call_soon(stream.feed_eof)
    return stream

def request_of(stream):
    transport = mock.Mock()
    transport.is_closing.return_value = False
    return make_mocked_request("POST", "/v1/audio/transcriptions", headers=HEADERS,
                               payload=stream, transport=transport)

METRICS = Metrics()
LIMITS = FormLimits(max_body_bytes=1 << 30)

def proxy_input(pieces, eof_now):
    return request_of(stream_of(pieces, eof_now))

async def proxy_reads(request):
    reader = FormReader(request, LIMITS, metrics=METRICS)
    async with reader:
        form = await reader.read()
        audio = form.audio
        async for _ in (audio.pieces() if hasattr(audio, "pieces") else audio.chunks()):
            pass

def aiohttp_input(pieces, eof_now):
    return stream_of(pieces, eof_now)

async def aiohttp_reads(stream):
    reader = MultipartReader(HEADERS, stream)
    while (part := await reader.next()) is not None:
        while await part.read_chunk(256 * 1024):
            pass

async def cpu_per(which, pieces, eof_now, repeat):
    """CPU seconds per read; the inputs (a request, a stream) are made before the clock runs."""
    make, read = (proxy_input, proxy_reads) if which == "proxy" else (aiohttp_input, aiohttp_reads)
    for _ in range(max(1, repeat // 10)):  # warm up
        await read(make(pieces, eof_now))
    total = 0.0
    for _ in range(0, repeat, 100):
        inputs = [make(pieces, eof_now) for _ in range(min(100, repeat))]
        # The inputs (mock transports among them) are not what is measured:
        # the collector is kept from walking them again and again.
        gc.collect()
        gc.freeze()
        started = time.process_time()
        for item in inputs:
            await read(item)
        total += time.process_time() - started
        del inputs
        gc.unfreeze()
    return total / repeat

async def main(which, small_n, large_n):
    piece = 256 * 1024
    large = [LARGE_HEAD] + [b"A" * piece for _ in range(LARGE_FILE // piece)] + [LARGE_TAIL]
    small_s = await cpu_per(which, [SMALL], True, small_n)
    large_s = await cpu_per(which, large, False, large_n)
    print(json.dumps({"small_us": small_s * 1e6, "large_ms_per_mib": large_s * 1e3 / 8}))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
'''


def measure(which: str, checkout: Path, small_n: int, large_n: int) -> dict[str, float]:
    """One implementation's figures, from a process of its own in ``checkout``."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, which, str(small_n), str(large_n)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"{which} in {checkout} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier revision")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, interleaved (3)")
    parser.add_argument("--small", type=int, default=3000, help="small forms per round (3000)")
    parser.add_argument("--large", type=int, default=20, help="8 MiB forms per round (20)")
    args = parser.parse_args()
    targets: list[tuple[str, str, Path]] = [("aiohttp", "aiohttp", ROOT), ("proxy", "proxy", ROOT)]
    if args.baseline:
        targets.insert(1, ("baseline", "proxy", args.baseline.resolve()))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in targets}
    for _ in range(args.rounds):
        for name, which, checkout in targets:
            results[name].append(measure(which, checkout, args.small, args.large))

    def median(name: str, key: str) -> float:
        values = sorted(r[key] for r in results[name])
        return values[len(values) // 2]

    floor_small, floor_large = median("aiohttp", "small_us"), median("aiohttp", "large_ms_per_mib")
    print(
        f"{'reader':<10} {'small form, us CPU':>20} {'x aiohttp':>10} "
        f"{'streamed, ms CPU/MiB':>22} {'x aiohttp':>10}"
    )
    for name, _, _ in targets:
        small, large = median(name, "small_us"), median(name, "large_ms_per_mib")
        print(
            f"{name:<10} {small:>20.1f} {small / floor_small:>10.2f} "
            f"{large:>22.3f} {large / floor_large:>10.2f}"
        )


if __name__ == "__main__":
    main()
