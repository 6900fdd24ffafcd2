"""Realtime sessions on the embedded model: real speech, turns found by Silero VAD, partial
captions while a turn is spoken, and each turn's transcript as the HTTP path hears it."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

pytest.importorskip("faster_whisper", reason="the local extra is not installed")

from tests.helpers.client import ProxyFactory, base_url
from tests.helpers.errors import assert_error
from tests.helpers.realtime import (
    PATH,
    TRANSCRIPTION,
    refused_upgrade,
    session,
    silence,
    to_24k,
    tone,
    transcription,
)
from tests.helpers.speech import SENTENCES, WORDS, espeak, pause, say, wav, word_errors
from tests.helpers.upstream import FakeUpstream, provider_config

pytestmark = pytest.mark.skipif(
    espeak() is None, reason="espeak-ng is not installed (scripts/test installs it)"
)


@pytest.fixture
async def local(make_proxy: ProxyFactory) -> TestServer:
    return await make_proxy({"providers": {"local": {}}, "proxy": {"local": {"preload": True}}})


def deltas_of(events: list[dict[str, Any]], item_id: str) -> str:
    return "".join(
        e["delta"]
        for e in events
        if e["type"] == f"{TRANSCRIPTION}.delta" and e["item_id"] == item_id
    )


async def test_each_spoken_sentence_is_a_turn_heard_in_order(local: TestServer) -> None:
    turns = 4
    speech = b"".join(say(s) + pause(1.2) for s in SENTENCES[:turns])
    async with session(local, update=transcription(language="en")) as client:
        await client.stream(to_24k(speech) + silence(1.0), pace=2.0)
        completed = await client.wait_for(f"{TRANSCRIPTION}.completed", count=turns)
        committed = client.of("input_audio_buffer.committed")
        started = client.of("input_audio_buffer.speech_started")
    assert [c["item_id"] for c in completed] == [c["item_id"] for c in committed]
    assert [s["item_id"] for s in started] == [c["item_id"] for c in committed]
    for turn, word in zip(completed, WORDS, strict=False):
        assert word in turn["transcript"].lower(), (word, turn["transcript"])
        # The deltas are the captions: interim text, each turn's there before its end.
        assert deltas_of(client.events, turn["item_id"]).strip()
        assert turn["usage"]["type"] == "duration"


async def test_a_turn_gets_partial_captions_while_it_is_spoken(local: TestServer) -> None:
    # Three sentences without a pause: one long turn, streamed in real time.
    speech = b"".join(say(s) for s in SENTENCES[8:11])
    async with session(local, update=transcription(language="en")) as client:
        await client.stream(to_24k(speech) + silence(1.5), pace=1.0)
        (completed,) = await client.wait_for(f"{TRANSCRIPTION}.completed")
    types = client.types()
    first_delta = types.index(f"{TRANSCRIPTION}.delta")
    assert first_delta < types.index("input_audio_buffer.committed")
    for word in WORDS[8:11]:
        assert word in completed["transcript"].lower()


async def test_without_partials_a_turn_is_still_heard_whole(make_proxy: ProxyFactory) -> None:
    server = await make_proxy(
        {"providers": {"local": {}}, "proxy": {"realtime": {"partial_interval_ms": 0}}}
    )
    speech = say(SENTENCES[8]) + pause(1.0)
    async with session(server, update=transcription(turn_detection=None)) as client:
        await client.stream(to_24k(speech))
        await client.send({"type": "input_audio_buffer.commit"})
        (completed,) = await client.wait_for(f"{TRANSCRIPTION}.completed")
    assert WORDS[8] in completed["transcript"].lower()
    deltas = client.of(f"{TRANSCRIPTION}.delta")
    assert [d["delta"] for d in deltas] == [completed["transcript"]]


@pytest.mark.parametrize("sentence", [SENTENCES[3], SENTENCES[12], SENTENCES[19]])
async def test_a_turns_transcript_reads_as_the_same_audio_sent_as_a_file(
    local: TestServer, sentence: str
) -> None:
    # Partial captions on (greedy), the transcript at the HTTP path's beam: the same
    # words as the same speech posted to /v1/audio/transcriptions.
    speech = say(sentence) + pause(0.5)
    async with session(local, update=transcription(turn_detection=None, language="en")) as client:
        await client.stream(to_24k(speech), pace=2.0)
        await client.send({"type": "input_audio_buffer.commit"})
        (completed,) = await client.wait_for(f"{TRANSCRIPTION}.completed")
    async with openai.AsyncOpenAI(
        base_url=f"{base_url(local)}/v1", api_key="sk-none", max_retries=0
    ) as sdk:
        posted = await sdk.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav(speech)), language="en"
        )
    # As well as the file is heard: a word more wrong at most (a turn's audio and the
    # file's start and end a little differently, and tiny.en hears edges differently).
    assert word_errors(sentence, completed["transcript"]) <= word_errors(sentence, posted.text) + 1


async def test_past_its_live_sessions_the_model_refuses_new_ones_rather_than_serve_all_late(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    config = provider_config(upstream)
    config["providers"]["local"] = {}
    config["proxy"] = {"local": {"max_live_sessions": 2}, "realtime": {"vad": "loudness"}}
    server = await make_proxy(config)
    on_local = f"{PATH}&model=local/whisper-1"
    async with session(server, path=on_local), session(server, path=on_local):
        status, body, headers = await refused_upgrade(server, on_local)
        assert status == 503
        assert_error(
            body,
            status=503,
            code="live_sessions_full",
            error_type="api_error",
            bifrost=True,
            request_type="realtime",
        )
        assert headers["Retry-After"] == "5"
        # A session on another provider is not held to it, and cannot move onto it.
        async with session(server, path=f"{PATH}&model=openai/whisper-1") as other:
            await other.send(
                {"type": "session.update", "session": transcription("local/whisper-1")}
            )
            (error,) = await other.wait_for("error")
            assert error["error"]["code"] == "live_sessions_full"
            await other.stream(tone(1.0) + silence(1.0))
            await other.wait_for(f"{TRANSCRIPTION}.completed")
        assert len(upstream.requests) == 1  # its turn went where it was
    # Both ended: their seats are free again.
    async with session(server, path=on_local), session(server, path=on_local):
        pass
