"""Embedded model benchmark: memory, time to the first caption, word error rate, speed.

The proxy runs as its own process with only the ``local`` provider; this
process uploads espeak-ng speech of known text (scripts/speech.py: 16 kHz
WAV, sentences with pauses, made once under --cache) over HTTP on 127.0.0.1,
model field first so the upload streams:

- a 5-minute recording at full speed: real-time factor (the median of
  ``--rounds``, every proxy up at once and sent it in turn) and word error rate;
- the same at 200 KB/s with stream=true: the first delta against the end
  of the upload;
- a 20-minute and a 2-hour recording at full speed: the proxy's peak RSS
  over its idle RSS with the model loaded, and its RSS 10 s after.

With ``--baseline CHECKOUT`` an earlier revision's proxy (``git worktree
add /tmp/before REV``) is measured in the same run, one proxy at a time;
``--batch N`` adds this revision with ``proxy.local.batch_size`` N.

    .venv/bin/python scripts/bench_local.py --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from benchlib import ROOT, PeakRss, proxy_with, rss_kib
from speech import recording, word_error_rate

SAMPLE = ROOT / "tests" / "data" / "sample.wav"
PATH = "/v1/audio/transcriptions"
BOUNDARY = "bench-local-boundary"
PIECE = 64 * 1024


@dataclass
class Upload:
    """What one request saw."""

    seconds: float = 0.0
    first_delta: float | None = None
    upload_end: float = 0.0
    text: str = ""
    status: int = 0


@dataclass
class Row:
    """One proxy's figures."""

    name: str
    idle_mib: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


async def _body(
    path: Path, fields: dict[str, str], rate: float | None, done: Upload
) -> AsyncIterator[bytes]:
    head = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    head += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    )
    yield head.encode()
    started = time.perf_counter()
    sent = 0
    with path.open("rb") as audio:
        while piece := audio.read(PIECE):
            sent += len(piece)
            yield piece
            if rate is not None:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    done.upload_end = time.perf_counter()
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


async def upload(
    port: int, path: Path, *, stream: bool = False, rate: float | None = None
) -> Upload:
    """Send ``path`` (at ``rate`` bytes/s when given); what came back, timed from the start."""
    result = Upload()
    fields = {"model": "whisper-1", "stream": "true" if stream else "false"}
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            f"http://127.0.0.1:{port}{PATH}",
            data=_body(path, fields, rate, result),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        ) as response,
    ):
        result.status = response.status
        if stream:
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                event = orjson.loads(line[6:])
                if event.get("type") == "transcript.text.delta" and result.first_delta is None:
                    result.first_delta = time.perf_counter() - started
                elif event.get("type") == "transcript.text.done":
                    result.text = event["text"]
        else:
            body = await response.read()
            result.text = orjson.loads(body).get("text", "") if response.status == 200 else ""
            if response.status != 200:
                raise RuntimeError(f"status {response.status}: {body[:300]!r}")
    result.seconds = time.perf_counter() - started
    result.upload_end -= started
    return result


@asynccontextmanager
async def warm_proxy(cwd: Path, local: dict[str, Any]) -> AsyncIterator[tuple[int, int, float]]:
    """A proxy with only the embedded model, loaded: its port, pid and idle RSS in MiB."""
    config = {"providers": {"local": {}}, "proxy": {"local": local, "web_ui": False}}
    async with proxy_with(config, cwd=cwd) as (port, proxy):
        await upload(port, SAMPLE)  # loads the model
        await asyncio.sleep(2)
        yield port, proxy.pid, rss_kib(proxy.pid) / 1024


async def measure_short(
    runs: list[tuple[str, Path, dict[str, Any]]],
    recording_: tuple[Path, str, float],
    rate: float,
    rounds: int,
) -> list[Row]:
    """Every proxy up at once, warm, sent the 5-minute recording in turn, round after
    round (so the machine's drift falls on all alike); then each paced, streamed."""
    path, text, length = recording_
    rows = [Row(name) for name, _, _ in runs]
    async with AsyncExitStack() as stack:
        proxies = [
            await stack.enter_async_context(warm_proxy(cwd, local)) for _, cwd, local in runs
        ]
        for row, (_, _, idle) in zip(rows, proxies, strict=True):
            row.idle_mib = idle
        times: list[list[float]] = [[] for _ in runs]
        for _ in range(rounds):
            for n, (port, _, _) in enumerate(proxies):
                result = await upload(port, path)
                times[n].append(result.seconds / length)
                rows[n].figures["wer"] = word_error_rate(text, result.text)
        for row, (port, _, _), spent in zip(rows, proxies, times, strict=True):
            row.figures["rtf"] = statistics.median(spent)
            paced = await upload(port, path, stream=True, rate=rate)
            row.figures["first_delta"] = paced.first_delta
            row.figures["upload_end"] = paced.upload_end
            row.figures["paced_done"] = paced.seconds
    return rows


async def measure_long(
    row: Row,
    cwd: Path,
    recordings: dict[str, tuple[Path, str, float]],
    local: dict[str, Any],
) -> None:
    """Each long recording on a proxy of its own, fresh: its peak RSS over idle."""
    for size in ("medium", "long"):
        if size not in recordings or (size == "long" and row.name == "before"):
            continue  # the whole-file decode of 2 hours would take several GiB
        path, _, length = recordings[size]
        async with warm_proxy(cwd, local) as (port, pid, idle):
            async with PeakRss(pid, interval=0.02) as peak:
                result = await upload(port, path)
            await asyncio.sleep(10)
            row.figures[f"{size}_idle"] = idle
            row.figures[f"{size}_growth"] = peak.peak_kib / 1024 - idle
            row.figures[f"{size}_rtf"] = result.seconds / length
            row.figures[f"{size}_after"] = rss_kib(pid) / 1024 - idle


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


async def bench(args: argparse.Namespace) -> None:
    cache = Path(args.cache)
    recordings: dict[str, tuple[Path, str, float]] = {}
    for size, seconds in (("short", 300.0), ("medium", args.medium_s), ("long", args.long_s)):
        if seconds:
            path, text = recording(cache, seconds)
            recordings[size] = (path, text, (path.stat().st_size - 44) / 32_000)
    runs: list[tuple[str, Path, dict[str, Any]]] = []
    if args.baseline:
        runs.append(("before", Path(args.baseline), {}))
    runs.append(("now", ROOT, {}))
    if args.batch > 1:
        runs.append((f"now, batch_size {args.batch}", ROOT, {"batch_size": args.batch}))
    rows = await measure_short(runs, recordings["short"], args.rate_kb * 1000, args.rounds)
    for row, (_, cwd, local) in zip(rows, runs, strict=True):
        await measure_long(row, cwd, recordings, local)

    path, _, short = recordings["short"]
    print(f"\n5-minute recording ({short:.0f} s, {path.stat().st_size / 1e6:.1f} MB)")
    print(
        "| proxy | idle RSS, model loaded | real-time factor | WER "
        f"| first delta at {args.rate_kb:g} KB/s | upload ends | done |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        f = row.figures
        print(
            f"| {row.name} | {row.idle_mib:.0f} MiB | {f['rtf']:.3f} | {100 * f['wer']:.1f} % "
            f"| {_fmt(f['first_delta'], '.1f')} s | {f['upload_end']:.1f} s "
            f"| {f['paced_done']:.1f} s |"
        )
    base = rows[0].figures
    for row in rows[1:]:
        f = row.figures
        print(
            f"{row.name} / {rows[0].name}: real-time factor {f['rtf'] / base['rtf']:.2f}x, "
            f"WER {100 * (f['wer'] - base['wer']):+.1f} points"
        )
    print("\nlong recordings at full speed (growth: peak RSS over RSS before the request)")
    print(
        "| proxy | recording | peak RSS growth | RSS 10 s after, over before | real-time factor |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        for size in ("medium", "long"):
            if f"{size}_growth" not in row.figures:
                continue
            f = row.figures
            minutes = recordings[size][2] / 60
            print(
                f"| {row.name} | {minutes:.0f} min | {f[f'{size}_idle']:.0f} MiB "
                f"| {f[f'{size}_growth']:+.0f} MiB "
                f"| {f[f'{size}_after']:+.0f} MiB | {f[f'{size}_rtf']:.3f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--baseline", help="an earlier revision's checkout, measured in the same run"
    )
    parser.add_argument(
        "--batch", type=int, default=4, help="also measure batch_size N (4; 1: not)"
    )
    parser.add_argument(
        "--medium-s", type=float, default=1200.0, help="the medium recording (20 min)"
    )
    parser.add_argument(
        "--long-s", type=float, default=7200.0, help="the long recording (2 h; 0: none)"
    )
    parser.add_argument(
        "--rate-kb", type=float, default=200.0, help="the paced upload's KB/s (200)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="5-minute uploads per proxy, interleaved (3)"
    )
    parser.add_argument(
        "--cache", default="/tmp/transcription-proxy-speech", help="where recordings are made"
    )
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
