"""The upstream body's framing, byte for byte."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from proxy.models import FormField, UpstreamCall
from proxy.providers.upstream_form import COALESCE_BYTES, MultipartEncoder, UpstreamBody


class Audio:
    """An upload arriving in the pieces given."""

    def __init__(self, pieces: list[bytes], trailing: Sequence[FormField] = ()) -> None:
        self._pieces = pieces
        self.filename = 'clip "1".wav'
        self.content_type = "audio/wav"
        self.size: int | None = None
        self.trailing_fields = trailing
        self.replayable = True

    async def pieces(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            yield piece

    def whole_file(self) -> None:
        return None


def test_field_framing() -> None:
    encoder = MultipartEncoder("b0")
    assert encoder.content_type == "multipart/form-data; boundary=b0"
    assert encoder.field(FormField("language", "en")) == (
        b'--b0\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
    )
    assert encoder.field(FormField("chunking_strategy", '{"type":"auto"}', "application/json")) == (
        b'--b0\r\nContent-Disposition: form-data; name="chunking_strategy"\r\n'
        b'Content-Type: application/json\r\n\r\n{"type":"auto"}\r\n'
    )
    assert encoder.file_head("file", 'a"b\r\n.wav', "audio/wav") == (
        b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a%22b%0D%0A.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n"
    )
    assert encoder.closing() == b"--b0--\r\n"


async def collect(body: UpstreamBody) -> list[bytes]:
    return [piece async for piece in body.stream()]


async def test_small_body_is_one_write_in_order() -> None:
    call = UpstreamCall(
        model="whisper-1",
        fields=[
            FormField("model", "openai/whisper-1"),
            FormField("fallbacks[]", "x/y"),
            FormField("language", "en"),
        ],
        audio=Audio([b"RI", b"FF"], trailing=[FormField("stream", "true")]),
    )
    pieces = await collect(UpstreamBody(call, MultipartEncoder("b0")))
    assert pieces == [
        b'--b0\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b'--b0\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
        b'--b0\r\nContent-Disposition: form-data; name="file"; filename="clip %221%22.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\nRIFF\r\n"
        b'--b0\r\nContent-Disposition: form-data; name="stream"\r\n\r\ntrue\r\n'
        b"--b0--\r\n"
    ]


async def test_large_pieces_pass_through_as_the_same_objects() -> None:
    big = b"A" * COALESCE_BYTES
    bigger = b"B" * (COALESCE_BYTES * 2)
    call = UpstreamCall(model="m", fields=[], audio=Audio([big, b"c", bigger]))
    pieces = await collect(UpstreamBody(call, MultipartEncoder("b0")))
    assert pieces[1] is big
    assert pieces[3] is bigger
    assert pieces[2] == b"c"
    assert b"".join(pieces).endswith(b"B\r\n--b0--\r\n")


async def test_length_is_exact_when_the_size_is_known() -> None:
    audio = Audio([b"x" * 1000])
    audio.size = 1000
    call = UpstreamCall(model="m", fields=[FormField("language", "en")], audio=audio)
    body = UpstreamBody(call, MultipartEncoder("b0"))
    assert body.length == len(b"".join(await collect(body)))
