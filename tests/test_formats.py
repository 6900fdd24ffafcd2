"""Response formats, declared once: every stage that renders or checks one finds it in
RESPONSE_FORMATS."""

from __future__ import annotations

import pytest

from proxy.answers.formats import (
    RESPONSE_FORMATS,
    Segment,
    format_of,
    parse_cues,
    render,
    transcript,
)
from proxy.answers.responses import transcription_response
from proxy.errors import InvalidRequestError
from proxy.form.fields import validate_field
from proxy.models import FormField, RequestFacts, TranscriptDone

SEGMENTS = [
    Segment(id=0, seek=0, start=0.0, end=1.25, text=" Hello"),
    Segment(id=1, seek=0, start=1.25, end=2.5, text=" there."),
]
MADE_FROM_SEGMENTS = sorted(name for name, f in RESPONSE_FORMATS.items() if not f.diarized)


def test_the_form_takes_exactly_the_declared_formats() -> None:
    for name in RESPONSE_FORMATS:
        validate_field(FormField("response_format", name))
    with pytest.raises(InvalidRequestError, match=", ".join(sorted(RESPONSE_FORMATS))):
        validate_field(FormField("response_format", "xml"))


@pytest.mark.parametrize("name", MADE_FROM_SEGMENTS)
def test_every_format_but_a_diarized_one_is_made_from_segments(name: str) -> None:
    done = transcript(SEGMENTS, response_format=name, language="en", duration=2.5)
    assert (done.document is not None) is RESPONSE_FORMATS[name].is_document
    if RESPONSE_FORMATS[name].captions is not None:
        assert done.text is not None
        assert [(c.start, c.end, c.text) for c in parse_cues(done.text)] == [
            (0.0, 1.25, "Hello"),
            (1.25, 2.5, "there."),
        ]


@pytest.mark.parametrize("name", MADE_FROM_SEGMENTS)
def test_a_plain_answer_is_sent_as_its_format_s_media_type(name: str) -> None:
    done = transcript(SEGMENTS, response_format=name, language="en", duration=2.5)
    response = transcription_response(done, RequestFacts(started=0.0), response_format=name)
    assert response.content_type == RESPONSE_FORMATS[name].media_type


@pytest.mark.parametrize("stored", MADE_FROM_SEGMENTS)
def test_a_stored_answer_renders_as_what_its_format_says(stored: str) -> None:
    done = transcript(SEGMENTS, response_format=stored, language="en", duration=2.5)
    stored_as = format_of(done, stored)
    for wanted in RESPONSE_FORMATS:
        rendered = render(done, stored_as, wanted)
        if wanted in RESPONSE_FORMATS[stored_as].renders:
            assert rendered is not None, (stored_as, wanted)
            assert (rendered.document is not None) is RESPONSE_FORMATS[wanted].is_document
        else:
            assert rendered is None, (stored_as, wanted)


def test_an_answer_richer_than_asked_is_stored_as_what_it_is() -> None:
    rich = TranscriptDone(raw=b"", document={"text": "x", "segments": [{"start": 0, "end": 1}]})
    assert format_of(rich, "json") == "verbose_json"
    assert format_of(TranscriptDone(raw=b"", document={"text": "x"}), "verbose_json") == "json"
    assert format_of(rich, "diarized_json") == "diarized_json"
