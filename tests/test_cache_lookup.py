"""The cache's lookup protocol, asked in order, without sockets; then through the app with
providers handed in (``create_app(config, providers=...)``), no fake upstream server."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.audio.sources import BufferedAudio, LiveAudio
from proxy.cache.lookup import CacheHit
from proxy.cache.stores import MemoryStore
from proxy.cache.transcripts import CacheRequest, TranscriptCache
from proxy.config import CacheSettings, VirtualKeyConfig, parse_config
from proxy.errors import InvalidRequestError
from proxy.form import TranscriptionForm
from proxy.governance.credentials import ANONYMOUS, Caller
from proxy.metrics import Metrics
from proxy.models import FormField, RequestFacts, TranscriptDone
from proxy.router import Route
from tests.helpers.client import form, post
from tests.helpers.providers import ScriptedProvider

AUDIO = b"RIFF" + b"a" * 100
SHA = hashlib.sha256(AUDIO).hexdigest()
VERBOSE = TranscriptDone(
    raw=b"",
    document={
        "text": "hello there",
        "segments": [{"id": 0, "start": 0.0, "end": 1.5, "text": "hello there"}],
        "duration": 1.5,
    },
)


def cache() -> TranscriptCache:
    return TranscriptCache(CacheSettings(), MemoryStore(1 << 20), Metrics())


def route(model: str = "whisper-1") -> Route:
    return Route(ScriptedProvider("openai"), model, model)


def whole_form(*fields: tuple[str, str], audio: bytes = AUDIO) -> TranscriptionForm:
    """A form whose file arrived whole (and was hashed as it was read)."""
    return TranscriptionForm(
        fields=[FormField(name, value) for name, value in fields],
        audio=BufferedAudio(audio, filename="a.wav", content_type="audio/wav"),
        audio_sha256=hashlib.sha256(audio).hexdigest(),
    )


def live_form(*fields: tuple[str, str], trailing: Sequence[FormField] = ()) -> TranscriptionForm:
    """A form whose file is still arriving: its digest is known once it has been read."""
    the_form = TranscriptionForm(fields=[FormField(name, value) for name, value in fields])

    async def client() -> AsyncGenerator[bytes, None]:
        yield AUDIO[:50]
        yield AUDIO[50:]
        the_form.audio_sha256 = SHA  # as the form reader says once the file is whole

    the_form.audio = LiveAudio(
        client(), filename="a.wav", content_type="audio/wav", trailing_fields=trailing
    )
    return the_form


REQUEST = CacheRequest(key="meeting", ttl_s=60, no_store=False)


async def stored(the_cache: TranscriptCache, done: TranscriptDone, **fields: str) -> None:
    """``done`` stored as the answer to AUDIO with ``fields``."""
    lookup = the_cache.lookup(REQUEST, ANONYMOUS, route())
    await lookup.save(done, whole_form(*fields.items()), RequestFacts(started=0.0))


async def test_a_whole_file_is_found_before_sending_in_another_format() -> None:
    the_cache = cache()
    lookup = the_cache.lookup(REQUEST, ANONYMOUS, route())
    assert await lookup.before_sending(whole_form(("response_format", "verbose_json"))) is None
    await stored(the_cache, VERBOSE, response_format="verbose_json")
    again = the_cache.lookup(REQUEST, ANONYMOUS, route())
    hit = await again.before_sending(whole_form(("response_format", "srt")))
    assert hit is not None
    entry, done = hit
    assert done.text == "1\n00:00:00,000 --> 00:00:01,500\nhello there\n\n"
    assert again.debug(entry) == {
        "cache_hit": True,
        "cache_id": again.cache_id,
        "hit_type": "direct",
        "requested_provider": "openai",
        "requested_model": "whisper-1",
        "provider_used": "openai",
        "model_used": "whisper-1",
    }


@pytest.mark.parametrize(
    ("changed", "why"),
    [
        ({"language": "de"}, "a field that changes the answer"),
        ({"x_custom": "1"}, "a pass-through field"),
    ],
)
async def test_what_changes_the_answer_changes_the_key(changed: dict[str, str], why: str) -> None:
    the_cache = cache()
    await stored(the_cache, VERBOSE, language="en")
    lookup = the_cache.lookup(REQUEST, ANONYMOUS, route())
    assert await lookup.before_sending(whole_form(*{"language": "en", **changed}.items())) is None


async def test_what_only_frames_the_answer_does_not_change_the_key() -> None:
    the_cache = cache()
    await stored(the_cache, VERBOSE, language="en")
    lookup = the_cache.lookup(REQUEST, ANONYMOUS, route())
    framed = whole_form(("language", "en"), ("stream", "true"), ("response_format", "text"))
    assert await lookup.before_sending(framed) is not None


async def test_one_tenant_never_reads_another_s() -> None:
    the_cache = cache()
    team_a = Caller("virtual_key", virtual_key=VirtualKeyConfig(id="a", value="sk-bf-a"))
    team_b = Caller("virtual_key", virtual_key=VirtualKeyConfig(id="b", value="sk-bf-b"))
    await the_cache.lookup(REQUEST, team_a, route()).save(
        VERBOSE, whole_form(), RequestFacts(started=0.0)
    )
    assert await the_cache.lookup(REQUEST, team_b, route()).before_sending(whole_form()) is None
    assert await the_cache.lookup(REQUEST, team_a, route()).before_sending(whole_form()) is not None


async def test_no_store_reads_but_never_writes() -> None:
    the_cache = cache()
    no_store = CacheRequest(key="meeting", ttl_s=60, no_store=True)
    await the_cache.lookup(no_store, ANONYMOUS, route()).save(
        VERBOSE, whole_form(), RequestFacts(started=0.0)
    )
    assert await the_cache.lookup(REQUEST, ANONYMOUS, route()).before_sending(whole_form()) is None


async def test_a_held_live_upload_ends_in_the_hit_before_its_body_is_complete() -> None:
    the_cache = cache()
    await stored(the_cache, VERBOSE)
    lookup = the_cache.lookup(REQUEST, ANONYMOUS, route())
    held = live_form()
    assert await lookup.before_sending(held) is None  # its digest is not known yet
    offered: list[CacheHit] = []
    taken = asyncio.Event()

    def offer(hit: CacheHit) -> bool:
        offered.append(hit)
        taken.set()
        return True

    lookup.hold(held, offer)
    assert held.audio is not None
    audio = held.audio
    sent = []

    async def send() -> None:
        async for piece in audio.pieces():
            sent.append(piece)

    sending = asyncio.ensure_future(send())
    await taken.wait()
    await asyncio.sleep(0.05)
    assert not sending.done()  # the pass never ends: the request abandons it
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert b"".join(sent) == AUDIO  # all of it, but never the end of the request
    (hit,) = offered
    assert hit[1].document == {"text": "hello there"}


async def test_a_hit_not_taken_lets_the_upload_end() -> None:
    the_cache = cache()
    await stored(the_cache, VERBOSE)
    lookup = the_cache.lookup(REQUEST, ANONYMOUS, route())
    held = live_form()
    lookup.hold(held, lambda hit: False)  # the upstream's answer began first
    assert held.audio is not None
    assert b"".join([piece async for piece in held.audio.pieces()]) == AUDIO


async def test_once_the_upstream_answers_its_answer_is_the_one_given() -> None:
    the_cache = cache()
    await stored(the_cache, VERBOSE)
    lookup = the_cache.lookup(REQUEST, ANONYMOUS, route())
    held = live_form()
    offered: list[CacheHit] = []

    def offer(hit: CacheHit) -> bool:
        offered.append(hit)
        return True

    lookup.hold(held, offer)
    lookup.answering()
    assert held.audio is not None
    assert b"".join([piece async for piece in held.audio.pieces()]) == AUDIO
    assert offered == []
    assert lookup.cache_id is not None  # keyed all the same, for the answer to be stored


async def test_a_repr_digest_hit_reads_the_file_without_sending_it() -> None:
    the_cache = cache()
    await stored(the_cache, VERBOSE)
    lookup = the_cache.lookup(REQUEST, ANONYMOUS, route(), declared_sha256=bytes.fromhex(SHA))
    declared = live_form()
    hit = await lookup.before_sending(declared)
    assert hit is not None
    assert declared.audio_sha256 == SHA  # read to its end, so checked against the header


async def test_with_a_repr_digest_fields_after_the_file_that_change_the_key_are_refused() -> None:
    the_cache = cache()
    await stored(the_cache, VERBOSE)
    lookup = the_cache.lookup(REQUEST, ANONYMOUS, route(), declared_sha256=bytes.fromhex(SHA))
    late = live_form(trailing=[FormField("language", "de")])
    with pytest.raises(InvalidRequestError) as raised:
        await lookup.before_sending(late)
    assert raised.value.code == "fields_after_file"


# --- through the app, with providers handed in ------------------------------------------------


async def answered(server: TestServer, body: Any, headers: dict[str, str]) -> dict[str, Any]:
    """The proxy's answer to ``body``, which must be a 200."""
    status, document, _ = await post(server, body, headers)
    assert status == 200, document
    return document


async def test_through_the_app_a_repeat_is_answered_from_the_cache(
    aiohttp_server: Any,
) -> None:
    provider = ScriptedProvider("openai", models=["whisper-1"])
    app = create_app(parse_config({}, {}), providers={"openai": provider})
    server: TestServer = await aiohttp_server(app)
    assert provider.started
    headers = {"x-bf-cache-key": "meeting"}
    first = await answered(server, form(("model", "whisper-1"), ("file", AUDIO)), headers)
    second = await answered(server, form(("model", "whisper-1"), ("file", AUDIO)), headers)
    assert first["extra_fields"]["cache_debug"]["cache_hit"] is False
    assert second["extra_fields"]["cache_debug"]["cache_hit"] is True
    assert second["text"] == first["text"] == f"heard {len(AUDIO)} bytes"
    assert len(provider.calls) == 1  # a small body arrived whole: hit before sending
    await server.close()
    await asyncio.sleep(0)
    assert provider.closed


async def test_through_the_app_a_streamed_repeat_is_abandoned_at_its_end(
    aiohttp_server: Any,
) -> None:
    provider = ScriptedProvider("openai", models=["whisper-1"])
    server: TestServer = await aiohttp_server(
        create_app(parse_config({}, {}), providers={"openai": provider})
    )
    body = form(("model", "whisper-1"), ("file", AUDIO))
    boundary = body.boundary
    raw = await body.as_bytes()

    async def trickled() -> AsyncGenerator[bytes, None]:
        for start in range(0, len(raw), 40):
            yield raw[start : start + 40]
            await asyncio.sleep(0.005)  # never whole when read: streamed as it comes

    headers = {
        "x-bf-cache-key": "meeting",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    first = await answered(server, trickled(), headers)
    second = await answered(server, trickled(), headers)
    assert first["extra_fields"]["cache_debug"]["cache_hit"] is False
    assert second["extra_fields"]["cache_debug"]["cache_hit"] is True
    # The second reached the provider, which read all of it, and never answered.
    assert len(provider.calls) == 1
