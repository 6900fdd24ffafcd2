"""Realtime sessions driven by the voice-agent frameworks' own clients, code nobody here
wrote: LiveKit Agents' OpenAI STT plugin and pipecat's OpenAIRealtimeSTTService, each
pointed at the proxy on the embedded model and fed espeak speech at real-time pace, as a
microphone would. Each sentence must come back once, in a final transcript, in order, and
the session must never end with an error (the voice-agents extra installs both)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

pytest.importorskip("faster_whisper", reason="the local extra is not installed")

from tests.helpers.client import ProxyFactory, base_url
from tests.helpers.realtime import WAIT_S
from tests.helpers.speech import RATE, SENTENCES, WORDS, espeak, pause, say

pytestmark = pytest.mark.skipif(
    espeak() is None, reason="espeak-ng is not installed (scripts/test installs it)"
)

#: What is said: three sentences with a pause after each, about 17 s of speech.
SAID = range(3)
#: A microphone's frames: 100 ms of 16 kHz PCM.
FRAME_S = 0.1


@pytest.fixture
async def local(make_proxy: ProxyFactory) -> TestServer:
    return await make_proxy({"providers": {"local": {}}, "proxy": {"local": {"preload": True}}})


def speech() -> bytes:
    """The sentences of SAID spoken, each followed by a pause, and a pause to close."""
    return pause(0.5) + b"".join(say(SENTENCES[i]) + pause(1.2) for i in SAID) + pause(1.5)


def frames(pcm: bytes) -> Iterator[bytes]:
    step = int(FRAME_S * RATE) * 2
    for start in range(0, len(pcm), step):
        yield pcm[start : start + step]


def stem(word: str) -> str:
    """``word`` without a plural's ``s``, as a pattern."""
    return re.escape(word.removesuffix("s"))


def heard(finals: list[str]) -> list[str]:
    """The unique words of SAID's sentences the final transcripts hold, in spoken order."""
    expected = [WORDS[i] for i in SAID]
    found: list[str] = []
    for text in finals:
        # By stem: the model may hear a plural as its singular ("orders", "order").
        hits = sorted((m.start(), w) for w in expected for m in re.finditer(stem(w), text.lower()))
        found += [w for _, w in hits]
    return found


class Finals:
    """Final transcripts as a client reports them, and a wait for all of SAID's."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._changed = asyncio.Condition()
        self._ended = False

    async def add(self, text: str) -> None:
        async with self._changed:
            self.texts.append(text)
            self._changed.notify_all()

    @property
    def ended(self) -> bool:
        """Whether the client's stream is over (or it reported an error)."""
        return self._ended

    async def end(self) -> None:
        """The client's stream is over: nothing more will come."""
        async with self._changed:
            self._ended = True
            self._changed.notify_all()

    async def wait_for_all(self) -> None:
        """Until every sentence is heard, or the stream ends, or WAIT_S pass: what was
        heard by then is for the test to judge."""
        waiting = asyncio.ensure_future(self._all_or_end())
        await asyncio.wait({waiting}, timeout=WAIT_S)
        waiting.cancel()

    async def _all_or_end(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._ended or len(heard(self.texts)) >= len(SAID))


async def at_real_time(
    pcm: bytes, feed: Callable[[bytes], Awaitable[None]], finals: Finals
) -> None:
    """Feeds ``pcm`` a frame at a time on a clock, so slow feeds do not stretch the audio,
    until the client's stream ends."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, frame in enumerate(frames(pcm)):
        await asyncio.sleep(max(0.0, start + index * FRAME_S - loop.time()))
        if finals.ended:
            return
        await feed(frame)


def assert_each_sentence_heard_once_in_order(finals: list[str]) -> None:
    assert heard(finals) == [WORDS[i] for i in SAID], finals


# LiveKit Agents --------------------------------------------------------------------------


async def livekit_session(server: TestServer, **options: Any) -> tuple[list[str], list[Any]]:
    """The plugin's streaming STT on the proxy, fed ``speech()``: its final transcripts and
    the errors it reported."""
    pytest.importorskip("livekit.plugins.openai", reason="the voice-agents extra is not installed")
    from livekit import rtc
    from livekit.agents import stt, utils
    from livekit.plugins import openai

    finals = Finals()
    errors: list[Any] = []
    async with utils.http_context.open():
        client = openai.STT(
            base_url=f"{base_url(server)}/v1", api_key="sk-none", use_realtime=True, **options
        )
        client.on("error", errors.append)
        stream = client.stream()

        async def read() -> None:
            try:
                async for event in stream:
                    if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                        await finals.add(event.alternatives[0].text)
            finally:
                await finals.end()

        async def push(pcm: bytes) -> None:
            stream.push_frame(
                rtc.AudioFrame(
                    data=pcm, sample_rate=RATE, num_channels=1, samples_per_channel=len(pcm) // 2
                )
            )

        reader = asyncio.ensure_future(read())
        try:
            await at_real_time(speech(), push, finals)
            stream.end_input()
            await finals.wait_for_all()
        finally:
            await stream.aclose()
            await client.aclose()
            await reader
    return finals.texts, errors


async def test_livekit_with_its_default_model_and_server_vad(local: TestServer) -> None:
    # gpt-4o-mini-transcribe (?model= on the upgrade), turn_detection server_vad with
    # LiveKit's own settings (prefix 600 ms, silence 350 ms): the proxy finds the turns.
    finals, errors = await livekit_session(local)
    assert errors == []
    assert_each_sentence_heard_once_in_order(finals)


async def test_livekit_on_gpt_realtime_whisper_commits_each_turn_on_its_own_vad(
    local: TestServer,
) -> None:
    # The plugin omits turn_detection for this model and sends input_audio_buffer.commit
    # whenever its Silero VAD hears speech end: every turn after the first must still be
    # taken (it once died on input_audio_buffer_commit_empty after the first sentence).
    finals, errors = await livekit_session(local, model="gpt-realtime-whisper")
    assert errors == []
    assert_each_sentence_heard_once_in_order(finals)


# pipecat -----------------------------------------------------------------------------------


# pipecat 1.14 loads its Silero model with importlib.resources' deprecated path().
@pytest.mark.filterwarnings("ignore:path is deprecated:DeprecationWarning")
async def test_pipecat_realtime_stt_in_its_default_mode_commits_on_pipeline_vad(
    local: TestServer,
) -> None:
    # Its defaults: gpt-realtime-whisper, turn_detection null, and a commit on each
    # VADUserStoppedSpeakingFrame, here from the pipeline's own Silero VADProcessor.
    pytest.importorskip("pipecat", reason="the voice-agents extra is not installed")
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.frames.frames import EndFrame, ErrorFrame, InputAudioRawFrame, TranscriptionFrame
    from pipecat.observers.base_observer import BaseObserver, FramePushed
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.audio.vad_processor import VADProcessor
    from pipecat.services.openai.stt import OpenAIRealtimeSTTService
    from pipecat.workers.runner import WorkerRunner

    service = OpenAIRealtimeSTTService(
        api_key="sk-none", base_url=f"ws://127.0.0.1:{local.port}/v1/realtime"
    )
    finals = Finals()
    errors: list[ErrorFrame] = []

    class Results(BaseObserver):
        """What the service pushes: transcripts downstream, errors upstream."""

        async def on_push_frame(self, data: FramePushed) -> None:
            if data.source is not service:
                return
            if isinstance(data.frame, TranscriptionFrame):
                await finals.add(data.frame.text)
            elif isinstance(data.frame, ErrorFrame):
                errors.append(data.frame)
                await finals.end()

    worker = PipelineWorker(
        Pipeline([VADProcessor(vad_analyzer=SileroVADAnalyzer()), service]),
        observers=[Results()],
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    async def on_started(_worker: PipelineWorker, _frame: Any) -> None:
        started.set()

    worker.add_event_handler("on_pipeline_started", on_started)

    async def push(pcm: bytes) -> None:
        await worker.queue_frame(InputAudioRawFrame(audio=pcm, sample_rate=RATE, num_channels=1))

    async def talk() -> None:
        try:
            async with asyncio.timeout(WAIT_S):
                await started.wait()
            await at_real_time(speech(), push, finals)
            await finals.wait_for_all()
        finally:
            await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), talk())
    assert errors == []
    assert_each_sentence_heard_once_in_order(finals.texts)
