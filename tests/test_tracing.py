"""Tracing: the proxy as a real server sending its spans over OTLP/HTTP to a real receiver
(:mod:`tests.helpers.otlp`), in front of the recording fake upstream.

Each test's proxy sends its batches every 20 ms, and the receiver is waited on until a
request's spans are all there.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

pytest.importorskip("opentelemetry.sdk", reason="the tracing extra is not installed")

from tests.helpers.client import URL, ProxyFactory, base_url, form, post
from tests.helpers.metrics import scrape, value
from tests.helpers.otlp import OtlpReceiver, ReceivedSpan, in_trace, tree
from tests.helpers.processes import free_port
from tests.helpers.realtime import session, tone, transcription
from tests.helpers.upstream import (
    UPSTREAM_KEY,
    FakeUpstream,
    failing,
    hanging,
    openai_events,
    provider_config,
    streaming,
    two_providers,
)
from tests.test_log_api import api, request_id_of

#: The client's trace: its id, and its own span that the proxy's continues.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
VK = "sk-bf-team-a-0123456789"


@pytest.fixture
async def receiver(aiohttp_server: Any) -> OtlpReceiver:
    collector = OtlpReceiver()
    collector.server = await aiohttp_server(collector.app)
    return collector


def traced(config: dict[str, Any], endpoint: str, **tracing: Any) -> dict[str, Any]:
    """``config`` with its spans sent to ``endpoint`` every 20 ms."""
    proxy = config.setdefault("proxy", {})
    proxy["tracing"] = {"otlp_endpoint": endpoint, "schedule_delay_ms": 20, **tracing}
    return config


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    (found,) = [s for s in spans if s.name == name]
    return found


def tries(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """The upstream tries (client spans), in the order they began."""
    return [s for s in spans if s.kind == "client"]


def parent_of(traceparent: str) -> tuple[str, str]:
    """A sampled traceparent's trace id and parent span id (a new trace's also says its id
    is random: W3C's level 2 flag)."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00"
    assert int(flags, 16) & 1
    return trace_id, span_id


async def transcribe(
    server: TestServer, headers: dict[str, str] | CIMultiDict[str] | None = None, **fields: str
) -> tuple[int, dict[str, Any], str]:
    """A small transcription: its status, answer and request id."""
    parts: list[tuple[str, str | bytes]] = [
        ("model", "whisper-1"),
        *fields.items(),
        ("file", b"RIFF" + b"\1" * 2000),
    ]
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{base_url(server)}{URL}", data=form(*parts), headers=headers) as response,
    ):
        return response.status, await response.json(), request_id_of(dict(response.headers))


async def test_a_request_continues_the_clients_trace_to_the_upstream(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    server = await make_proxy(traced(provider_config(upstream), receiver.endpoint))
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc,other=1"}
    status, _, request_id = await transcribe(server, headers)
    assert status == 200
    spans = await receiver.trace_of(request_id, 3)
    shape = [line.partition(" (")[0] for line in tree(spans).splitlines()]
    assert shape == ["transcription", "  form.read", "  transcription whisper-1"]
    request = one(spans, "transcription")
    assert (request.trace_id, request.parent_span_id, request.kind) == (
        TRACE_ID,
        CLIENT_SPAN,
        "server",
    )
    reading = one(spans, "form.read")
    (attempt,) = tries(spans)
    assert attempt.name == "transcription whisper-1"
    assert reading.parent_span_id == attempt.parent_span_id == request.span_id
    assert request.start_ns <= reading.start_ns <= reading.end_ns <= attempt.start_ns
    assert attempt.end_ns <= request.end_ns
    assert request.resource["service.name"] == "transcription-proxy"
    # The upstream's request is a child of the try, in the client's trace, with its state.
    sent = upstream.last.headers
    assert parent_of(sent["traceparent"]) == (TRACE_ID, attempt.span_id)
    assert sent["tracestate"] == "vendor=abc,other=1"
    assert request.attributes == {
        "gen_ai.operation.name": "transcription",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "whisper-1",
        "gen_ai.response.model": "whisper-1",
        "http.response.status_code": 200,
        "proxy.request_id": request_id,
        "proxy.audio.bytes_in": 2004,
        "proxy.audio.seconds": 2.0,  # the fake upstream's usage
        "proxy.audio.seconds_source": "answer",
    }
    assert attempt.attributes == {
        "gen_ai.operation.name": "transcription",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "whisper-1",
        "gen_ai.response.model": "whisper-1",
        "http.response.status_code": 200,
    }
    assert [s.status for s in spans] == ["unset"] * 3
    assert request.events == []  # said for streams only


async def test_a_fallback_is_two_tries_the_first_in_error(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    backup: FakeUpstream,
    receiver: OtlpReceiver,
) -> None:
    upstream.respond = failing(503)
    server = await make_proxy(traced(two_providers(upstream, backup), receiver.endpoint))
    status, body, request_id = await transcribe(
        server, {"traceparent": TRACEPARENT}, **{"fallbacks[]": "backup/whisper-1"}
    )
    assert status == 200, body
    spans = await receiver.trace_of(request_id, 4)
    failed, answered = tries(spans)
    assert (failed.status, failed.status_message) == ("error", "upstream_error")
    assert failed.attributes["gen_ai.provider.name"] == "openai"
    assert failed.attributes["http.response.status_code"] == 503
    assert failed.attributes["error.type"] == "upstream_error"
    assert "gen_ai.response.model" not in failed.attributes
    assert answered.status == "unset"
    assert answered.attributes["gen_ai.provider.name"] == "backup"
    assert answered.attributes["proxy.attempt.fallback"] == 1
    assert failed.end_ns <= answered.start_ns
    # Each upstream heard of its own try.
    assert parent_of(upstream.last.headers["traceparent"]) == (TRACE_ID, failed.span_id)
    assert parent_of(backup.last.headers["traceparent"]) == (TRACE_ID, answered.span_id)
    request = one(spans, "transcription")
    assert request.status == "unset"
    assert request.attributes["gen_ai.provider.name"] == "backup"


async def test_a_failure_is_in_error_and_a_refusal_is_not(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    upstream.respond = failing(503)
    server = await make_proxy(traced(provider_config(upstream), receiver.endpoint))
    status, _, request_id = await transcribe(server)
    assert status == 503
    spans = await receiver.trace_of(request_id, 3)
    request, (attempt,) = one(spans, "transcription"), tries(spans)
    assert (request.status, request.status_message) == ("error", "upstream_error")
    assert request.attributes["error.type"] == "upstream_error"
    assert request.attributes["http.response.status_code"] == 503
    assert attempt.status == "error"
    # A request refused for what the client sent: the server did not fail (OpenTelemetry's
    # HTTP conventions), though the span says why.
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{base_url(server)}{URL}", data=form(("model", "whisper-1"))) as response,
    ):
        assert response.status == 400
        request_id = request_id_of(dict(response.headers))
    spans = await receiver.trace_of(request_id, 2)
    refused = one(spans, "transcription")
    assert refused.status == "unset"
    assert refused.attributes["error.type"] == "missing_required_field"
    assert refused.attributes["http.response.status_code"] == 400
    assert tries(spans) == []


async def test_a_try_cut_off_by_the_client_leaving_ends_with_the_request(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    reached = asyncio.Event()
    upstream.respond = hanging(30, reached=reached)
    server = await make_proxy(traced(provider_config(upstream), receiver.endpoint))
    sending = asyncio.ensure_future(transcribe(server))
    await reached.wait()
    sending.cancel()  # the client hangs up while the upstream is transcribing
    spans = await receiver.wait_for(lambda spans: len(spans) >= 3)
    request, (attempt,) = one(spans, "transcription"), tries(spans)
    assert request.attributes["http.response.status_code"] == 499
    assert request.status == "unset"  # the client's doing, not a failure of the proxy
    assert attempt.attributes["proxy.attempt.abandoned"] is True
    assert attempt.parent_span_id == request.span_id
    assert attempt.end_ns <= request.end_ns


async def test_a_stream_says_when_it_began_and_the_tokens_it_used(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    upstream.respond = streaming(openai_events(["Hello", " world"]))
    server = await make_proxy(traced(provider_config(upstream), receiver.endpoint))
    parts: list[tuple[str, str | bytes]] = [
        ("model", "gpt-4o-transcribe"),
        ("stream", "true"),
        ("file", b"RIFF"),
    ]
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{base_url(server)}{URL}", data=form(*parts)) as response,
    ):
        assert response.status == 200
        assert b"Hello" in await response.read()
        request_id = request_id_of(dict(response.headers))
    spans = await receiver.trace_of(request_id, 3)
    request = one(spans, "transcription")
    assert request.events == ["proxy.first_event"]
    assert request.attributes["proxy.stream"] is True
    assert request.attributes["gen_ai.usage.input_tokens"] == 7
    assert request.attributes["gen_ai.usage.output_tokens"] == 3
    values = [str(v) for s in spans for v in s.attributes.values()]
    assert not any("Hello" in value or "world" in value for value in values)


async def test_a_cache_hit_has_a_lookup_and_no_try(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    server = await make_proxy(traced(provider_config(upstream), receiver.endpoint))
    cached = {"x-bf-cache-key": "tenant-1"}
    assert (await transcribe(server, cached))[0] == 200
    status, _, request_id = await transcribe(server, cached)
    assert status == 200
    assert len(upstream.requests) == 1
    spans = await receiver.trace_of(request_id, 3)
    assert sorted(s.name for s in spans) == ["cache.lookup", "form.read", "transcription"]
    assert tries(spans) == []
    request = one(spans, "transcription")
    lookup = one(spans, "cache.lookup")
    assert lookup.parent_span_id == request.span_id
    assert one(spans, "form.read").end_ns <= lookup.start_ns
    assert request.attributes["proxy.cache.hit"] is True
    assert "proxy.audio.seconds" not in request.attributes  # a hit costs no audio


async def test_a_long_recording_has_a_span_per_chunk(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    spoken = pytest.importorskip("tests.helpers.spoken", reason="PyAV is not installed")
    upstream.keep_files = True
    upstream.respond = spoken.listening
    config = traced(provider_config(upstream), receiver.endpoint)
    config["providers"]["openai"]["max_upload_mb"] = 0.2
    config["proxy"]["chunking"] = {"max_chunk_s": 4, "cut_search_s": 0.5}
    server = await make_proxy(config)
    status, body, headers = await post(
        server, form(("model", "whisper-1"), ("file", spoken.encode(20, "wav")))
    )
    assert status == 200, body
    chunks = body["extra_fields"]["audio_chunks"]
    assert chunks == len(upstream.requests) >= 5
    spans = await receiver.trace_of(request_id_of(headers), 2 + chunks)
    request = one(spans, "transcription")
    assert request.attributes["proxy.audio.chunks"] == chunks
    per_chunk = tries(spans)
    assert sorted(s.attributes["proxy.chunk.index"] for s in per_chunk) == list(range(chunks))
    assert all(s.parent_span_id == request.span_id for s in per_chunk)
    first = min(per_chunk, key=lambda s: s.attributes["proxy.chunk.index"])
    assert first.attributes["proxy.chunk.start_s"] == 0.0
    assert 0 < first.attributes["proxy.chunk.end_s"] <= 4.0
    # Each chunk's upstream request is a child of its own span.
    parents = {parent_of(r.headers["traceparent"])[1] for r in upstream.requests}
    assert parents == {s.span_id for s in per_chunk}


async def test_a_realtime_session_is_a_span_with_a_child_per_turn(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    config = traced(provider_config(upstream), receiver.endpoint)
    config["proxy"]["realtime"] = {"vad": "loudness"}
    server = await make_proxy(config)
    update = transcription(turn_detection=None)
    async with session(server, update=update, headers={"traceparent": TRACEPARENT}) as client:
        for count in (1, 2):
            await client.stream(tone(0.5))
            await client.send({"type": "input_audio_buffer.commit"})
            await client.wait_for(
                "conversation.item.input_audio_transcription.completed", count=count
            )

    def whole(spans: list[ReceivedSpan]) -> bool:
        return any(s.name == "realtime.session" for s in spans) and len(spans) >= 5

    spans = in_trace(await receiver.wait_for(whole), TRACE_ID)
    sessions = [s for s in spans if s.name == "realtime.session"]
    (opened,) = sessions
    assert (opened.kind, opened.parent_span_id) == ("server", CLIENT_SPAN)
    turns = [s for s in spans if s.name == "realtime.turn"]
    assert len(turns) == 2
    assert all(t.kind == "internal" and t.parent_span_id == opened.span_id for t in turns)
    session_id = opened.attributes["proxy.request_id"]
    assert all(t.attributes["proxy.parent_request_id"] == session_id for t in turns)
    # Each turn went upstream as a try of its own, which the upstream heard of.
    turn_ids = {t.span_id for t in turns}
    assert {s.parent_span_id for s in tries(spans)} == turn_ids
    assert len(tries(spans)) == 2
    heard = {parent_of(r.headers["traceparent"]) for r in upstream.requests}
    assert heard == {(TRACE_ID, s.span_id) for s in tries(spans)}
    assert all(opened.start_ns <= t.start_ns and t.end_ns <= opened.end_ns for t in turns)


async def test_attributes_carry_no_key_audio_or_transcript(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    config = traced(provider_config(upstream), receiver.endpoint)
    config["governance"] = {
        "virtual_keys": [
            {"id": "team-a", "value": VK, "provider_configs": [{"provider": "openai"}]}
        ]
    }
    server = await make_proxy(config)
    status, body, request_id = await transcribe(server, {"x-bf-vk": VK}, language="en")
    assert status == 200
    spans = await receiver.trace_of(request_id, 3)
    assert one(spans, "transcription").attributes["proxy.virtual_key.id"] == "team-a"
    values = [str(v) for s in spans for v in (*s.attributes.values(), s.name, s.status_message)]
    for secret in (VK, UPSTREAM_KEY, body["text"], "RIFF"):
        assert not any(secret in value for value in values), secret


async def test_with_logs_content_the_transcript_is_in_the_span(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    config = traced(provider_config(upstream), receiver.endpoint)
    config["logs"] = {"content": True}
    server = await make_proxy(config)
    status, body, request_id = await transcribe(server)
    assert status == 200
    spans = await receiver.trace_of(request_id, 3)
    assert one(spans, "transcription").attributes["proxy.transcript"] == body["text"]


async def test_a_malformed_traceparent_starts_a_new_trace(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    server = await make_proxy(traced(provider_config(upstream), receiver.endpoint))
    for malformed in (
        f"00-{TRACE_ID}-{CLIENT_SPAN}",  # no flags
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # the invalid trace id
        f"00-{TRACE_ID.upper()}-{CLIENT_SPAN}-01",  # upper case hex
        f"00-{TRACE_ID}-{CLIENT_SPAN}-01-extra",  # version 00 has nothing after the flags
        "x" * 600,
    ):
        status, _, request_id = await transcribe(server, {"traceparent": malformed})
        assert status == 200
        spans = await receiver.trace_of(request_id, 3)
        request = one(spans, "transcription")
        assert request.trace_id != TRACE_ID
        assert request.parent_span_id is None
        (attempt,) = tries(spans)
        assert parent_of(upstream.last.headers["traceparent"]) == (
            request.trace_id,
            attempt.span_id,
        )


async def test_a_tracestate_past_the_w3c_limits_is_not_passed_on(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    server = await make_proxy(traced(provider_config(upstream), receiver.endpoint))
    # 32 members is the most W3C allows; 33 is dropped whole.
    most = ",".join(f"k{i}=v{i}" for i in range(32))
    too_many = ",".join(f"k{i}=v{i}" for i in range(33))
    # Two fields of 16 members each, 9.6 KB together: past 8192 characters.
    long_value = "v" * 256
    half = ",".join(f"k{i}={long_value}" for i in range(16))
    other_half = ",".join(f"j{i}={long_value}" for i in range(16))
    too_long = CIMultiDict([("traceparent", TRACEPARENT), ("tracestate", half)])
    too_long.add("tracestate", other_half)
    for headers, passed in (
        ({"traceparent": TRACEPARENT, "tracestate": most}, most),
        ({"traceparent": TRACEPARENT, "tracestate": too_many}, None),
        (too_long, None),
        ({"traceparent": TRACEPARENT, "tracestate": "bad key=1,ok=2"}, None),
    ):
        status, _, _ = await transcribe(server, headers)
        assert status == 200
        sent = upstream.last.headers
        # The trace goes on either way; only its state is left behind.
        assert parent_of(sent["traceparent"])[0] == TRACE_ID
        assert sent.get("tracestate") == passed


async def test_an_unreachable_collector_costs_requests_nothing(
    make_proxy: ProxyFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK's own setting: each export gives up after a second (retries included).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    nowhere = f"http://127.0.0.1:{free_port()}"
    server = await make_proxy(traced(provider_config(upstream), nowhere))
    loop = asyncio.get_running_loop()
    began = loop.time()
    for _ in range(10):
        assert (await transcribe(server))[0] == 200
    assert loop.time() - began < 2.0
    for _ in range(200):
        dropped = value(await scrape(server), "proxy_spans_dropped_total")
        if dropped >= 30:  # three spans a request
            break
        await asyncio.sleep(0.05)
    assert dropped >= 30


async def test_a_refusing_collector_counts_what_it_refused(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    receiver: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    receiver.status = 400  # not retried: the batch is dropped at once
    server = await make_proxy(traced(provider_config(upstream), receiver.endpoint))
    assert (await transcribe(server))[0] == 200
    for _ in range(200):
        if value(await scrape(server), "proxy_spans_dropped_total") >= 3:
            break
        await asyncio.sleep(0.05)
    assert value(await scrape(server), "proxy_spans_dropped_total") == 3
    assert receiver.spans == []


async def test_the_last_spans_are_sent_at_shutdown(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    # Batches would wait a minute: shutting down sends what is waiting.
    config = traced(provider_config(upstream), receiver.endpoint, schedule_delay_ms=60_000)
    server = await make_proxy(config)
    status, _, request_id = await transcribe(server)
    assert status == 200
    assert receiver.spans == []
    await server.close()
    spans = await receiver.trace_of(request_id, 3)
    assert sorted(s.name for s in spans) == [
        "form.read",
        "transcription",
        "transcription whisper-1",
    ]


async def test_a_hanging_collector_holds_the_shutdown_for_a_bounded_time(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    receiver: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("proxy.tracing_setup.SHUTDOWN_TIMEOUT_S", 0.5)
    receiver.answering.clear()
    config = traced(provider_config(upstream), receiver.endpoint, schedule_delay_ms=60_000)
    server = await make_proxy(config)
    assert (await transcribe(server))[0] == 200
    loop = asyncio.get_running_loop()
    began = loop.time()
    await server.close()  # its last batch is posted, and never answered
    assert loop.time() - began < 2.0
    assert receiver.posts == 1
    receiver.answering.set()


async def test_the_trace_id_is_in_the_access_log_and_the_request_log(
    make_proxy: ProxyFactory,
    upstream: FakeUpstream,
    receiver: OtlpReceiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = traced(provider_config(upstream), receiver.endpoint)
    config["proxy"]["data_dir"] = str(tmp_path)
    config["logs"] = {"flush_interval_ms": 20}
    server = await make_proxy(config)
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        status, _, request_id = await transcribe(server, {"traceparent": TRACEPARENT})
        assert status == 200
        for _ in range(100):
            lines = [r for r in caplog.records if r.name == "proxy.access"]
            if lines:
                break
            await asyncio.sleep(0.01)
    (line,) = lines
    assert line.__dict__["trace_id"] == TRACE_ID
    row = await _row(server, request_id)
    assert row["trace_id"] == TRACE_ID


async def test_tracing_off_sends_nothing_and_has_no_plugin(
    make_proxy: ProxyFactory, upstream: FakeUpstream, receiver: OtlpReceiver
) -> None:
    from proxy.app import TRACING_KEY

    server = await make_proxy(provider_config(upstream))
    assert TRACING_KEY not in server.app
    status, _, _ = await transcribe(server, {"traceparent": TRACEPARENT})
    assert status == 200
    # The upstream gets the headers the proxy makes, and none of the client's.
    assert "traceparent" not in upstream.last.headers
    await server.close()
    assert receiver.posts == 0


OFF_SCRIPT = """
import asyncio, sys
from aiohttp import ClientSession, FormData
from aiohttp.test_utils import TestServer
from proxy.app import create_app
from proxy.config import parse_config
from tests.helpers.providers import ScriptedProvider

async def main():
    provider = ScriptedProvider("scripted")
    app = create_app(parse_config({}, {}), providers={"scripted": provider})
    async with TestServer(app) as server, ClientSession() as client:
        form = FormData()
        form.add_field("model", "scripted/whisper-1")
        form.add_field("file", b"RIFF", filename="a.wav")
        async with client.post(server.make_url("/v1/audio/transcriptions"), data=form,
                               headers={"traceparent": %r}) as response:
            assert response.status == 200, await response.text()
    print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))

asyncio.run(main())
"""


async def test_tracing_off_imports_nothing_of_opentelemetry(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OFF_SCRIPT % TRACEPARENT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "PROXY_DATA_DIR": str(tmp_path)},
        cwd=Path(__file__).parent.parent,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == "[]"


async def _row(server: TestServer, request_id: str) -> dict[str, Any]:
    """The request's row in the request log, once the writer has written it."""
    for _ in range(200):
        status, row = await api(server, f"/api/logs/{request_id}", None)
        if status == 200:
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"no row for {request_id}")
