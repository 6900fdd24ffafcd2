"""How much audio one request may send: what it reserved, extended as its audio proves longer.

A request reserves, before anything goes upstream, the length its upload
declares (:func:`upload_seconds`); an upload whose length cannot be known
until it has all passed (a chunked body whose container says nothing) is
guarded as its bytes pass, and long audio is covered chunk by chunk as it is
cut. Each extension is taken from the same counters as the reservation, so a
budget or limit that runs out refuses the rest of the audio before it is
sent, and ``proxy.max_audio_seconds`` bounds every request however it is fed.
"""

from __future__ import annotations

from ..audio.sources import LiveAudio
from ..errors import PayloadTooLargeError, ProxyError
from ..models import AudioLength, AudioSource
from .governor import Admission, Governor

#: How much of a live upload is read ahead for its container's header before anything
#: is sent: enough for a WAV's, a FLAC's STREAMINFO, an MP3's Xing frame or a WebM's
#: Info, and little enough that a file streamed as it is recorded (a few KB a second)
#: is not held back for long.
PEEK_BYTES = 4096


def audio_too_long(max_seconds: float) -> PayloadTooLargeError:
    """The 413 of a request whose audio is longer than ``proxy.max_audio_seconds``."""
    return PayloadTooLargeError(
        f"the audio is longer than this server's limit of {max_seconds:g} s "
        "(proxy.max_audio_seconds)",
        code="audio_too_long",
        param="file",
    )


async def upload_seconds(
    audio: AudioSource, length: AudioLength, declared_bytes: int | None
) -> float | None:
    """The least audio the upload can hold, known before any of it is sent: the length
    its container declares (or, for a file already whole, measures), never less than
    its bytes hold at the codec's highest rate; None when neither is known yet.

    A live upload's first bytes are read ahead for its container's header; they are
    sent with the rest.
    """
    if isinstance(audio, LiveAudio):
        await audio.peek(PEEK_BYTES)
        stated = length.declared()
    else:  # the whole file has passed: its length is known, not just declared
        stated = length.finish()
    size = audio.size if audio.size is not None else declared_bytes
    floor = length.floor(size) if size is not None else None
    if stated is None and floor is None:
        return None
    return max(stated or 0.0, floor or 0.0)


class AudioAllowance:
    """One request's audio seconds against its reservations and ``proxy.max_audio_seconds``."""

    def __init__(
        self, governor: Governor, admission: Admission, *, max_seconds: float, step_s: float
    ) -> None:
        self._governor = governor
        self._admission = admission
        self._max_seconds = max_seconds
        self._step_s = step_s

    async def cover(self, seconds: float) -> None:
        """Make sure ``seconds`` of audio are reserved (a block ahead, where the
        counters allow it), or raise what the caller is told: 413 past the server's
        limit, 429 or 402 when a limit or budget is spent."""
        if seconds > self._max_seconds:
            raise audio_too_long(self._max_seconds)
        admission = self._admission
        deficit = seconds - admission.reserved_seconds
        if not admission.by_audio or deficit <= 0:
            return
        try:
            await self._governor.extend(admission, max(self._step_s, deficit))
        except ProxyError:
            if deficit >= self._step_s:
                raise
            # Not a whole block left: what this audio needs, if that is.
            await self._governor.extend(admission, deficit)

    def guard(self, audio: LiveAudio, length: AudioLength) -> None:
        """Cover a live upload of unknown size as its bytes pass: each time they pass
        what is covered at their codec's highest rate, more is reserved before the
        piece that crossed it is sent."""

        async def passed(sent: int) -> int:
            seconds = length.floor(sent)
            await self.cover(seconds)
            covered = min(self._admission.reserved_seconds, self._max_seconds)
            # The bytes the covered seconds allow at the same rate; at least one more.
            return max(sent + 1, int(sent * covered / seconds)) if seconds else sent + 1

        covered = min(self._admission.reserved_seconds, self._max_seconds)
        first = length.floor(1)
        audio.guard(int(covered / first) if first else 1, passed)
