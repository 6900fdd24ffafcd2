"""Realtime transcription sessions synthesized over an HTTP provider (a fake upstream).

A real WebSocket client (aiohttp's) against the proxy, the proxy against a
recording fake OpenAI upstream; turns found by the loudness detector in
tones and silence, or committed by the client.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import logging
import signal
import wave
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai.types.realtime import ConversationItemInputAudioTranscriptionCompletedEvent

from proxy.app import start_draining
from tests.helpers.client import ProxyFactory, base_url, eventually
from tests.helpers.processes import start_proxy_process
from tests.helpers.realtime import (
    PATH,
    TRANSCRIPTION,
    append,
    session,
    silence,
    tone,
    transcription,
)
from tests.helpers.upstream import FakeUpstream, ReceivedRequest, hanging, provider_config

MANUAL = transcription(turn_detection=None)


def config(upstream: FakeUpstream, **realtime: Any) -> dict[str, Any]:
    return {
        **provider_config(upstream),
        "proxy": {"realtime": {"vad": "loudness", **realtime}},
    }


@pytest.fixture
async def proxy(make_proxy: ProxyFactory, upstream: FakeUpstream) -> TestServer:
    upstream.keep_files = True
    return await make_proxy(config(upstream))


def wav_of(received: ReceivedRequest) -> tuple[int, int, int]:
    """A turn's upload as the upstream got it: (rate, channels, frames)."""
    assert received.file.data is not None
    with wave.open(io.BytesIO(received.file.data)) as source:
        return source.getframerate(), source.getnchannels(), source.getnframes()


async def test_a_session_starts_with_its_effective_configuration(proxy: TestServer) -> None:
    async with session(proxy) as client:
        assert client.ws.protocol == "realtime"
        created = client.events[0]
        assert created["type"] == "session.created"
        assert isinstance(created["event_id"], str)
        config = created["session"]
        assert config["type"] == "transcription"
        inputs = config["audio"]["input"]
        assert inputs["format"] == {"type": "audio/pcm", "rate": 24000}
        assert inputs["turn_detection"] == {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
        }
        assert inputs["transcription"]["model"] == "whisper-1"


async def test_ga_and_beta_updates_are_answered_in_kind(proxy: TestServer) -> None:
    async with session(proxy) as client:
        await client.send(
            {
                "type": "session.update",
                "event_id": "evt_client_1",
                "session": {
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcmu"},
                            "transcription": {"model": "openai/whisper-1", "language": "de"},
                            "turn_detection": None,
                            "noise_reduction": {"type": "near_field"},
                        }
                    },
                },
            }
        )
        (updated,) = await client.wait_for("session.updated")
        inputs = updated["session"]["audio"]["input"]
        assert inputs["format"] == {"type": "audio/pcmu"}
        assert inputs["transcription"]["language"] == "de"
        assert inputs["turn_detection"] is None
        assert inputs["noise_reduction"] == {"type": "near_field"}
        await client.send(
            {
                "type": "transcription_session.update",
                "session": {
                    "input_audio_format": "pcm16",
                    "input_audio_transcription": {"model": "whisper-1", "prompt": "Anouk"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
                },
            }
        )
        (beta,) = await client.wait_for("transcription_session.updated")
        assert beta["session"]["input_audio_format"] == "pcm16"
        assert beta["session"]["input_audio_transcription"]["prompt"] == "Anouk"
        assert beta["session"]["turn_detection"]["silence_duration_ms"] == 800
        assert beta["session"]["input_audio_transcription"]["language"] == "de"  # kept


async def test_a_committed_turn_goes_upstream_as_a_wav_and_comes_back_in_order(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    update = transcription(turn_detection=None, language="en", prompt="Names: Anouk.")
    async with session(proxy, update=update) as client:
        await client.stream(tone(1.0))
        await client.send({"type": "input_audio_buffer.commit"})
        (committed,) = await client.wait_for("input_audio_buffer.committed")
        assert committed["previous_item_id"] is None
        (completed,) = await client.wait_for(f"{TRANSCRIPTION}.completed")
        assert completed["item_id"] == committed["item_id"]
        assert completed["transcript"] == f"heard {upstream.requests[0].file.size} bytes"
        assert completed["usage"] == {"type": "duration", "seconds": 2}  # the upstream's
        deltas = client.of(f"{TRANSCRIPTION}.delta")
        assert "".join(d["delta"] for d in deltas) == completed["transcript"]
        # The next turn names the one before it.
        await client.stream(tone(0.5))
        await client.send({"type": "input_audio_buffer.commit"})
        second = (await client.wait_for("input_audio_buffer.committed", count=2))[1]
        assert second["previous_item_id"] == committed["item_id"]
        await client.wait_for(f"{TRANSCRIPTION}.completed", count=2)
    received = upstream.requests[0]
    assert received.file.filename == "audio.wav"
    assert received.file.content_type == "audio/wav"
    rate, channels, frames = wav_of(received)
    assert (rate, channels) == (16000, 1)
    # 1 s at 16 kHz (but for the resampler's filter delay, under 2 ms, not yet out).
    assert 16000 - 32 <= frames <= 16000
    assert received.field("model") == "whisper-1"
    assert received.field("language") == "en"
    assert received.field("prompt") == "Names: Anouk."


async def test_turns_transcribed_in_parallel_are_reported_in_commit_order(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    arrived = 0

    async def slow_first(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        nonlocal arrived
        arrived += 1
        mine = arrived
        await asyncio.sleep(0.8 if mine == 1 else 0.0)
        return web.json_response({"text": f"turn {mine}"})

    upstream.respond = slow_first
    async with session(proxy, update=MANUAL) as client:
        for _ in range(3):
            await client.stream(tone(0.3))
            await client.send({"type": "input_audio_buffer.commit"})
        completed = await client.wait_for(f"{TRANSCRIPTION}.completed", count=3)
    assert [c["transcript"] for c in completed] == ["turn 1", "turn 2", "turn 3"]
    committed = client.of("input_audio_buffer.committed")
    assert [c["item_id"] for c in completed] == [c["item_id"] for c in committed]
    # Each turn's events come together: all of turn 1's before any of turn 2's.
    order = [e["item_id"] for e in client.events if e["type"].startswith(TRANSCRIPTION)]
    assert order == sorted(order, key=[c["item_id"] for c in committed].index)


async def test_server_vad_finds_turns_in_the_audio(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    async with session(proxy) as client:
        await client.stream(silence(1.0) + tone(1.2) + silence(1.0) + tone(0.8) + silence(1.0))
        started = await client.wait_for("input_audio_buffer.speech_started", count=2)
        stopped = await client.wait_for("input_audio_buffer.speech_stopped", count=2)
        committed = await client.wait_for("input_audio_buffer.committed", count=2)
        await client.wait_for(f"{TRANSCRIPTION}.completed", count=2)
    # Speech began at 1.0 s and 3.2 s: each turn starts 300 ms before (the prefix padding).
    starts = [s["audio_start_ms"] for s in started]
    assert starts == [pytest.approx(700, abs=40), pytest.approx(2900, abs=40)]
    # It stopped at 2.2 s and 4.0 s: each turn ends 500 ms later (the silence waited for).
    ends = [s["audio_end_ms"] for s in stopped]
    assert ends == [pytest.approx(2700, abs=40), pytest.approx(4500, abs=40)]
    assert [s["item_id"] for s in started] == [c["item_id"] for c in committed]
    assert len(upstream.requests) == 2
    _, _, frames = wav_of(upstream.requests[0])
    assert frames / 16000 == pytest.approx(2.0, abs=0.05)  # 0.3 + 1.2 + 0.5


async def test_a_long_turn_is_cut_at_its_quietest_point(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    # 40 s of speech with one quiet moment, 27 s in: the 30 s turn is cut there.
    speech = tone(27.0) + tone(0.2, amplitude=0.001) + tone(12.8)
    async with session(proxy, update=MANUAL) as client:
        await client.stream(speech, chunk_s=0.5)
        (first,) = await client.wait_for("input_audio_buffer.committed")
        await client.send({"type": "input_audio_buffer.commit"})
        await client.wait_for(f"{TRANSCRIPTION}.completed", count=2)
    assert first["previous_item_id"] is None
    lengths = [wav_of(r)[2] / 16000 for r in upstream.requests]
    assert lengths[0] == pytest.approx(27.1, abs=0.1)
    assert sum(lengths) == pytest.approx(40.0, abs=0.05)  # nothing lost, nothing doubled


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        ("not json", "invalid_json", None),
        ('{"type": "input_audio_buffer.append", "audio": "%%%"}', "invalid_audio", "audio"),
        ('{"type": "input_audio_buffer.append", "audio": "AAEC"}', "invalid_audio", "audio"),
        ('{"type": "response.create"}', "unknown_event_type", "type"),
        ('{"no": "type"}', "invalid_event", "type"),
        (
            '{"type": "session.update", "session": {"type": "transcription", '
            '"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}',
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            '{"type": "session.update", "session": {"type": "realtime"}}',
            "invalid_value",
            "session.type",
        ),
        (
            '{"type": "session.update", "session": {"type": "transcription", "audio": '
            '{"input": {"turn_detection": {"type": "semantic_vad"}}}}}',
            "invalid_value",
            "session.audio.input.turn_detection.type",
        ),
        ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty", None),
    ],
)
async def test_bad_client_events_get_an_error_and_the_session_goes_on(
    proxy: TestServer, frame: str, code: str, param: str | None
) -> None:
    async with session(proxy, update=MANUAL) as client:
        text = frame
        if frame.startswith("{") and '"type"' in frame:
            text = frame[:-1] + ', "event_id": "evt_mine"}'
        await client.ws.send_str(text)
        (error,) = await client.wait_for("error")
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["code"] == code
        assert error["error"]["param"] == param
        if "event_id" in text and code not in ("invalid_json", "invalid_event"):
            assert error["error"]["event_id"] == "evt_mine"
        # Still usable: a turn goes through.
        await client.stream(tone(0.5))
        await client.send({"type": "input_audio_buffer.commit"})
        await client.wait_for(f"{TRANSCRIPTION}.completed")


async def test_binary_frames_are_refused(proxy: TestServer) -> None:
    async with session(proxy) as client:
        await client.ws.send_bytes(b"\x00\x01")
        (error,) = await client.wait_for("error")
        assert error["error"]["code"] == "invalid_event"


async def test_clear_drops_the_turn_in_progress(proxy: TestServer, upstream: FakeUpstream) -> None:
    async with session(proxy, update=MANUAL) as client:
        await client.stream(tone(1.0))
        await client.send({"type": "input_audio_buffer.clear"})
        await client.wait_for("input_audio_buffer.cleared")
        await client.stream(tone(0.5))
        await client.send({"type": "input_audio_buffer.commit"})
        await client.wait_for(f"{TRANSCRIPTION}.completed")
    assert [wav_of(r)[2] for r in upstream.requests] == [8000]  # only what came after


async def test_an_upstream_failure_is_a_failed_event(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    async def refuse(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        return web.json_response(
            {"error": {"message": "bad audio", "type": "invalid_request_error", "code": "x"}},
            status=400,
        )

    upstream.respond = refuse
    async with session(proxy, update=MANUAL) as client:
        await client.stream(tone(0.5))
        await client.send({"type": "input_audio_buffer.commit"})
        (failed,) = await client.wait_for(f"{TRANSCRIPTION}.failed")
        assert failed["error"]["message"] == "bad audio"
        assert failed["item_id"] == client.of("input_audio_buffer.committed")[0]["item_id"]


async def test_audio_faster_than_it_can_be_transcribed_is_refused_not_buffered(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    release = asyncio.Event()

    async def stuck(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"text": "late"})

    upstream.respond = stuck
    proxy = await make_proxy(config(upstream, max_pending_turns=2))
    async with session(proxy, update=MANUAL) as client:
        for _ in range(3):
            await client.stream(tone(0.3))
            await client.send({"type": "input_audio_buffer.commit"})
        await client.wait_for("input_audio_buffer.committed", count=2)
        await client.send(append(tone(0.3)))
        (error,) = await client.wait_for("error")
        assert error["error"]["code"] == "input_audio_buffer_full"
        release.set()
        await client.wait_for(f"{TRANSCRIPTION}.completed", count=2)
        # Caught up: appends are taken again.
        await client.stream(tone(0.3))
        await client.send({"type": "input_audio_buffer.commit"})
        await client.wait_for(f"{TRANSCRIPTION}.completed", count=3)


async def test_a_client_gone_mid_turn_cancels_its_upstream_requests(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    hold = asyncio.Event()
    hung_up = asyncio.Event()

    async def slow(request: web.Request, received: ReceivedRequest) -> web.StreamResponse:
        hold.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:  # the proxy hung up
            hung_up.set()
            raise
        return web.json_response({"text": "never"})

    upstream.respond = slow
    async with session(proxy, update=MANUAL) as client:
        await client.stream(tone(0.5))
        await client.send({"type": "input_audio_buffer.commit"})
        await hold.wait()
    # The upstream's request is abandoned with the session.
    async with asyncio.timeout(10):
        await hung_up.wait()
    tasks = {t for t in asyncio.all_tasks() if "realtime" in repr(t.get_coro())}
    assert not tasks


async def test_a_plain_get_is_not_a_session(proxy: TestServer) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base_url(proxy)}{PATH}") as response,
    ):
        assert response.status == 400
        body = await response.json()
    assert body["error"]["code"] == "websocket_required"


async def test_only_transcription_intent_is_served(proxy: TestServer) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with session(proxy, path="/v1/realtime?intent=conversation"):
            pass
    assert refused.value.status == 400


async def test_the_realtime_subprotocol_is_answered(proxy: TestServer) -> None:
    async with session(proxy, protocols=("openai-beta.realtime-v1",)) as client:
        assert client.ws.protocol == "openai-beta.realtime-v1"


async def test_the_openai_sdk_realtime_client_transcribes_through_the_proxy(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    async with (
        openai.AsyncOpenAI(
            base_url=f"{base_url(proxy)}/v1", api_key="sk-anything", max_retries=0
        ) as sdk,
        sdk.realtime.connect(extra_query={"intent": "transcription"}) as connection,
    ):
        await connection.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "transcription": {"model": "whisper-1"},
                        "turn_detection": None,
                    }
                },
            }
        )
        await connection.input_audio_buffer.append(audio=base64.b64encode(tone(1.0)).decode())
        await connection.input_audio_buffer.commit()
        seen = []
        async for event in connection:
            seen.append(event.type)
            if isinstance(event, ConversationItemInputAudioTranscriptionCompletedEvent):
                assert event.transcript == f"heard {upstream.requests[0].file.size} bytes"
                break
    assert seen[:3] == ["session.created", "session.updated", "input_audio_buffer.committed"]
    assert len(upstream.requests) == 1


async def test_shutdown_drains_a_session_with_its_turn_in_progress(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = config_for_process(upstream)
    process, url = await start_proxy_process(config, tmp_path)
    try:
        async with session(url, update=MANUAL) as client:
            await client.stream(tone(1.0))
            process.send_signal(signal.SIGTERM)
            (error,) = await client.wait_for("error")
            assert error["error"]["code"] == "server_restarting"
            await client.closed.wait()
            assert client.ws.close_code == 1012
            # Before the close: the turn in progress, committed and transcribed.
            assert client.types()[-2:] == [f"{TRANSCRIPTION}.delta", f"{TRANSCRIPTION}.completed"]
            assert "input_audio_buffer.committed" in client.types()
    finally:
        await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0


def config_for_process(upstream: FakeUpstream) -> dict[str, Any]:
    raw = config(upstream)
    raw["proxy"]["drain_timeout_s"] = 1
    return raw


async def test_empty_and_tiny_appends_are_taken_and_counted(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    async with session(proxy, update=MANUAL) as client:
        await client.send(append(b""))
        for _ in range(10):
            await client.send(append(tone(0.001)))  # 24 samples each
        await client.stream(tone(0.5))
        await client.send({"type": "input_audio_buffer.commit"})
        await client.wait_for(f"{TRANSCRIPTION}.completed")
        assert client.of("error") == []


async def test_a_language_that_is_no_code_is_refused(proxy: TestServer) -> None:
    async with session(proxy) as client:
        await client.send({"type": "session.update", "session": transcription(language="english")})
        (error,) = await client.wait_for("error")
    assert error["error"]["param"] == "session.audio.input.transcription.language"


async def test_a_beta_client_is_answered_in_the_beta_shape_from_the_start(
    proxy: TestServer,
) -> None:
    async with session(proxy, protocols=("openai-beta.realtime-v1",)) as client:
        created = client.events[0]
        assert created["type"] == "transcription_session.created"
        assert created["session"]["input_audio_format"] == "pcm16"


async def test_an_append_longer_than_a_turn_is_cut_into_turns(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    async with session(proxy, update=MANUAL) as client:
        await client.send(append(tone(40.0)))  # one append (2.6 MB of base64), 40 s
        await client.send({"type": "input_audio_buffer.commit"})
        await client.wait_for(f"{TRANSCRIPTION}.completed", count=2)
    lengths = [wav_of(r)[2] / 16000 for r in upstream.requests]
    assert all(length <= 30.0 for length in lengths), lengths
    assert sum(lengths) == pytest.approx(40.0, abs=0.05)


async def test_a_session_on_an_azure_deployment_stays_on_azure(
    make_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    key = {
        "value": "azure-secret-key",
        "azure_key_config": {
            "endpoint": upstream.base_url,
            "deployments": {"whisper-1": "my-whisper"},
        },
    }
    server = await make_proxy(
        {
            "providers": {"azure": {"keys": [key], "realtime": False}},
            "proxy": {"realtime": {"vad": "loudness"}},
        }
    )
    path = "/openai/realtime?api-version=x&intent=transcription&deployment=whisper-1"
    async with session(server, path=path) as client:
        # Changing the language keeps the deployment, and the provider.
        update = transcription("whisper-1", turn_detection=None, language="nl")
        await client.send({"type": "session.update", "session": update})
        await client.wait_for("session.updated")
        await client.stream(tone(0.5))
        await client.send({"type": "input_audio_buffer.commit"})
        await client.wait_for(f"{TRANSCRIPTION}.completed")
    assert upstream.last.path == "/openai/deployments/my-whisper/audio/transcriptions"
    assert upstream.last.field("language") == "nl"


async def test_a_draining_server_sends_new_sessions_elsewhere(proxy: TestServer) -> None:
    # A balancer's kept-alive connection can still bring an upgrade after the
    # listening socket has closed: a session outlives the drain, so it is refused.
    await start_draining(proxy.app)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with session(proxy):
            pass
    assert refused.value.status == 503
    assert refused.value.headers is not None
    assert refused.value.headers["Retry-After"] == "0"


# --- clients that find turns themselves ---------------------------------------------------------


async def test_a_client_commit_just_after_the_servers_is_taken_without_an_error(
    proxy: TestServer, upstream: FakeUpstream
) -> None:
    # The client's own detector hears the speech stop after server_vad did, and commits
    # the turn the server already committed: no error (LiveKit ends the session on one).
    async with session(proxy) as client:
        await client.stream(tone(1.0) + silence(1.0))
        await client.wait_for("input_audio_buffer.committed")
        await client.send({"type": "input_audio_buffer.commit", "event_id": "late"})
        await client.send({"type": "input_audio_buffer.commit", "event_id": "again"})
        (error,) = await client.wait_for("error")
        await client.wait_for(f"{TRANSCRIPTION}.completed")
        await client.stream(tone(1.0) + silence(1.0))
        await client.wait_for(f"{TRANSCRIPTION}.completed", count=2)
    # Only the second commit, with nothing since the first, is an empty one.
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["error"]["event_id"] == "again"
    assert len(client.of("error")) == 1
    assert len(client.of("input_audio_buffer.committed")) == 2
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("model", ["gpt-realtime-whisper", "openai/gpt-live-transcribe"])
async def test_a_client_commit_model_without_turn_detection_waits_for_the_clients_commits(
    proxy: TestServer, upstream: FakeUpstream, model: str
) -> None:
    update = {"type": "transcription", "audio": {"input": {"transcription": {"model": model}}}}
    async with session(proxy, update=update) as client:
        (updated,) = client.of("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await client.stream(tone(1.0) + silence(1.0) + tone(0.5))
        await client.send({"type": "input_audio_buffer.commit"})
        (completed,) = await client.wait_for(f"{TRANSCRIPTION}.completed")
    assert "input_audio_buffer.speech_started" not in client.types()
    assert "error" not in client.types()
    assert completed["transcript"]
    # One turn of all 2.5 s (the resampler holds back its last few samples).
    assert [wav_of(r)[2] for r in upstream.requests] == [pytest.approx(40_000, abs=32)]


async def test_turn_detection_the_client_chose_stays_whatever_the_model(
    proxy: TestServer,
) -> None:
    async with session(proxy, update=transcription("gpt-realtime-whisper")) as client:
        (updated,) = client.of("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        # A model change later keeps what the client chose, and off stays off.
        await client.send({"type": "session.update", "session": MANUAL})
        await client.wait_for("session.updated", count=2)
        switch = {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "whisper-1"}}},
        }
        await client.send({"type": "session.update", "session": switch})
        updates = await client.wait_for("session.updated", count=3)
    assert updates[-1]["session"]["audio"]["input"]["turn_detection"] is None


# --- what is logged of a session ---------------------------------------------------------------


def access_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The access log's line of the one realtime session served."""
    (record,) = [
        r
        for r in caplog.records
        if r.name == "proxy.access" and r.__dict__["route"] == "/v1/realtime"
    ]
    return record.__dict__


async def test_a_sessions_access_line_says_what_it_was_and_how_it_ended(
    proxy: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    async with session(proxy, update=transcription("gpt-4o-transcribe")) as client:
        await client.stream(tone(1.0) + silence(1.0) + tone(1.0) + silence(1.0))
        await client.wait_for(f"{TRANSCRIPTION}.completed", count=2)
    await eventually(lambda: [r for r in caplog.records if r.name == "proxy.access"])
    line = access_line(caplog)
    assert line["status"] == 101
    assert line["close_code"] == 1000
    assert line["model"] == "gpt-4o-transcribe"  # the session's, not the URL's default
    assert line["bytes_in"] == 4 * 48_000  # 4 s of 24 kHz PCM as the client sent it
    assert line["audio_seconds"] == pytest.approx(4.0)
    assert line["turns"] == 2


async def test_a_client_that_vanishes_ends_its_session_without_leaving_a_task(
    proxy: TestServer, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    hold = asyncio.Event()
    upstream.respond = hanging(60, reached=hold)
    async with session(proxy, update=MANUAL) as client:
        await client.stream(tone(0.5))
        await client.send({"type": "input_audio_buffer.commit"})
        await hold.wait()
        # No close frame: the connection just goes.
        transport = client.ws._response.connection.transport  # type: ignore[union-attr]
        assert transport is not None
        transport.abort()
    await eventually(lambda: [r for r in caplog.records if r.name == "proxy.access"])
    line = access_line(caplog)
    assert line["status"] == 101
    assert line["close_code"] == 1006
    assert line["turns"] == 1
    gc.collect()
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
    assert not {t for t in asyncio.all_tasks() if "realtime" in repr(t.get_coro())}
