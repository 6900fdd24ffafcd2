"""Long audio without sockets: chunk answers stitched into one, and a recording cut, sent and
stitched by LongAudioDispatch over providers in this process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.answers.formats import parse_cues, transcript_text
from proxy.audio.sources import BufferedAudio
from proxy.config import ChunkingSettings
from proxy.dispatch import TranscriptionJob
from proxy.errors import InvalidAudioError, UpstreamError
from proxy.long_audio.chunked import LongAudio
from proxy.long_audio.stitch import ChunkAnswer, stitch
from proxy.metrics import Metrics
from proxy.models import FormField, TranscriptDelta, TranscriptDone
from proxy.router import Route
from tests.helpers.providers import ScriptedProvider, answer
from tests.helpers.spoken import encode


def document(**values: Any) -> TranscriptDone:
    return TranscriptDone(raw=b"", document=values)


def text(body: str) -> TranscriptDone:
    return TranscriptDone(raw=body.encode(), text=body)


def test_json_answers_are_joined_and_their_usage_summed() -> None:
    stitched = stitch(
        [
            ChunkAnswer(0, 10, document(text="Hello there.", usage={"type": "tokens", "n": 3})),
            ChunkAnswer(10, 20, document(text=" See you soon.", usage={"type": "tokens", "n": 4})),
        ],
        response_format="json",
        duration_s=20,
    )
    assert stitched.document == {
        "text": "Hello there. See you soon.",
        "usage": {"type": "tokens", "n": 7},
    }


def test_token_usage_is_summed_with_its_details() -> None:
    def usage(audio: int, text: int, output: int) -> dict[str, Any]:
        return {
            "type": "tokens",
            "input_tokens": audio + text,
            "input_token_details": {"audio_tokens": audio, "text_tokens": text},
            "output_tokens": output,
            "total_tokens": audio + text + output,
        }

    stitched = stitch(
        [
            ChunkAnswer(k * 10, k * 10 + 10, document(text="x", usage=usage(1000, 5, 40)))
            for k in range(4)
        ],
        response_format="json",
        duration_s=40,
    )
    assert stitched.document is not None
    assert stitched.document["usage"] == usage(4000, 20, 160)


def test_verbose_json_segments_and_words_are_shifted_and_renumbered() -> None:
    def chunk(start: float, words: str) -> ChunkAnswer:
        return ChunkAnswer(
            start,
            start + 10,
            document(
                task="transcribe",
                language="english",
                duration=10.0,
                text=words,
                segments=[{"id": 0, "seek": 0, "start": 1.0, "end": 2.5, "text": words}],
                words=[{"word": words, "start": 1.0, "end": 2.5}],
            ),
        )

    stitched = stitch(
        [chunk(0, "one"), chunk(10, "two")], response_format="verbose_json", duration_s=20
    )
    assert stitched.document is not None
    assert stitched.document["duration"] == 20
    assert stitched.document["text"] == "one two"
    assert [(s["id"], s["seek"], s["start"], s["end"]) for s in stitched.document["segments"]] == [
        (0, 0, 1.0, 2.5),
        (1, 1000, 11.0, 12.5),
    ]
    assert [(w["start"], w["end"]) for w in stitched.document["words"]] == [
        (1.0, 2.5),
        (11.0, 12.5),
    ]


@pytest.mark.parametrize("kind", ["srt", "vtt"])
def test_captions_are_retimed_and_renumbered(kind: str) -> None:
    def captions(words: str) -> TranscriptDone:
        if kind == "srt":
            return text(f"1\n00:00:01,000 --> 00:00:02,000\n{words}\n\n")
        return text(f"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n{words}\n\n")

    stitched = stitch(
        [ChunkAnswer(0, 600, captions("first")), ChunkAnswer(600, 1200, captions("second"))],
        response_format=kind,
        duration_s=1200,
    )
    assert stitched.text is not None
    assert [(c.start, c.end, c.text) for c in parse_cues(stitched.text)] == [
        (1.0, 2.0, "first"),
        (601.0, 602.0, "second"),
    ]
    if kind == "srt":
        assert stitched.text.startswith("1\n00:00:01,000")
        assert "\n2\n00:10:01,000" in stitched.text
    else:
        assert stitched.text.startswith("WEBVTT\n\n00:00:01.000")


def test_plain_text_answers_are_joined() -> None:
    stitched = stitch(
        [ChunkAnswer(0, 1, text("one\n")), ChunkAnswer(1, 2, text("two\n"))],
        response_format="text",
        duration_s=2,
    )
    assert stitched.text == "one two\n"


@pytest.mark.parametrize(
    ("done", "words"),
    [
        (document(text=" spoken words "), "spoken words"),
        (text("1\n00:00:00,000 --> 00:00:01,000\nin a cue\n\n"), "in a cue"),
        (text("WEBVTT\n\n"), ""),
        (text("just text\n"), "just text"),
    ],
)
def test_transcript_text_is_the_words_whatever_the_format(done: TranscriptDone, words: str) -> None:
    assert transcript_text(done) == words


# --- a recording cut, sent and stitched -------------------------------------------------------


def long_audio(**settings: Any) -> LongAudio:
    chunking = ChunkingSettings(
        **{"max_chunk_s": 1.6, "cut_search_s": 0.8, "format": "wav", "max_parallel": 2, **settings}
    )
    return LongAudio(chunking, asyncio.Semaphore(1), Metrics())


def long_job(
    data: bytes, *providers: ScriptedProvider, fields: list[FormField] | None = None
) -> TranscriptionJob:
    routes = [Route(p, "whisper-1", "whisper-1") for p in providers]
    audio = BufferedAudio(data, filename="meeting.wav", content_type="audio/wav")
    return TranscriptionJob(routes, fields or [], audio, request_id="req")


async def test_a_recording_is_cut_at_its_silences_sent_chunk_by_chunk_and_stitched() -> None:
    pytest.importorskip("av")
    provider = ScriptedProvider("openai")
    dispatch = long_audio().cut(long_job(encode(3, "wav"), provider), limit=1 << 30)
    events = [event async for event in dispatch.events()]
    *delta_events, done = events
    assert isinstance(done, TranscriptDone)
    # Three words of 1 s (a tone, then a pause), in chunks of at most 1.6 s cut in the pauses.
    assert [c.filename for c in provider.calls] == [f"chunk-000{n}.wav" for n in range(3)]
    assert [c.request_id for c in provider.calls] == ["req.0", "req.1", "req.2"]
    assert all(isinstance(e, TranscriptDelta) for e in delta_events)
    texts = [f"heard {len(c.audio)} bytes" for c in provider.calls]
    assert done.document == {"text": " ".join(texts)}
    served = dispatch.served
    assert served.audio_chunks == 3
    assert served.attempts is None
    assert served.route.provider is provider


async def test_a_chunk_that_falls_back_is_reported_with_its_time_range() -> None:
    pytest.importorskip("av")
    primary = ScriptedProvider("openai", [UpstreamError(503, "busy")])
    backup = ScriptedProvider("backup")
    dispatch = long_audio(max_parallel=1).cut(long_job(encode(2, "wav"), primary, backup), 1 << 30)
    events = [event async for event in dispatch.events()]
    assert isinstance(events[-1], TranscriptDone)
    attempts = dispatch.served.attempts or []
    assert [(a["provider"], a["status"], a["chunk"]) for a in attempts] == [
        ("openai", 503, 0),
        ("backup", 200, 0),
    ]
    assert attempts[0]["start"] == 0


async def test_a_chunk_that_fails_names_the_audio_it_holds() -> None:
    pytest.importorskip("av")
    primary = ScriptedProvider("openai", [[answer("one")], UpstreamError(500, "broke")])
    dispatch = long_audio(max_parallel=1).cut(long_job(encode(2, "wav"), primary), 1 << 30)
    with pytest.raises(UpstreamError) as raised:
        async for _ in dispatch.events():
            pass
    assert "chunk 1" in raised.value.message
    assert "could not be transcribed: broke" in raised.value.message


async def test_what_is_not_audio_is_refused() -> None:
    pytest.importorskip("av")
    provider = ScriptedProvider("openai")
    dispatch = long_audio().cut(long_job(b"not audio at all" * 100, provider), 1 << 30)
    with pytest.raises(InvalidAudioError):
        async for _ in dispatch.events():
            pass
    assert provider.calls == []
