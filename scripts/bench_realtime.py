"""Realtime sessions: time from speech end to transcript, partial captions, and load.

The proxy runs as its own process; this process is the clients (aiohttp
WebSockets) and, where one is needed, a fake OpenAI upstream on 127.0.0.1
that answers 50 ms after a turn's upload. The speech is espeak-ng's
(tests/helpers/speech.py: sentences of 3 to 6 s), 1 s of silence after
each, streamed at real time in 100 ms appends of 24 kHz PCM. The time a
sentence's last sample was sent is its speech end; its first sample's,
its speech start.

- ``embedded``: the embedded model (tiny.en), partial captions on and off:
  speech end to ``completed`` (p50, p95), speech start to the turn's first
  delta, and the word error rate of the completed transcripts.
- ``accuracy``: the embedded model on three sets of sentences no setting was
  tuned on (scripts/speech.py: other texts, voices and rates), each posted
  over HTTP (the baseline) and streamed through a session with server_vad
  and one whose client commits 0.5 s after each sentence: word error rates,
  speech end to ``completed``, first delta, client commit to ``completed``.
- ``capacity``: 1, 2, 3, 4, 6 sessions speaking at once (started 0.25 s
  apart): speech end to ``completed`` and whether each turn reads as it did
  in a session alone; the most held at p50 <= 1.0 s, p95 <= 2.0 s.
- ``synthesized``: the fake upstream: speech end to ``completed`` against
  ``silence_duration_ms`` (500).
- ``load``: N sessions at once (100) streaming to the fake upstream: the
  proxy's CPU per session-second of audio, its RSS per session, and how
  late each ``committed`` event is against the same session alone.
- ``relay``: sessions relayed to a fake Realtime API (its own process,
  answering each append with one event at once): the time an event takes
  there and back, direct against through the proxy, in the same run; then
  N sessions at once (200) appending 100 ms of audio every 100 ms: the
  proxy's CPU per session-second and RSS per session.

    .venv/bin/python scripts/bench_realtime.py [embedded accuracy capacity synthesized load relay]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from benchlib import ROOT, PeakRss, cpu_seconds, free_port, percentile, proxy_with, rss_kib, running
from speech import SPEECH_SETS, word_error_rate

sys.path.insert(0, str(ROOT))

from proxy.audio.wav_header import wav_header
from tests.helpers.realtime import silence, to_24k
from tests.helpers.speech import SENTENCES, say

PATH = "/v1/realtime?intent=transcription"
CHUNK_S = 0.1
CHUNK_BYTES = int(CHUNK_S * 24_000) * 2
PAUSE_S = 1.0
TRANSCRIPTION = "conversation.item.input_audio_transcription"


@dataclass
class Sentence:
    """One sentence of the stream: its text and where its speech lies (its loud part),
    in the stream's bytes."""

    text: str
    start: int
    end: int


@dataclass
class Run:
    """What one session saw: each turn's times, from the stream's start."""

    speech_start: list[float] = field(default_factory=list)
    speech_end: list[float] = field(default_factory=list)
    committed: list[float] = field(default_factory=list)
    first_delta: dict[str, float] = field(default_factory=dict)
    completed: list[tuple[str, float, str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    #: When the client committed (with its own speech detector).
    commits: list[float] = field(default_factory=list)
    #: Wall time each 100 ms append went out.
    sent: list[float] = field(default_factory=list)


def loud_span(pcm: bytes) -> tuple[int, int]:
    """Where speech starts and ends in ``pcm`` (espeak pads a sentence with silence), in
    bytes, to 10 ms."""
    frame = 240 * 2  # 10 ms at 24 kHz
    loud = [
        n
        for n in range(0, len(pcm) - frame, frame)
        if max(abs(x) for x in memoryview(pcm[n : n + frame]).cast("h")) > 1000
    ]
    return (loud[0], loud[-1] + frame) if loud else (0, len(pcm))


def stream_of(sentences: int) -> tuple[bytes, list[Sentence]]:
    """The tests' sentences as one 24 kHz stream with a pause after each."""
    texts = [SENTENCES[n % len(SENTENCES)] for n in range(sentences)]
    return stream_from(texts, [say(text) for text in texts])


def stream_from(texts: list[str], spoken: list[bytes]) -> tuple[bytes, list[Sentence]]:
    """Sentences (16 kHz PCM) as one 24 kHz stream with a pause after each."""
    pcm, spans = b"", []
    for text, sentence in zip(texts, spoken, strict=True):
        speech = to_24k(sentence)
        first, last = loud_span(speech)
        spans.append(Sentence(text, len(pcm) + first, len(pcm) + last))
        pcm += speech + silence(PAUSE_S)
    return pcm + silence(1.0), spans


async def one_session(
    url: str,
    pcm: bytes,
    *,
    update: dict[str, Any] | None = None,
    settle_s: float = 4.0,
    commits: tuple[int, ...] = (),
) -> Run:
    """Stream ``pcm`` at real time through one session; what came back, timed. With
    ``commits`` (byte offsets), the client commits once the stream has passed each, as
    a client with its own speech detector does."""
    run = Run()
    pending = list(commits)
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{url}{PATH}", protocols=("realtime",), max_msg_size=0) as ws,
    ):

        async def read() -> None:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = orjson.loads(message.data)
                now = time.perf_counter() - started
                kind = event["type"]
                if kind == "input_audio_buffer.committed":
                    run.committed.append(now)
                    run.items.append(event["item_id"])
                elif kind == f"{TRANSCRIPTION}.delta":
                    run.first_delta.setdefault(event["item_id"], now)
                elif kind == f"{TRANSCRIPTION}.completed":
                    run.completed.append((event["item_id"], now, event["transcript"]))

        reader = asyncio.ensure_future(read())
        if update is not None:
            await ws.send_str(orjson.dumps({"type": "session.update", "session": update}).decode())
        for n, offset in enumerate(range(0, len(pcm), CHUNK_BYTES)):
            due = started + n * CHUNK_S
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            run.sent.append(time.perf_counter() - started)
            audio = base64.b64encode(pcm[offset : offset + CHUNK_BYTES]).decode()
            await ws.send_str(
                orjson.dumps({"type": "input_audio_buffer.append", "audio": audio}).decode()
            )
            if pending and offset + CHUNK_BYTES >= pending[0]:
                pending.pop(0)
                run.commits.append(time.perf_counter() - started)
                await ws.send_str(orjson.dumps({"type": "input_audio_buffer.commit"}).decode())
        await asyncio.sleep(settle_s)
        await ws.close()
        await reader
    return run


def turn_times(run: Run, spans: list[Sentence]) -> tuple[list[float], list[float], str]:
    """Speech end to completed, speech start to first delta (each turn), and the text heard."""
    ends, firsts = [], []
    done = {item: (at, text) for item, at, text in run.completed}
    heard = []
    for span, item in zip(spans, run.items, strict=False):
        speech_start = span.start / CHUNK_BYTES * CHUNK_S
        speech_end = span.end / CHUNK_BYTES * CHUNK_S
        if item in done:
            ends.append(done[item][0] - speech_end)
            heard.append(done[item][1])
        if item in run.first_delta:
            firsts.append(run.first_delta[item] - speech_start)
    return ends, firsts, " ".join(heard)


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"{statistics.median(values):.2f} s / {p95:.2f} s"


async def one_pass(url: str) -> float:
    """The floor under a partial caption: one pass of the embedded model over the first
    second of a sentence (an HTTP request), the median of three."""
    wav = wav_header(32_000) + say(SENTENCES[0])[:32_000]
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(4):
            form = aiohttp.FormData()
            form.add_field("model", "whisper-1")
            form.add_field("file", wav, filename="a.wav", content_type="audio/wav")
            started = time.perf_counter()
            async with http.post(f"{url}/v1/audio/transcriptions", data=form) as response:
                await response.read()
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


async def embedded(args: argparse.Namespace) -> None:
    pcm, spans = stream_of(args.sentences)
    reference = " ".join(s.text for s in spans)
    print(
        f"\nembedded model, {len(spans)} sentences, {len(pcm) / 48_000:.0f} s streamed in real time"
    )
    print(
        "| partial captions | speech end to completed, p50 / p95 "
        "| speech start to first delta, p50 / p95 | WER |"
    )
    print("|---|---|---|---|")
    floors: list[float] = []
    for interval in (1000, 500, 0):
        config = {
            "providers": {"local": {}},
            "proxy": {
                "local": {"preload": True},
                "realtime": {
                    "partial_interval_ms": interval,
                    **({"beam_size": args.beam} if args.beam else {}),
                },
            },
        }
        async with proxy_with(config) as (port, _):
            url = f"http://127.0.0.1:{port}"
            floor = await one_pass(url)
            update = {
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}},
            }
            run = await one_session(url, pcm, update=update)
        ends, firsts, heard = turn_times(run, spans)
        label = f"every {interval} ms" if interval else "off"
        floors.append(floor)
        print(
            f"| {label} | {summary(ends)} | {summary(firsts) if interval else '-'} "
            f"| {100 * word_error_rate(reference, heard):.1f} % "
            f"({len(run.completed)}/{len(spans)} turns) |"
        )
    print(
        "one pass of the model over 1 s of speech, in the same runs: "
        f"{statistics.median(floors):.2f} s "
        "(a caption two passes agree on needs at least two, after the turn's first second)"
    )


#: How long after a sentence's last sound a client with its own speech detector commits.
CLIENT_COMMIT_AFTER_S = 0.5
LANGUAGE_EN = {"transcription": {"model": "whisper-1", "language": "en"}}
SERVER_VAD_EN = {"type": "transcription", "audio": {"input": LANGUAGE_EN}}


def local_config(**local: Any) -> dict[str, Any]:
    """The embedded model, loaded at start, realtime settings as they ship."""
    return {
        "providers": {"local": {}},
        "proxy": {"web_ui": False, "local": {"preload": True, **local}},
    }


async def posted(url: str, spoken: list[bytes]) -> str:
    """The baseline: each sentence posted to /v1/audio/transcriptions as a WAV file of the
    same 24 kHz audio a session is streamed (both are resampled to 16 kHz by the proxy)."""
    heard = []
    async with aiohttp.ClientSession() as http:
        for sentence in spoken:
            pcm = to_24k(sentence)
            form = aiohttp.FormData()
            form.add_field("model", "whisper-1")
            form.add_field("language", "en")
            form.add_field("file", wav_header(len(pcm), 24_000) + pcm, filename="a.wav")
            async with http.post(f"{url}/v1/audio/transcriptions", data=form) as response:
                heard.append((await response.json())["text"])
    return " ".join(heard)


def commit_latencies(run: Run) -> list[float]:
    """Each client commit to its turn's ``completed``."""
    done = {item: at for item, at, _ in run.completed}
    return [
        done[item] - at for item, at in zip(run.items, run.commits, strict=False) if item in done
    ]


async def accuracy(args: argparse.Namespace) -> None:
    """Word error rate and latency of realtime against the same speech posted over HTTP, on
    sets of sentences no setting was tuned on, in the same run."""
    print(
        "\nembedded model, realtime against the same speech over HTTP (the baseline), "
        "each set streamed in real time"
    )
    print(
        "| speech | WER over HTTP | WER realtime, server_vad | WER realtime, client commits "
        "| speech end to completed, p50 / p95 | speech start to first delta, p50 / p95 "
        "| client commit to completed, p50 / p95 |"
    )
    print("|---|---|---|---|---|---|---|")
    ends_all: list[float] = []
    firsts_all: list[float] = []
    commits_all: list[float] = []
    config = local_config()
    if args.beam:
        config["proxy"]["realtime"] = {"beam_size": args.beam}
    async with proxy_with(config) as (port, _):
        url = f"http://127.0.0.1:{port}"
        floor = await one_pass(url)
        for speech_set in SPEECH_SETS[: args.sets]:
            spoken = speech_set.spoken()
            texts = list(speech_set.sentences)
            reference = " ".join(texts)
            pcm, spans = stream_from(texts, spoken)
            http = await posted(url, spoken)
            vad = await one_session(
                url, pcm, update={"type": "transcription", "audio": {"input": LANGUAGE_EN}}
            )
            ends, firsts, heard = turn_times(vad, spans)
            manual = {
                "type": "transcription",
                "audio": {"input": {**LANGUAGE_EN, "turn_detection": None}},
            }
            commits = tuple(span.end + int(CLIENT_COMMIT_AFTER_S * 48_000) for span in spans)
            client = await one_session(url, pcm, update=manual, commits=commits)
            _, _, committed_heard = turn_times(client, spans)
            latencies = commit_latencies(client)
            ends_all += ends
            firsts_all += firsts
            commits_all += latencies
            print(
                f"| {speech_set.name} | {100 * word_error_rate(reference, http):.1f} % "
                f"| {100 * word_error_rate(reference, heard):.1f} % "
                f"({len(vad.completed)}/{len(spans)} turns) "
                f"| {100 * word_error_rate(reference, committed_heard):.1f} % "
                f"| {summary(ends)} | {summary(firsts)} | {summary(latencies)} |"
            )
    print(
        f"| all sets | | | | {summary(ends_all)} | {summary(firsts_all)} | {summary(commits_all)} |"
    )
    print(
        f"one pass of the model over 1 s of speech, in the same run: {floor:.2f} s "
        "(a first caption needs two that agree, after the turn's first second)"
    )


async def capacity(args: argparse.Namespace) -> None:
    """How many sessions speaking at once the embedded model serves at the latency goal
    (speech end to completed p50 <= 1.0 s, p95 <= 2.0 s), each transcript against the
    same speech in a session alone."""
    speech_set = SPEECH_SETS[0]
    texts = list(speech_set.sentences)
    pcm, spans = stream_from(texts, speech_set.spoken())
    update = SERVER_VAD_EN
    print(f"\nembedded model, sessions speaking at once ({speech_set.name}, real time)")
    print("| sessions | speech end to completed, p50 / p95 | turns as heard alone | goal met |")
    print("|---|---|---|---|")
    async with proxy_with(local_config(max_live_sessions=max(args.capacity))) as (port, _):
        url = f"http://127.0.0.1:{port}"
        alone_run = await one_session(url, pcm, update=update)
        alone = {n: text for n, (_, _, text) in enumerate(alone_run.completed)}
        held = 0
        for count in args.capacity:

            async def staggered(n: int) -> Run:
                await asyncio.sleep(n * 0.25)  # speakers do not start on the same sample
                return await one_session(url, pcm, update=update)

            runs = await asyncio.gather(*(staggered(n) for n in range(count)))
            ends: list[float] = []
            same = total = 0
            for run in runs:
                run_ends, _, _ = turn_times(run, spans)
                ends += run_ends
                for n, (_, _, text) in enumerate(run.completed):
                    total += 1
                    same += text == alone.get(n)
            ordered = sorted(ends)
            p50 = statistics.median(ends) if ends else float("inf")
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ends else p50
            met = p50 <= 1.0 and p95 <= 2.0 and total == count * len(spans)
            if met:
                held = count
            print(
                f"| {count} | {summary(ends)} | {same}/{total} of {count * len(spans)} "
                f"| {'yes' if met else 'no'} |"
            )
    print(f"sessions held at the goal on this machine: {held}")


@asynccontextmanager
async def fake_upstream(delay_s: float = 0.05) -> AsyncIterator[int]:
    """An OpenAI-compatible upstream that answers ``delay_s`` after a turn's upload."""

    async def transcribe(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay_s)
        return web.json_response({"text": "heard", "usage": {"type": "duration", "seconds": 1}})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/audio/transcriptions", transcribe)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


def upstream_config(port: int) -> dict[str, Any]:
    return {
        "providers": {
            "openai": {
                "keys": [{"value": "sk-bench"}],
                "network_config": {"base_url": f"http://127.0.0.1:{port}"},
            }
        },
        "proxy": {"web_ui": False, "realtime": {"vad": VAD}},
    }


#: The speech detector the fake-upstream runs use (--vad).
VAD = "auto"


async def synthesized(args: argparse.Namespace) -> None:
    pcm, spans = stream_of(min(args.sentences, 10))
    async with fake_upstream() as upstream, proxy_with(upstream_config(upstream)) as (port, _):
        run = await one_session(f"http://127.0.0.1:{port}", pcm, settle_s=1.5)
    ends, _, _ = turn_times(run, spans)
    print(f"\nsynthesized over a fake upstream answering in 50 ms, {len(spans)} turns")
    print(
        f"speech end to completed: p50 {statistics.median(ends) * 1000:.0f} ms, "
        f"max {max(ends) * 1000:.0f} ms (silence_duration_ms 500: goal p50 <= 600 ms)"
    )


async def load(args: argparse.Namespace) -> None:
    pcm, spans = stream_of(6)
    seconds = len(pcm) / 48_000
    async with fake_upstream() as upstream, proxy_with(upstream_config(upstream)) as (port, proxy):
        url = f"http://127.0.0.1:{port}"
        alone = await one_session(url, pcm, settle_s=1.5)
        idle_kib = rss_kib(proxy.pid)
        cpu_before = cpu_seconds(proxy.pid)
        async with PeakRss(proxy.pid, interval=0.1) as watched:
            runs = await asyncio.gather(
                *(one_session(url, pcm, settle_s=1.5) for _ in range(args.sessions))
            )
        peak = watched.peak_kib
        cpu = cpu_seconds(proxy.pid) - cpu_before

    # How late each commit came, against the sentence's own end: alone, and with the others.
    def lateness(run: Run) -> list[float]:
        return [
            at - span.end / CHUNK_BYTES * CHUNK_S
            for at, span in zip(run.committed, spans, strict=False)
        ]

    base = lateness(alone)
    loaded = [late for run in runs for late in lateness(run)]
    completed = sum(len(r.completed) for r in runs)
    print(
        f"\n{args.sessions} sessions at once, each {seconds:.0f} s of speech at real time, "
        "fake upstream"
    )
    print(f"turns completed: {completed} of {args.sessions * len(spans)}")
    print(
        f"proxy CPU per session-second of audio: {cpu / (args.sessions * seconds) * 1000:.2f} ms "
        f"({cpu:.1f} s for {args.sessions * seconds:.0f} session-seconds)"
    )
    print(
        f"proxy RSS: {idle_kib / 1024:.1f} MiB after one session, "
        f"peak {peak / 1024:.1f} MiB with all open: "
        f"{(peak - idle_kib) / 1024 / args.sessions:.2f} MiB per session"
    )
    print(
        f"committed event after its speech end: alone p50 {statistics.median(base) * 1000:.0f} ms; "
        f"{args.sessions} at once p50 {statistics.median(loaded) * 1000:.0f} ms, "
        f"p99 {percentile(loaded, 99) * 1000:.0f} ms, max {max(loaded) * 1000:.0f} ms: "
        "the others delay an event by at most "
        f"{(max(loaded) - statistics.median(base)) * 1000:.0f} ms"
    )


def run_realtime_upstream(port: int) -> None:
    """A Realtime API that answers each client event at once with one small event."""

    async def session(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str('{"type":"session.created","event_id":"e0","session":{}}')
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                sent = orjson.loads(message.data).get("event_id")
                answer = {"type": f"{TRANSCRIPTION}.delta", "event_id": "e", "item_id": sent}
                await ws.send_str(orjson.dumps({**answer, "delta": "x"}).decode())
        return ws

    app = web.Application()
    app.router.add_get("/v1/realtime", session)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def relay_session(
    url: str, *, events: int, every_s: float, rtts: list[float] | None = None
) -> int:
    """Append ``events`` times, ``every_s`` apart; each answer's round trip into ``rtts``."""
    audio = base64.b64encode(bytes(CHUNK_BYTES)).decode()
    answered = 0
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{url}{PATH}", max_msg_size=0) as ws,
    ):
        await ws.receive()  # session.created
        started = time.perf_counter()
        for n in range(events):
            due = started + n * every_s
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            event = {"type": "input_audio_buffer.append", "event_id": str(n), "audio": audio}
            sent = time.perf_counter()
            await ws.send_str(orjson.dumps(event).decode())
            await ws.receive()
            if rtts is not None:
                rtts.append(time.perf_counter() - sent)
            answered += 1
    return answered


def relay_config(upstream_port: int) -> dict[str, Any]:
    config = upstream_config(upstream_port)
    config["providers"]["openai"]["realtime"] = True
    return config


async def relay(args: argparse.Namespace) -> None:
    upstream_port = free_port()
    command = (sys.executable, __file__, "upstream", "--port", str(upstream_port))
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    async with (
        running(*command, up=f"{upstream_url}/v1/realtime"),
        proxy_with(relay_config(upstream_port)) as (port, proxy),
    ):
        proxied_url = f"http://127.0.0.1:{port}"
        direct: list[float] = []
        proxied: list[float] = []
        for _ in range(args.rounds):  # interleaved, so the machine's drift hits both alike
            await relay_session(upstream_url, events=500, every_s=0.002, rtts=direct)
            await relay_session(proxied_url, events=500, every_s=0.002, rtts=proxied)
        print(f"\nrelay: {len(direct)} events each way, direct against through the proxy")
        print("| | direct | proxied | added |")
        print("|---|---|---|---|")
        for name, q in (("p50", 50), ("p99", 99)):
            a, b = percentile(direct, q) * 1000, percentile(proxied, q) * 1000
            print(f"| event round trip {name} | {a:.3f} ms | {b:.3f} ms | **{b - a:+.3f} ms** |")
        idle = rss_kib(proxy.pid)
        cpu = cpu_seconds(proxy.pid)
        seconds = args.relay_seconds
        async with PeakRss(proxy.pid, interval=0.1) as watched:
            answered = await asyncio.gather(
                *(
                    relay_session(proxied_url, events=int(seconds / CHUNK_S), every_s=CHUNK_S)
                    for _ in range(args.relay_sessions)
                )
            )
        peak = watched.peak_kib
        used = cpu_seconds(proxy.pid) - cpu
    session_seconds = args.relay_sessions * seconds
    print(
        f"\n{args.relay_sessions} relayed sessions at once, {seconds:.0f} s each at real time "
        f"(100 ms appends): {sum(answered)} events answered"
    )
    print(
        f"proxy CPU per session-second: {used / session_seconds * 1000:.2f} ms "
        f"({used:.1f} s for {session_seconds:.0f} session-seconds); RSS {idle / 1024:.1f} MiB "
        f"idle, peak {peak / 1024:.1f} MiB: {(peak - idle) / 1024 / args.relay_sessions:.3f} "
        "MiB per session"
    )


async def bench(args: argparse.Namespace) -> None:
    parts = {
        "embedded": embedded,
        "accuracy": accuracy,
        "capacity": capacity,
        "synthesized": synthesized,
        "load": load,
        "relay": relay,
    }
    for name in args.parts:
        await parts[name](args)


def main() -> None:
    if sys.argv[1:2] == ["upstream"]:
        run_realtime_upstream(int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "parts",
        nargs="*",
        default=["embedded", "synthesized", "load", "relay"],
        help="what to measure",
    )
    parser.add_argument("--sentences", type=int, default=24, help="sentences per stream (24)")
    parser.add_argument("--sessions", type=int, default=100, help="sessions at once under load")
    parser.add_argument("--relay-sessions", type=int, default=200, help="relayed sessions at once")
    parser.add_argument("--relay-seconds", type=float, default=20.0, help="each relayed session")
    parser.add_argument("--rounds", type=int, default=4, help="relay latency rounds, interleaved")
    parser.add_argument(
        "--beam", type=int, default=0, help="the transcript's beam (0: as configured by default)"
    )
    parser.add_argument("--sets", type=int, default=3, help="speech sets for accuracy (3)")
    parser.add_argument(
        "--capacity",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 3, 4, 6],
        help="sessions at once for capacity (1,2,3,4,6)",
    )
    parser.add_argument(
        "--vad", default="auto", help="speech detector for the fake-upstream runs (auto)"
    )
    args = parser.parse_args()
    global VAD
    VAD = args.vad
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
